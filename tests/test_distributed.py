"""Multi-process training on the CPU (gloo): DDP through torchrun and through Lightning's own launcher
trains the same run as one process with the same global batch; a crash on one rank ends the job quickly
and the run resumes on another world size; SLURM's requeue signal leaves a checkpoint the requeued
sbatch script resumes from; the SLURM launcher config renders the expected sbatch header; FSDP's
sharded checkpoints load on one CPU. FSDP training itself needs GPUs (skipped here, see the test)."""

import csv
import datetime
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf

from adasplash_train.checkpoint import is_sharded_checkpoint, load_model
from adasplash_train.config import compose
from adasplash_train.model import Block
from adasplash_train.module import LanguageModel
from adasplash_train.train import (accumulation_for_global_batch, build_strategy, resolve_ckpt_path,
                                   resolve_devices, train)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SEQ_LEN, BATCH_SIZE, MAX_STEPS = 64, 2, 6
GLOBAL_BATCH_TOKENS = SEQ_LEN * BATCH_SIZE * 4   # 4 micro-batches on one process, 2 on each of two


def run_overrides(root: Path, cache_dir: Path, run_name: str) -> list[str]:
    """A tiny entmax model on a slice of the embedded corpus, 6 steps, validation over all 8 windows
    at steps 3 and 6 (the same windows on any number of ranks), a periodic checkpoint at step 3."""
    return [
        "experiment=smoke", "debug=cpu_small", f"model.max_seq_len={SEQ_LEN}", f"batch_size={BATCH_SIZE}",
        f"global_batch_tokens={GLOBAL_BATCH_TOKENS}", f"trainer.max_steps={MAX_STEPS}",
        "trainer.val_check_interval=3", "trainer.limit_val_batches=null", "data.val_batches=4",
        "checkpoint_every_n_steps=3", "trainer.log_every_n_steps=1", "callbacks.progress_bar=null",
        "++trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"paths.root_dir={root}", f"paths.cache_dir={cache_dir}", "data.source_args.max_docs=40",
        "data.val_fraction=0.1", "data.progress=false", f"run_name={run_name}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]))
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def torchrun(nproc: int, overrides: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                    "-m", "adasplash_train", *overrides], timeout=timeout)


def checkpoint_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(path: Path, reference: dict):
    state = checkpoint_state(path)
    assert state["global_step"] == reference["global_step"] == MAX_STEPS
    for name, tensor in reference["state_dict"].items():
        torch.testing.assert_close(state["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def val_loss_of(output: str) -> float:
    return float(re.findall(r"finished at step \d+: .*'val/loss': ([0-9.]+)", output)[-1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def one_process(workspace):
    """The reference: one process, 4 accumulated micro-batches per optimizer step."""
    cfg = compose("train", run_overrides(workspace / "runs", workspace / "cache", "one_process"))
    metrics = train(cfg)
    return metrics, checkpoint_state(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------- global batch, devices


def test_global_batch_tokens_sets_the_accumulation_for_any_world_size():
    assert accumulation_for_global_batch(None, 64, 2, 4, accumulate_grad_batches=3) == 3
    assert accumulation_for_global_batch(1024, 64, 2, 1, accumulate_grad_batches=1) == 8
    assert accumulation_for_global_batch(1024, 64, 2, 8, accumulate_grad_batches=1) == 1
    with pytest.raises(ValueError, match=r"not a multiple of .* 64 x 2 x 3 = 384"):
        accumulation_for_global_batch(1024, 64, 2, 3, accumulate_grad_batches=1)
    with pytest.raises(ValueError, match="set only one of them"):
        accumulation_for_global_batch(1024, 64, 2, 1, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="positive integer"):
        accumulation_for_global_batch(0, 64, 2, 1, accumulate_grad_batches=1)


def test_devices_auto_follows_torchrun_and_srun(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "TORCHELASTIC_")) or name in ("RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
            monkeypatch.delenv(name)
    auto = {"devices": "auto", "num_nodes": 1}
    assert resolve_devices(auto) == auto
    assert resolve_devices({"devices": 2, "num_nodes": 1}) == {"devices": 2, "num_nodes": 1}

    torchrun_env = {"TORCHELASTIC_RUN_ID": "job", "RANK": "5", "GROUP_RANK": "1", "LOCAL_RANK": "1",
                    "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    with monkeypatch.context() as env:
        for name, value in torchrun_env.items():
            env.setenv(name, value)
        assert resolve_devices(auto) == {"devices": 4, "num_nodes": 2}

    for name, value in {"SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8(x2)", "SLURM_NNODES": "2",
                        "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(name, value)
    assert resolve_devices(auto) == {"devices": 8, "num_nodes": 2}
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")   # an interactive allocation: Lightning ignores SLURM
    assert resolve_devices(auto) == auto


def strategy_config(trainer_name: str) -> dict:
    trainer = compose("train", [f"trainer={trainer_name}"]).trainer
    assert trainer.devices == "auto"
    return OmegaConf.to_container(trainer.strategy, resolve=True)


def test_ddp_and_fsdp_configs_build_their_strategies():
    ddp = build_strategy(strategy_config("ddp"), "32-true")
    assert isinstance(ddp, DDPStrategy) and ddp._timeout == datetime.timedelta(minutes=30)

    fsdp = strategy_config("fsdp")
    on_gpu = build_strategy(fsdp, "bf16-mixed")
    assert isinstance(on_gpu, FSDPStrategy) and on_gpu._state_dict_type == "sharded"
    assert on_gpu._timeout == datetime.timedelta(minutes=30)
    assert on_gpu.kwargs["auto_wrap_policy"]._module_classes == {Block}
    precision = on_gpu.mixed_precision_config
    assert (precision.param_dtype, precision.reduce_dtype, precision.buffer_dtype) == (
        torch.bfloat16, torch.float32, torch.float32)
    # fp32 runs keep Lightning's own (all-fp32) policy
    assert build_strategy(fsdp, "32-true").mixed_precision is None


def test_norm_clipping_under_fsdp_goes_through_the_sharded_model():
    """Lightning's FSDP precision plugin refuses norm clipping; the module hands it to FSDP's own
    clip_grad_norm_, which sees every rank's shard. Without such a wrapper the usual path runs."""
    module = LanguageModel(model_config={"vocab_size": 64, "n_layer": 1, "n_head": 2, "d_model": 16,
                                         "max_seq_len": 8})

    class ShardedModel:
        clipped_to = []

        def clip_grad_norm_(self, max_norm):
            self.clipped_to.append(max_norm)

    module._trainer = SimpleNamespace(model=ShardedModel())
    module.configure_gradient_clipping(None, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    assert ShardedModel.clipped_to == [0.5]

    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module._trainer = SimpleNamespace(model=module)   # one device (DDP wraps without clip_grad_norm_ too)
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LanguageModel, "clip_gradients", lambda self, *args, **kwargs: seen.append((args, kwargs)))
        module.configure_gradient_clipping(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    assert seen == [((optimizer,), {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "norm"})]
    assert ShardedModel.clipped_to == [0.5]


# ----------------------------------------------------------------------------- DDP on two CPU processes


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_ddp_processes_train_the_run_one_process_trains(workspace, one_process):
    metrics, reference = one_process
    root, cache = workspace / "runs", workspace / "cache"
    launched = {
        "torchrun": torchrun(2, ["trainer=ddp", "trainer.accelerator=cpu",
                                 *run_overrides(root, cache, "torchrun")]),
        # Lightning starts the second process itself (trainer.devices=2 on one node)
        "lightning": run_cli([sys.executable, "-m", "adasplash_train", "trainer=ddp", "trainer.accelerator=cpu",
                              "trainer.devices=2", *run_overrides(root, cache, "lightning")]),
    }
    for name, result in launched.items():
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        # 4 micro-batches on one process are 2 on each of two: the same samples in every optimizer step
        assert output.count("global batch: 8 sequences of 64 tokens (2 per device x 2 accumulated x 2 devices)") == 1
        assert val_loss_of(output) == pytest.approx(metrics["val/loss"], rel=1e-5)
        run_dir = root / name
        assert_same_weights(run_dir / "checkpoints" / "last.ckpt", reference)
        assert checkpoint_state(run_dir / "checkpoints" / "last.ckpt")["TokenDataModule"][
            "train_samples_consumed"] == MAX_STEPS * GLOBAL_BATCH_TOKENS // SEQ_LEN
        # rank 0 alone writes metrics: one CSV with one train/loss row per optimizer step
        (metrics_csv,) = (run_dir / "csv").glob("version_*/metrics.csv")
        with metrics_csv.open() as f:
            train_steps = [int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]]
        assert train_steps == list(range(MAX_STEPS))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_crash_on_one_rank_ends_the_job_and_the_run_resumes_on_one_process(workspace, one_process):
    metrics, reference = one_process
    root, cache = workspace / "runs", workspace / "cache"
    overrides = run_overrides(root, cache, "crashed")
    started = time.monotonic()
    # collectives time out after a minute here: waiting for the dead rank would take at least that long
    crashed = torchrun(2, ["trainer=ddp", "trainer.accelerator=cpu", "trainer.strategy.timeout.minutes=1",
                           "+callbacks.crash._target_=test_distributed_helpers.CrashOnRank",
                           "+callbacks.crash.step=4", "+callbacks.crash.rank=1", *overrides])
    elapsed = time.monotonic() - started
    output = crashed.stdout + crashed.stderr
    assert crashed.returncode != 0
    assert "simulated crash on rank 1 after step 4" in output
    assert elapsed < 50, f"the job took {elapsed:.0f} s to end: a rank waited for the dead one"
    # rank 0 saw its peer vanish mid-step and saved on its own; the run goes on with one process
    # (4 micro-batches per step instead of 2 on each of two ranks) and ends where the reference ended
    interrupted = checkpoint_state(root / "crashed" / "checkpoints" / "interrupted.ckpt")
    assert interrupted["global_step"] == 4

    resumed = run_cli([sys.executable, "-m", "adasplash_train", *overrides, "ckpt_path=last"])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert val_loss_of(resumed.stdout + resumed.stderr) == pytest.approx(metrics["val/loss"], rel=1e-5)
    assert_same_weights(root / "crashed" / "checkpoints" / "last.ckpt", reference)


# ----------------------------------------------------------------------------- SLURM


SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"


def fake_slurm(tmp_path: Path) -> tuple[dict, Path]:
    """A one-task SLURM job in the environment, `srun` that runs its command, and `scontrol` that
    records the requeue request and then ends the job, as SLURM does when it requeues."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    requests = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {requests}\nkill -KILL "$PPID"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = subprocess_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NAME="adasplash",
        SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1",
        SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    env.pop("SLURM_RESTART_COUNT", None)
    return env, requests


def test_sbatch_script_parses():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = SBATCH.read_text()
    assert "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text and "ckpt_path=auto" in text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_requeued_sbatch_job_resumes_from_the_requeue_checkpoint(workspace, one_process, tmp_path):
    metrics, reference = one_process
    env, requests = fake_slurm(tmp_path)
    root = workspace / "runs"
    args = ["bash", str(SBATCH), "trainer.accelerator=cpu", *run_overrides(root, workspace / "cache", "requeued"),
            # SLURM's warning signal before preemption, on the first attempt only
            "+callbacks.preempt._target_=test_distributed_helpers.SignalOnFirstAttempt",
            "+callbacks.preempt.step=4"]

    first = run_cli(args, env=env)
    assert first.returncode != 0, "the fake scontrol should have ended the first attempt"
    assert requests.read_text().split() == ["requeue", "4242"]
    assert checkpoint_state(root / "requeued" / "hpc_ckpt_1.ckpt")["global_step"] == 4

    # SLURM runs the same script with the same arguments again
    second = run_cli(args, env={**env, "SLURM_RESTART_COUNT": "1"})
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"resuming from {root / 'requeued' / 'hpc_ckpt_1.ckpt'}" in output
    assert val_loss_of(output) == pytest.approx(metrics["val/loss"], rel=1e-5)
    assert_same_weights(root / "requeued" / "checkpoints" / "last.ckpt", reference)


def test_slurm_launcher_renders_the_sbatch_header(tmp_path, monkeypatch):
    import submitit

    site = tmp_path / "site"
    (site / "local").mkdir(parents=True)
    (site / "local" / "slurm.yaml").write_text("partition: gpu-long\naccount: proj42\nsetup: [module load cuda]\n")
    cfg = compose("train", ["experiment=entmax_8k", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                            "hydra/launcher=slurm", "hydra.launcher.timeout_min=90",
                            f"hydra.searchpath=[file://{site}]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                  return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    assert (launcher_cfg.nodes, launcher_cfg.tasks_per_node, launcher_cfg.gpus_per_node) == (2, 4, 4)

    # render the job the launcher would submit, without sbatch (submitit only checks that srun exists)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    rendered = []

    def render_instead_of_submitting(executor, function, *args):
        slurm = executor._executor
        rendered.append(slurm._make_submission_file_text(slurm._submitit_command_str, "uid"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", render_instead_of_submitting)
    launcher = hydra.utils.instantiate(launcher_cfg)
    launcher.config = cfg
    launcher.launch([["experiment=entmax_8k", "trainer=ddp"]], initial_job_idx=0)
    header = set(rendered[0].splitlines())
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=90", "#SBATCH --job-name=entmax_8k",
                 "#SBATCH --partition=gpu-long", "#SBATCH --account=proj42", "#SBATCH --signal=USR1@120",
                 "#SBATCH --requeue", "module load cuda"]:
        assert line in header, f"{line!r} missing from:\n{rendered[0]}"


def test_slurm_launcher_needs_a_device_count():
    cfg = compose("train", ["trainer=ddp", "hydra/launcher=slurm"], return_hydra_config=True)
    with pytest.raises(Exception, match="tasks_per_node"):
        _ = cfg.hydra.launcher.tasks_per_node


# ----------------------------------------------------------------------------- FSDP


def write_sharded_copy(checkpoint_file: Path, folder: Path) -> None:
    """Lightning's FSDPStrategy writes the folder (the one process holds every tensor whole)."""
    checkpoint = checkpoint_state(checkpoint_file)
    checkpoint.pop("optimizer_states")   # load_model reads the weights only
    FSDPStrategy(state_dict_type="sharded").save_checkpoint(checkpoint, folder)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sharded_checkpoint_folder_loads_on_one_cpu(workspace, one_process, tmp_path):
    run_dir = workspace / "runs" / "one_process"
    sharded_run = tmp_path / "sharded_run"
    write_sharded_copy(run_dir / "checkpoints" / "last.ckpt", sharded_run / "checkpoints" / "last.ckpt")
    folder = sharded_run / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(folder) and not is_sharded_checkpoint(run_dir)
    assert resolve_ckpt_path("auto", sharded_run) == str(folder)

    reference, _ = load_model(run_dir / "checkpoints" / "last.ckpt", device="cpu")
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids)[0]
        for path in (folder, sharded_run):    # the folder itself, or the run directory holding it
            model, tokenizer = load_model(path, device="cpu")
            torch.testing.assert_close(model(ids)[0], expected, rtol=0, atol=0)
    assert tokenizer.name == "byte"


def two_gpus_for_fsdp() -> str | None:
    """Why FSDP training cannot run here, or None when it can."""
    if torch.cuda.device_count() < 2:
        return ("FSDP training needs 2 CUDA devices: Lightning's FSDPStrategy requires a GPU accelerator "
                f"and torch's FSDP rejects CPU-only runs; this machine has {torch.cuda.device_count()}")
    return None


@pytest.mark.gpu
@pytest.mark.skipif(two_gpus_for_fsdp() is not None, reason=str(two_gpus_for_fsdp()))
def test_fsdp_on_two_gpus_writes_sharded_checkpoints_that_resume_on_one(workspace, tmp_path):
    root, cache = tmp_path / "runs", workspace / "cache"
    overrides = [*run_overrides(root, cache, "fsdp"), "trainer=fsdp", "trainer.precision=bf16-mixed",
                 "attention.backend=torch", "trainer.strategy.timeout.minutes=5"]
    crashed = torchrun(2, [*overrides, "+callbacks.crash._target_=test_distributed_helpers.CrashOnRank",
                           "+callbacks.crash.step=4", "+callbacks.crash.rank=1"])
    assert crashed.returncode != 0 and "simulated crash on rank 1" in crashed.stdout + crashed.stderr
    folder = root / "fsdp" / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(folder) and checkpoint_state(folder / "meta.pt")["global_step"] == 3

    # another world size reads the shards: one GPU continues to the end
    resumed = run_cli([sys.executable, "-m", "adasplash_train", *overrides, "trainer.devices=1", "ckpt_path=last"],
                      env=subprocess_env(CUDA_VISIBLE_DEVICES="0"))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert checkpoint_state(folder / "meta.pt")["global_step"] == MAX_STEPS
    model, _ = load_model(root / "fsdp", device="cpu")
    with torch.no_grad():
        logits, loss = model(torch.arange(32).view(1, 32), targets=torch.arange(1, 33).view(1, 32))
    assert torch.isfinite(loss)
