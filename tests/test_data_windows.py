"""Windows and batches: doc_ids at boundaries, determinism, rank striding, val windows."""

import numpy as np
import pytest
import torch

from adasplash_train.data import TokenDataModule
from adasplash_train.data.windows import RankStridedSampler, doc_ids_for

EOT = 256


def _datamodule(cache_dir, **overrides):
    args = dict(source="stdlib", source_args={"max_docs": 40}, tokenizer="byte", seq_len=64, batch_size=4,
                num_train_samples=64, val_batches=2, seed=7, cache_dir=str(cache_dir), progress=False)
    args.update(overrides)
    datamodule = TokenDataModule(**args)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


class _FakeTrainer:
    def __init__(self, world_size, global_rank, global_step=0, accumulate_grad_batches=1):
        self.world_size = world_size
        self.global_rank = global_rank
        self.global_step = global_step
        self.accumulate_grad_batches = accumulate_grad_batches


def test_doc_ids_increment_at_each_eot_inside_the_window():
    window = np.array([5, 6, EOT, 7, 8, EOT, EOT, 9])
    assert doc_ids_for(window, EOT).tolist() == [0, 0, 1, 1, 1, 2, 3, 3]
    starting_on_eot = np.array([EOT, 1, 2, EOT, 3])
    assert doc_ids_for(starting_on_eot, EOT).tolist() == [0, 0, 0, 1, 1]
    assert doc_ids_for(np.array([1, 2, 3]), EOT).tolist() == [0, 0, 0]


def test_batches_have_the_contract_shapes_and_doc_ids(cache_dir):
    datamodule = _datamodule(cache_dir, seq_len=512, num_train_samples=64)
    seen_boundary = False
    for batch in datamodule.train_dataloader():
        input_ids, targets, doc_ids = batch["input_ids"], batch["targets"], batch["doc_ids"]
        assert input_ids.shape == targets.shape == doc_ids.shape == (4, 512)
        assert input_ids.dtype == targets.dtype == torch.long and doc_ids.dtype == torch.int32
        assert torch.equal(input_ids[:, 1:], targets[:, :-1])
        assert (doc_ids[:, 0] == 0).all() and (doc_ids.diff(dim=1) >= 0).all()
        # doc_ids rise exactly where an eot opens a document (after position 0).
        steps = doc_ids.diff(dim=1) == 1
        assert torch.equal(steps, input_ids[:, 1:] == EOT)
        seen_boundary |= bool(steps.any())
    assert seen_boundary, "512-token windows over stdlib files should cross some document boundary"


def test_windows_are_deterministic_per_seed(cache_dir):
    first = next(iter(_datamodule(cache_dir).train_dataloader()))
    again = next(iter(_datamodule(cache_dir).train_dataloader()))
    other_seed = next(iter(_datamodule(cache_dir, seed=8).train_dataloader()))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], other_seed["input_ids"])


def test_sample_i_does_not_depend_on_batch_size_or_start(cache_dir):
    small = _datamodule(cache_dir, batch_size=2).train_dataset()
    resumed = _datamodule(cache_dir)
    resumed.load_state_dict({"train_samples_consumed": 10})
    later = resumed.train_dataset()
    assert len(later) == 64 - 10
    assert torch.equal(later[0]["input_ids"], small[10]["input_ids"])


def test_ranks_take_strided_global_indices(cache_dir):
    single = [batch["input_ids"] for batch in _datamodule(cache_dir).train_dataloader()]
    single = torch.cat(single)  # global samples 0..63 in order
    per_rank = []
    for rank in range(2):
        datamodule = _datamodule(cache_dir)
        datamodule.trainer = _FakeTrainer(world_size=2, global_rank=rank)
        per_rank.append(torch.cat([b["input_ids"] for b in datamodule.train_dataloader()]))
    assert torch.equal(per_rank[0], single[0::2]) and torch.equal(per_rank[1], single[1::2])


def test_rank_strided_sampler_drops_the_uneven_tail():
    sampler = RankStridedSampler(list(range(11)), num_replicas=3, rank=2)
    assert list(sampler) == [2, 5, 8] and len(sampler) == 3
    with pytest.raises(ValueError, match="rank 3"):
        RankStridedSampler(list(range(4)), num_replicas=3, rank=3)


def test_state_dict_counts_global_samples_from_the_step(cache_dir):
    datamodule = _datamodule(cache_dir)
    datamodule.trainer = _FakeTrainer(world_size=2, global_rank=0, global_step=5, accumulate_grad_batches=3)
    assert datamodule.state_dict()["train_samples_consumed"] == 5 * 4 * 3 * 2


def test_val_windows_are_fixed_and_come_from_the_val_split(cache_dir):
    datamodule = _datamodule(cache_dir, seed=1)
    other = _datamodule(cache_dir, seed=2)
    batches = list(datamodule.val_dataloader())
    assert len(batches) == 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other.val_dataloader()))
    val_tokens = np.asarray(datamodule.shards.val.tokens)
    first_row = batches[0]["input_ids"][0].numpy()
    assert np.array_equal(val_tokens[:64], first_row)


def test_exhausted_samples_give_a_clear_error(cache_dir):
    datamodule = _datamodule(cache_dir)
    datamodule.load_state_dict({"train_samples_consumed": 62})
    with pytest.raises(ValueError, match="raise num_train_samples"):
        datamodule.train_dataloader()


def test_constructor_validates_arguments(cache_dir):
    with pytest.raises(ValueError, match="data.seq_len"):
        TokenDataModule(seq_len=0, cache_dir=str(cache_dir))
    with pytest.raises(ValueError, match="data.synthetic_fraction"):
        TokenDataModule(synthetic_fraction=1.5, cache_dir=str(cache_dir))
    with pytest.raises(RuntimeError, match="setup"):
        TokenDataModule(tokenizer="byte", cache_dir=str(cache_dir)).train_dataloader()


def test_too_short_split_for_the_context_is_explained(cache_dir):
    with pytest.raises(ValueError, match="max_seq_len"):
        _datamodule(cache_dir, source_args={"max_docs": 40}, seq_len=10_000_000).train_dataset()


def test_workers_produce_the_same_batches(cache_dir):
    in_process = next(iter(_datamodule(cache_dir).train_dataloader()))
    with_worker = next(iter(_datamodule(cache_dir, num_workers=1).train_dataloader()))
    assert torch.equal(in_process["input_ids"], with_worker["input_ids"])


def test_datasets_pickle_without_copying_the_tokens(cache_dir):
    """Spawned DataLoader workers receive the dataset by pickle: the memmap must not travel."""
    import pickle

    datamodule = _datamodule(cache_dir, synthetic_fraction=0.5, seq_len=128)
    train = datamodule.train_dataset()
    train[0], train[1]  # open the memmaps first, as a running loader would have
    assert datamodule.shards.train.num_tokens > 500_000
    for dataset in (train, datamodule.val_dataset()):
        payload = pickle.dumps(dataset)
        assert len(payload) < 50_000
        restored = pickle.loads(payload)
        assert all(torch.equal(restored[i]["input_ids"], dataset[i]["input_ids"]) for i in range(4))
