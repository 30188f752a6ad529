"""configs/data/*.yaml compose inside train.yaml and instantiate the DataModule."""

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf.errors import MissingMandatoryValue

from adasplash_train.data import TokenDataModule

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
DATA_CONFIGS = sorted(path.stem for path in Path(CONFIG_DIR, "data").glob("*.yaml"))


def _compose(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["num_train_samples=16", "batch_size=2", "model.max_seq_len=64",
                                           f"paths.cache_dir={tmp_path}", *overrides])


def test_all_data_configs_are_present():
    assert {"stdlib", "stdlib_byte", "files", "hf"} <= set(DATA_CONFIGS)


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_data_config_instantiates(tmp_path, name):
    (tmp_path / "doc.txt").write_text("some text")
    extra = {"files": [f"data.source_args.paths=[{tmp_path / 'doc.txt'}]"],
             "hf": ["data.source_args.name=json"]}.get(name, [])
    cfg = _compose(tmp_path, f"data={name}", *extra)
    datamodule = hydra.utils.instantiate(cfg.data)
    assert isinstance(datamodule, TokenDataModule)
    assert (datamodule.seq_len, datamodule.batch_size, datamodule.num_train_samples) == (64, 2, 16)
    assert datamodule.cache_dir == tmp_path and datamodule.seed == cfg.seed
    assert isinstance(datamodule.source_args, dict)


def test_stdlib_byte_config_yields_batches(tmp_path):
    cfg = _compose(tmp_path, "data=stdlib_byte", "data.source_args.max_docs=20", "data.progress=false")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape == (2, 64) and datamodule.tokenizer.vocab_size == 257
    assert (tmp_path / "tokens").is_dir()


def test_files_config_requires_paths(tmp_path):
    cfg = _compose(tmp_path, "data=files")
    with pytest.raises(MissingMandatoryValue, match=r"data\.source_args\.paths"):
        hydra.utils.instantiate(cfg.data)
