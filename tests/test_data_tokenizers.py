"""Offline tokenizers: GPT-2 BPE from a local file, the byte tokenizer, and their errors."""

import hashlib
import shutil

import pytest
import tiktoken

from adasplash_train.data import tokenizers
from adasplash_train.data.tokenizers import build_tokenizer, resolve_gpt2_bpe_file


@pytest.fixture
def no_gpt2_sources(monkeypatch, tmp_path):
    """Hide every place the GPT-2 vocabulary could be found."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tokenizers, "packaged_bpe_file", lambda: None)


def test_gpt2_encodes_hello_world_without_get_encoding(gpt2_file, monkeypatch):

    def forbidden(*args, **kwargs):
        raise AssertionError("tiktoken.get_encoding downloads; it must never be called")

    monkeypatch.setattr(tiktoken, "get_encoding", forbidden)
    tok = build_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert (tok.eot_id, tok.vocab_size, tok.name) == (50256, 50257, "gpt2")


def test_gpt2_treats_literal_endoftext_as_text(gpt2_file):
    tok = build_tokenizer("gpt2")
    ids = tok.encode("a <|endoftext|> b")
    assert tok.eot_id not in ids
    assert tok.decode(ids) == "a <|endoftext|> b"


def test_gpt2_spec_rebuilds_and_has_no_discovered_path(gpt2_file):
    tok = build_tokenizer("gpt2")
    assert tok.spec() == {"name": "gpt2"}
    assert build_tokenizer(**tok.spec()).encode("def f(x):") == tok.encode("def f(x):")


def test_gpt2_explicit_path_is_used_and_recorded(gpt2_file, no_gpt2_sources, tmp_path):
    # gpt2_file is resolved before no_gpt2_sources hides the usual places.
    copy = tmp_path / "my-vocab.tiktoken"
    shutil.copy(gpt2_file, copy)
    tok = build_tokenizer("gpt2", path=str(copy))
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.spec() == {"name": "gpt2", "path": str(copy)}


def test_gpt2_found_in_tiktoken_cache_dir(gpt2_file, monkeypatch, tmp_path):
    shutil.copy(gpt2_file, tmp_path / tokenizers.R50K_CACHE_FILE_NAME)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokenizers, "packaged_bpe_file", lambda: None)
    assert resolve_gpt2_bpe_file() == tmp_path / tokenizers.R50K_CACHE_FILE_NAME


def test_pattern_matches_tiktoken_r50k():
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    assert tokenizers.R50K_PATTERN == openai_public.r50k_pat_str


def test_missing_bpe_file_error_says_what_was_tried_and_how_to_fix(no_gpt2_sources):
    with pytest.raises(FileNotFoundError) as error:
        build_tokenizer("gpt2")
    message = str(error.value)
    for expected in ("TIKTOKEN_CACHE_DIR", "pip install openai-whisper", "data.tokenizer_path",
                     tokenizers.R50K_CACHE_FILE_NAME, "byte"):
        assert expected in message


def test_explicit_missing_path_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.tokenizer_path"):
        build_tokenizer("gpt2", path=str(tmp_path / "nope.tiktoken"))


def test_wrong_vocabulary_file_is_rejected(tmp_path):
    bogus = tmp_path / "bogus.tiktoken"
    bogus.write_bytes(b"SGVsbG8= 0\n")
    with pytest.raises(ValueError, match="sha256"):
        build_tokenizer("gpt2", path=str(bogus))


def test_byte_tokenizer_roundtrips_unicode():
    tok = build_tokenizer("byte")
    text = "naïve café — λx. x² 🙂"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert max(ids) < 256 and tok.decode(ids + [tok.eot_id]) == text
    assert (tok.eot_id, tok.vocab_size, tok.spec()) == (256, 257, {"name": "byte"})
    assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]


def test_unknown_tokenizer_lists_choices():
    with pytest.raises(ValueError, match=r"\['gpt2', 'byte'\]"):
        build_tokenizer("sentencepiece")


def test_byte_tokenizer_rejects_a_vocabulary_path():
    with pytest.raises(ValueError, match="tokenizer_path"):
        build_tokenizer("byte", path="/some/file")


def test_expected_hash_constant_matches_the_shipped_file(gpt2_file):
    assert hashlib.sha256(gpt2_file.read_bytes()).hexdigest() == tokenizers.R50K_SHA256


def test_checkpoint_tokenizer_with_a_path_missing_here_falls_back_to_the_offline_search(gpt2_file):
    from adasplash_train.checkpoint import _rebuild_tokenizer

    tokenizer = _rebuild_tokenizer({"name": "gpt2", "path": "/nonexistent/training-machine/gpt2.tiktoken"})
    assert tokenizer.encode("Hello world") == [15496, 995]
