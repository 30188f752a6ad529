"""``python -m evals ckpt=PATH task=ruler|niah|lm_eval|synthetic lengths=[4096,8192]``: the Hydra entry point.

Sweeps: ``python -m evals -m ckpt=runs/a,runs/b task=ruler,niah lengths=[4096,8192]`` runs every
combination; all jobs of one sweep append to ``<sweep dir>/results.jsonl``; feed it to
``python -m evals.report``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

# the repository's configs/ folder, as an absolute path (like the training entry point);
# ADASPLASH_CONFIG_DIR points elsewhere when the package is installed without its configs
CONFIG_DIR = Path(os.environ.get("ADASPLASH_CONFIG_DIR") or Path(__file__).resolve().parents[1] / "configs")

log = logging.getLogger("evals")


def results_file_for_this_job(cfg: DictConfig) -> Path:
    """``cfg.results_file`` if set; else results.jsonl in the sweep folder (multirun: one file for
    every job of the sweep) or in the run folder (single run)."""
    if cfg.get("results_file"):
        return Path(cfg.results_file)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir) / "results.jsonl"
    return Path(hydra_cfg.runtime.output_dir) / "results.jsonl"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from evals.runner import evaluate

    from hydra.types import RunMode

    from evals import results

    results_file = results_file_for_this_job(cfg)
    try:
        rows = evaluate(cfg, output_dir=HydraConfig.get().runtime.output_dir, results_file=results_file)
    except Exception as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # in a sweep, a checkpoint that fails to load must not stop the jobs after it
        log.error("job failed before any result (%s: %s); recorded in %s", type(error).__name__, error, results_file)
        row = results.error_row({"run": results.run_label(str(cfg.get("ckpt")), cfg.get("name")),
                                 "ckpt": str(cfg.get("ckpt"))}, error, task=cfg.get("task"), subtask=None, length=None)
        results.append_rows(results_file, [row])
        return
    failed = [row for row in rows if row.get("error")]
    log.info("%d result rows (%d failed) appended to %s", len(rows), len(failed), results_file)
    for row in rows:
        where = f"{row.get('subtask')} @ {row.get('length')}" + (f" depth {row['depth']:g}" if "depth" in row else "")
        outcome = f"ERROR {row['error']}" if row.get("error") else f"{row.get('metric')}={row.get('score'):.2f}"
        log.info("  %s: %s", where, outcome)


if __name__ == "__main__":
    main()
