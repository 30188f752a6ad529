"""Long-context evaluation of adasplash-train checkpoints: RULER, needle grids, lm-eval, reports.

Reaches models only through ``adasplash_train.checkpoint.load_model``. Importing this package
imports nothing heavy; ``lm_eval`` is imported only by ``evals.lm_eval_adapter``.
"""
