"""adasplash-train: pretrain GPT-style models with alpha-entmax sparse attention.

Entry point: `python -m adasplash_train [experiment=NAME]`. Evaluations load models through
`adasplash_train.checkpoint.load_model`.
"""

__version__ = "0.1.0"
