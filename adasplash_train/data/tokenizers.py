"""Tokenizers that work without network access.

Two tokenizers are offered:

- ``gpt2``: the GPT-2 BPE (tiktoken's ``r50k_base``), built directly from a local ``.tiktoken``
  vocabulary file. ``tiktoken.get_encoding`` is never called because it downloads the file.
- ``byte``: UTF-8 bytes 0..255 plus an end-of-text token 256. Needs no file at all.

Both expose the same small interface (``encode``, ``decode``, ``encode_batch``, ``eot_id``,
``vocab_size``, ``name``, ``spec``). ``spec()`` returns the keyword arguments that rebuild the
tokenizer through :func:`build_tokenizer`; checkpoints store it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Iterable, Protocol, Sequence

# tiktoken caches r50k_base under the sha1 of the URL it would download it from.
R50K_CACHE_FILE_NAME = "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# The GPT-2 pre-tokenization regex (as used by tiktoken's r50k_base): contractions, letter runs,
# digit runs, punctuation runs, each optionally led by one space, then whitespace handling.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257

TOKENIZER_NAMES = ("gpt2", "byte")


class Tokenizer(Protocol):
    name: str
    eot_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def spec(self) -> dict: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255; token 256 marks document boundaries (end of text)."""

    name = "byte"
    eot_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        # The eot token has no text; a window cut mid-character decodes with a replacement mark.
        data = bytes(int(i) for i in ids if int(i) != self.eot_id)
        return data.decode("utf-8", errors="replace")

    def spec(self) -> dict:
        return {"name": "byte"}

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eot_id=256)"


class TiktokenTokenizer:
    """GPT-2 BPE through a tiktoken ``Encoding`` built from a local vocabulary file."""

    def __init__(self, encoding, bpe_path: Path, user_path: str | None):
        self._encoding = encoding
        self.bpe_path = bpe_path
        self._user_path = user_path
        self.name = "gpt2"
        self.eot_id = GPT2_EOT_ID
        self.vocab_size = GPT2_VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: a literal "<|endoftext|>" inside a document stays plain text, so the
        # eot id only ever appears where the data pipeline puts a document boundary.
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # tiktoken releases the GIL, so its thread pool uses every core without multiprocessing.
        return self._encoding.encode_ordinary_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding.decode([int(i) for i in ids])

    def spec(self) -> dict:
        # Only a path the user chose is recorded; an auto-discovered file is found again on the
        # machine that loads the checkpoint.
        spec = {"name": "gpt2"}
        if self._user_path is not None:
            spec["path"] = self._user_path
        return spec

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(name='gpt2', bpe_path='{self.bpe_path}')"


def build_tokenizer(name: str = "gpt2", path: str | None = None) -> Tokenizer:
    """Build a tokenizer by name; ``path`` optionally points at the GPT-2 ``.tiktoken`` file."""
    if name == "byte":
        if path is not None:
            raise ValueError(
                f"tokenizer 'byte' needs no vocabulary file, but tokenizer_path={path!r} was given; "
                "set data.tokenizer_path=null or use tokenizer 'gpt2'."
            )
        return ByteTokenizer()
    if name == "gpt2":
        bpe_path = resolve_gpt2_bpe_file(path)
        return TiktokenTokenizer(_load_r50k_encoding(str(bpe_path)), bpe_path, path)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {list(TOKENIZER_NAMES)} (data.tokenizer).")


def tiktoken_cache_dir() -> Path:
    """The directory tiktoken itself reads cached vocabularies from (same precedence as tiktoken)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def packaged_bpe_file() -> Path | None:
    """openai-whisper ships the r50k vocabulary; find it without importing whisper (slow, heavy)."""
    try:
        spec = importlib.util.find_spec("whisper")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "assets" / "gpt2.tiktoken"
        if candidate.is_file():
            return candidate
    return None


def resolve_gpt2_bpe_file(path: str | None = None) -> Path:
    """Find the r50k_base vocabulary: explicit path, then tiktoken's cache, then an installed package."""
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(
                f"data.tokenizer_path={path!r} does not exist. Point it at the GPT-2 'r50k_base' "
                "vocabulary file (e.g. whisper/assets/gpt2.tiktoken from the openai-whisper package), "
                "or set it to null to search TIKTOKEN_CACHE_DIR and installed packages."
            )
        return explicit

    cached = tiktoken_cache_dir() / R50K_CACHE_FILE_NAME
    if cached.is_file():
        return cached
    packaged = packaged_bpe_file()
    if packaged is not None:
        return packaged
    raise FileNotFoundError(
        "No GPT-2 BPE vocabulary (r50k_base) found, and this project never downloads one. Tried:\n"
        f"  1. data.tokenizer_path: not set\n"
        f"  2. tiktoken cache: {cached} (from TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR / temp dir)\n"
        "  3. whisper/assets/gpt2.tiktoken from an installed openai-whisper package: not found\n"
        "Provide one of them:\n"
        "  - pip install openai-whisper   (ships the file; it is found automatically), or\n"
        "  - set data.tokenizer_path=/path/to/r50k_base.tiktoken, or\n"
        f"  - copy the file to $TIKTOKEN_CACHE_DIR/{R50K_CACHE_FILE_NAME}\n"
        "Or train with the byte tokenizer (data=stdlib_byte / data.tokenizer=byte), which needs no file."
    )


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_bpe_ranks(bpe_path: str) -> dict[bytes, int]:
    """The `.tiktoken` format: one "<base64 token> <rank>" pair per line. Read here rather than with
    tiktoken.load.load_tiktoken_bpe, which copies local files into tiktoken's cache directory (fails
    when it is read-only) and, in some releases, needs the optional blobfile package for any path."""
    ranks = {}
    with open(bpe_path, "rb") as handle:
        for line in handle:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=4)
def _load_r50k_encoding(bpe_path: str):
    import tiktoken

    actual = _sha256_of(bpe_path)
    if actual != R50K_SHA256:
        raise ValueError(
            f"{bpe_path} is not the GPT-2 r50k_base vocabulary (sha256 {actual}, expected {R50K_SHA256}). "
            "Use whisper/assets/gpt2.tiktoken from openai-whisper or the original r50k_base.tiktoken."
        )
    ranks = _read_bpe_ranks(bpe_path)
    return tiktoken.Encoding(
        name="r50k_base",
        pat_str=R50K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
