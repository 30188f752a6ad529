"""Resuming with a real lightning.Trainer: the resumed run sees exactly the batches the
uninterrupted run saw next. Uses a tiny LightningModule of its own, not the project's model."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from adasplash_train.data import TokenDataModule

BATCH_SIZE = 4
ACCUMULATE = 2
MAX_STEPS = 6


class _RecordingModel(L.LightningModule):
    """A bigram model that remembers every micro-batch it trained on."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(257, 8)
        self.head = torch.nn.Linear(8, 257)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        logits = self.head(self.embedding(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _datamodule(cache_dir):
    return TokenDataModule(source="stdlib", source_args={"max_docs": 30}, tokenizer="byte", seq_len=32,
                           batch_size=BATCH_SIZE, num_train_samples=MAX_STEPS * BATCH_SIZE * ACCUMULATE,
                           val_batches=1, seed=11, cache_dir=str(cache_dir), progress=False)


def _trainer(checkpoint_dir, callbacks=()):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=MAX_STEPS, max_epochs=-1,
                     accumulate_grad_batches=ACCUMULATE, limit_val_batches=0, num_sanity_val_steps=0,
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(checkpoint_dir), callbacks=list(callbacks))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_resume_continues_with_the_next_batches(tmp_path):
    cache_dir, checkpoint_dir = tmp_path / "cache", tmp_path / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=3, save_top_k=-1,
                                 filename="{step}")
    uninterrupted = _RecordingModel()
    datamodule = _datamodule(cache_dir)
    _trainer(tmp_path, [checkpoint]).fit(uninterrupted, datamodule=datamodule)
    assert len(uninterrupted.seen) == MAX_STEPS * ACCUMULATE

    # The uninterrupted run read global samples 0, 1, 2, ... in order.
    dataset = datamodule.train_dataset()
    expected = torch.stack([dataset[i]["input_ids"] for i in range(MAX_STEPS * BATCH_SIZE * ACCUMULATE)])
    assert torch.equal(torch.cat(uninterrupted.seen), expected)

    middle = checkpoint_dir / "step=3.ckpt"
    state = torch.load(middle, weights_only=False)["TokenDataModule"]
    assert state["train_samples_consumed"] == 3 * BATCH_SIZE * ACCUMULATE

    resumed = _RecordingModel()
    _trainer(tmp_path / "resumed").fit(resumed, datamodule=_datamodule(cache_dir), ckpt_path=str(middle))
    half = 3 * ACCUMULATE
    assert len(resumed.seen) == MAX_STEPS * ACCUMULATE - half
    for resumed_batch, original_batch in zip(resumed.seen, uninterrupted.seen[half:]):
        assert torch.equal(resumed_batch, original_batch)


class _RankRecordingModel(_RecordingModel):
    """Saves what each rank trained on, since spawned processes cannot hand lists back."""

    def __init__(self, out_dir):
        super().__init__()
        self.out_dir = str(out_dir)

    def on_train_end(self):
        torch.save(torch.cat(self.seen), f"{self.out_dir}/rank{self.global_rank}.pt")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_two_process_ddp_splits_global_samples_by_rank(tmp_path):
    """Lightning must keep RankStridedSampler (no second distributed sampler): rank r gets i*W + r."""
    datamodule = _datamodule(tmp_path / "cache")
    datamodule.prepare_data()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, max_epochs=-1,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(_RankRecordingModel(tmp_path), datamodule=datamodule)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset()
    for rank in range(2):
        seen = torch.load(tmp_path / f"rank{rank}.pt")
        expected = torch.stack([dataset[i * 2 + rank]["input_ids"] for i in range(2 * BATCH_SIZE)])
        assert torch.equal(seen, expected)


class _FakeTrainer:
    def __init__(self, global_step, world_size, accumulate_grad_batches=1):
        self.global_step, self.world_size, self.accumulate_grad_batches = global_step, world_size, accumulate_grad_batches


def test_consumed_samples_follow_a_global_batch_change_across_resumes():
    from adasplash_train.data import TokenDataModule

    first = TokenDataModule(source="stdlib", tokenizer="byte", seq_len=32, batch_size=4, num_train_samples=4096)
    first.trainer = _FakeTrainer(global_step=100, world_size=2)          # 100 steps x 8 samples
    state = first.state_dict()
    assert state["train_samples_consumed"] == 800

    resumed = TokenDataModule(source="stdlib", tokenizer="byte", seq_len=32, batch_size=4, num_train_samples=4096)
    resumed.load_state_dict(state)
    assert resumed.start_sample == 800
    resumed.trainer = _FakeTrainer(global_step=150, world_size=1)        # 50 more steps x 4 samples
    assert resumed.state_dict()["train_samples_consumed"] == 1000
