"""scripts/prepare_data.py builds the same cache a training run then reuses."""

from scripts.prepare_data import main, prepare


def test_prepare_data_builds_the_cache_training_uses(tmp_path, capsys):
    overrides = ["data=stdlib_byte", f"paths.cache_dir={tmp_path}", "data.source_args.max_docs=20",
                 "data.val_fraction=0.2", "data.progress=false"]
    main(overrides)
    printed = capsys.readouterr().out
    datamodule = prepare(overrides)  # a second build finds the cache
    assert str(datamodule.shard_dir) in printed and datamodule.shard_dir.is_relative_to(tmp_path)
    assert datamodule.shards.train.num_tokens > 1000 and datamodule.shards.val.num_tokens > 0
    assert f"{datamodule.shards.train.num_tokens:,} train" in printed
