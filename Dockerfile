# CUDA PyTorch base image; installs the project (editable, so configs/ is found) and runs the main job.
#   docker build -t adasplash-train .
#   docker run --gpus all -v $PWD/runs:/app/runs adasplash-train                      # entmax_8k
#   docker run --gpus all adasplash-train python -m adasplash_train experiment=softmax_8k
# the devel image: Triton compiles its kernel launchers with the C compiler the runtime image lacks
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

WORKDIR /app
COPY . /app
# the base image's CUDA torch satisfies torch>=2.4, so pip keeps it
RUN pip install --no-cache-dir -e ".[dev]"

ENV ADASPLASH_RUNS=/app/runs
CMD ["python", "-m", "adasplash_train", "experiment=entmax_8k"]
