"""Token shards: roundtrip, document boundaries, train/val split, cache reuse, atomic builds."""

import numpy as np
import pytest

from adasplash_train.data import build_tokenizer
from adasplash_train.data.shards import (MIN_VAL_DOCS, TokenShards, build_token_shards, choose_val_documents,
                                         token_dtype)
from adasplash_train.data.sources import FilesSource, StdlibSource

TEXTS = [f"document {i}: " + "héllo wörld ✓ " * (i % 5 + 1) + f"end {i}" for i in range(40)]


def _files_source(tmp_path, texts=TEXTS, folder_name="corpus"):
    folder = tmp_path / folder_name
    folder.mkdir()
    for index, text in enumerate(texts):
        (folder / f"{index:03d}.txt").write_text(text, encoding="utf-8")
    return FilesSource(paths=str(folder))


def _decoded_documents(split, tokenizer):
    documents = []
    for index in range(split.num_docs):
        tokens = split.document(index)
        assert tokens[0] == tokenizer.eot_id, "every document starts with eot"
        assert tokenizer.eot_id not in tokens[1:], "eot appears only at document starts"
        documents.append(tokenizer.decode(tokens[1:]))
    return documents


@pytest.mark.parametrize("tokenizer_name", ["byte", "gpt2"])
def test_roundtrip_split_is_disjoint_and_complete(tmp_path, tokenizer_name, request):
    if tokenizer_name == "gpt2":
        request.getfixturevalue("gpt2_file")  # skips where no package ships the BPE file
    tokenizer = build_tokenizer(tokenizer_name)
    directory = build_token_shards(_files_source(tmp_path), tokenizer, tmp_path / "shards", val_fraction=0.1,
                                   progress=False)
    shards = TokenShards(directory)
    train = _decoded_documents(shards.train, tokenizer)
    val = _decoded_documents(shards.val, tokenizer)
    assert sorted(train + val) == sorted(TEXTS)
    assert not set(train) & set(val)
    assert len(val) == MIN_VAL_DOCS  # 10% of 40
    # Documents keep their corpus order inside each split.
    assert train == [t for t in TEXTS if t in set(train)]
    assert shards.meta["num_tokens"]["train"] == shards.train.num_tokens == len(shards.train.tokens)
    assert shards.train.tokens.dtype == np.uint16


def test_split_is_deterministic_and_sized():
    first = choose_val_documents(1000, 0.01)
    assert np.array_equal(first, choose_val_documents(1000, 0.01))
    assert first.sum() == 10
    assert choose_val_documents(20, 0.01).sum() == MIN_VAL_DOCS
    assert choose_val_documents(3, 0.5).sum() == 1
    assert 0 < first.nonzero()[0].mean() < 1000 and not np.array_equal(first[:10], np.ones(10, bool))
    with pytest.raises(ValueError, match="at least 2"):
        choose_val_documents(1, 0.1)


def test_second_build_reuses_the_cache(tmp_path):
    tokenizer = build_tokenizer("byte")
    source = _files_source(tmp_path)
    directory = build_token_shards(source, tokenizer, tmp_path / "shards", progress=False)
    marker = (directory / "train.bin").stat().st_mtime_ns

    def no_tokenizing():
        raise AssertionError("a complete cache must not be rebuilt")

    source.documents = no_tokenizing
    assert build_token_shards(source, tokenizer, tmp_path / "shards", progress=False) == directory
    assert (directory / "train.bin").stat().st_mtime_ns == marker


def test_interrupted_build_leaves_no_cache(tmp_path):
    tokenizer = build_tokenizer("byte")
    source = StdlibSource(max_docs=300)

    def documents_then_crash():
        yield from TEXTS[:10]
        raise KeyboardInterrupt

    source.documents = documents_then_crash
    with pytest.raises(KeyboardInterrupt):
        build_token_shards(source, tokenizer, tmp_path / "shards", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory remains
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        TokenShards(tmp_path / "shards")


def test_bad_arguments_and_dtype_choice(tmp_path):
    tokenizer = build_tokenizer("byte")
    with pytest.raises(ValueError, match="val_fraction"):
        build_token_shards(_files_source(tmp_path), tokenizer, tmp_path / "shards", val_fraction=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        build_token_shards(_files_source(tmp_path, ["only one"], "single"), tokenizer, tmp_path / "one", progress=False)
    assert token_dtype(257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(100_277) == np.uint32


def test_empty_documents_are_skipped(tmp_path):
    texts = ["alpha", "", "beta", "gamma", "", "delta", "epsilon", "zeta", "eta", "theta"]
    tokenizer = build_tokenizer("byte")
    directory = build_token_shards(_files_source(tmp_path, texts), tokenizer, tmp_path / "shards", progress=False)
    shards = TokenShards(directory)
    assert shards.train.num_docs + shards.val.num_docs == 8
