"""Callbacks that the distributed tests inject into `python -m adasplash_train` runs through Hydra
overrides (+callbacks.<name>._target_=test_distributed_helpers.<Class>, with tests/ on PYTHONPATH).
No tests here."""

import os
import signal

import lightning as L


class CrashOnRank(L.Callback):
    """One rank dies after optimizer step `step` while the others carry on into the next collective."""

    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            raise RuntimeError(f"simulated crash on rank {self.rank} after step {self.step}")


class SignalOnFirstAttempt(L.Callback):
    """Sends this process `signal_name` after optimizer step `step`, as SLURM does before preempting a
    job, but only on the job's first attempt: a requeued job has SLURM_RESTART_COUNT >= 1."""

    def __init__(self, step: int, signal_name: str = "SIGUSR1"):
        self.step, self.signal_name = step, signal_name

    def on_train_batch_end(self, trainer, *args):
        first_attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0
        if first_attempt and trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
