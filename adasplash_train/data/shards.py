"""Tokenize a document source once into memory-mapped token files, split into train and val.

Cache layout (one directory per (source, its arguments, tokenizer, val fraction))::

    <cache_dir>/tokens/<source-key>-<tokenizer>-val<fraction>/
        train.bin        tokens of the train documents, uint16 (uint32 if the vocabulary needs it)
        train_docs.npy   int64 start offset of every train document, plus the total length at the end
        val.bin, val_docs.npy
        meta.json        format version, dtype, counts, tokenizer spec, source description

Every document is stored as ``[eot] + tokens``: the end-of-text token opens each document (it acts
as BOS), so document boundaries inside any window are exactly the positions of eot tokens.

The directory is built under a temporary name and renamed into place when complete, so an
interrupted run never leaves a half-written cache, and a second run simply reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from .hashing import hash_ints

SHARD_FORMAT_VERSION = 1
SPLITS = ("train", "val")
# A validation split of fewer documents than this is too noisy to compare runs on.
MIN_VAL_DOCS = 4
# Fixed so that the split depends on the corpus only, never on the training seed.
_SPLIT_SALT = 0x5A17
_ENCODE_BATCH_DOCS = 128


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size - 1 <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def shard_dir_name(source_key: str, tokenizer_name: str, val_fraction: float) -> str:
    return f"{source_key}-{tokenizer_name}-val{val_fraction:g}"


def check_val_fraction(val_fraction: float) -> float:
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction!r} (e.g. 0.01).")
    return float(val_fraction)


def choose_val_documents(num_docs: int, val_fraction: float) -> np.ndarray:
    """Boolean mask of validation documents: a fixed pseudo-random subset of the document indices.

    The count is ``round(val_fraction * num_docs)`` but at least MIN_VAL_DOCS, and never more than
    half of the documents so that training keeps most of a small corpus.
    """
    if num_docs < 2:
        raise ValueError(f"the corpus has {num_docs} non-empty document(s); a train/val split needs at least 2.")
    num_val = min(max(MIN_VAL_DOCS, round(val_fraction * num_docs)), num_docs // 2)
    ranks = np.array([hash_ints(_SPLIT_SALT, index) for index in range(num_docs)], dtype=np.uint64)
    chosen = np.argsort(ranks, kind="stable")[:num_val]
    is_val = np.zeros(num_docs, dtype=bool)
    is_val[chosen] = True
    return is_val


class TokenSplit:
    """One split's tokens (memory-mapped, opened lazily) and its document start offsets."""

    def __init__(self, tokens_path: Path, docs_path: Path, dtype: np.dtype):
        self.tokens_path = Path(tokens_path)
        self.docs_path = Path(docs_path)
        self.dtype = np.dtype(dtype)
        self.doc_starts = np.load(self.docs_path)
        self._tokens = None

    @property
    def tokens(self) -> np.memmap:
        # Opened on first use so that a DataLoader worker maps the file itself instead of
        # receiving a pickled copy of the whole array.
        if self._tokens is None:
            self._tokens = np.memmap(self.tokens_path, dtype=self.dtype, mode="r")
        return self._tokens

    @property
    def num_tokens(self) -> int:
        return int(self.doc_starts[-1])

    @property
    def num_docs(self) -> int:
        return len(self.doc_starts) - 1

    def __len__(self) -> int:
        return self.num_tokens

    def __getitem__(self, key):
        # Lets a split stand in for its token array (e.g. as synthetic filler) while staying
        # cheap to pickle into DataLoader workers.
        return self.tokens[key]

    def document(self, index: int) -> np.ndarray:
        return np.asarray(self.tokens[self.doc_starts[index]:self.doc_starts[index + 1]])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokens"] = None
        return state


class TokenShards:
    """A complete shard directory: ``train`` and ``val`` splits plus the metadata."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"no token shards at {self.directory}; call prepare_data() (rank 0 tokenizes) before setup(), "
                "and make sure every node sees the same data.cache_dir."
            )
        self.meta = json.loads(meta_path.read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.train = TokenSplit(self.directory / "train.bin", self.directory / "train_docs.npy", dtype)
        self.val = TokenSplit(self.directory / "val.bin", self.directory / "val_docs.npy", dtype)

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])


def is_complete(directory: Path) -> bool:
    meta_path = Path(directory) / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()).get("format_version") == SHARD_FORMAT_VERSION
    except json.JSONDecodeError:
        return False


def _progress_bar(total: int | None, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="doc", disable=not enabled, dynamic_ncols=True)


def _batched(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenize_to_file(source, tokenizer, out_path: Path, dtype: np.dtype, progress: bool) -> list[int]:
    """Write every non-empty document as [eot] + tokens; return the stored length of each."""
    doc_lengths: list[int] = []
    total_tokens = 0
    with open(out_path, "wb") as out, _progress_bar(source.num_documents(), f"tokenizing {source.name}", progress) as bar:
        for texts in _batched(source.documents(), _ENCODE_BATCH_DOCS):
            for ids in tokenizer.encode_batch(texts):
                if len(ids) == 0:
                    continue
                stored = np.empty(len(ids) + 1, dtype=np.int64)
                stored[0] = tokenizer.eot_id
                stored[1:] = ids
                if stored.max() >= tokenizer.vocab_size or stored.min() < 0:
                    raise ValueError(f"tokenizer {tokenizer.name!r} produced an id outside [0, {tokenizer.vocab_size}).")
                out.write(stored.astype(dtype).tobytes())
                doc_lengths.append(len(stored))
                total_tokens += len(stored)
            bar.set_postfix(tokens=f"{total_tokens:,}", refresh=False)
            bar.update(len(texts))
    return doc_lengths


def _write_split(all_tokens: np.ndarray, doc_starts: np.ndarray, doc_indices: np.ndarray,
                 tokens_path: Path, docs_path: Path) -> tuple[int, int]:
    lengths = doc_starts[doc_indices + 1] - doc_starts[doc_indices]
    split_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with open(tokens_path, "wb") as out:
        for index in doc_indices:
            out.write(all_tokens[doc_starts[index]:doc_starts[index + 1]].tobytes())
    np.save(docs_path, split_starts)
    return len(doc_indices), int(split_starts[-1])


def build_token_shards(source, tokenizer, directory: Path, val_fraction: float = 0.01, progress: bool = True) -> Path:
    """Tokenize ``source`` into ``directory`` unless a complete cache is already there."""
    directory = Path(directory)
    if is_complete(directory):
        return directory
    val_fraction = check_val_fraction(val_fraction)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        started = time.time()
        doc_lengths = _tokenize_to_file(source, tokenizer, tmp / "all.bin", dtype, progress)
        doc_starts = np.concatenate([[0], np.cumsum(doc_lengths, dtype=np.int64)]).astype(np.int64)
        is_val = choose_val_documents(len(doc_lengths), val_fraction)
        all_tokens = np.memmap(tmp / "all.bin", dtype=dtype, mode="r")
        counts = {}
        for split, mask in (("train", ~is_val), ("val", is_val)):
            counts[split] = _write_split(all_tokens, doc_starts, np.flatnonzero(mask),
                                         tmp / f"{split}.bin", tmp / f"{split}_docs.npy")
        del all_tokens
        (tmp / "all.bin").unlink()
        meta = {
            "format_version": SHARD_FORMAT_VERSION,
            "dtype": dtype.name,
            "eot_id": tokenizer.eot_id,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer": tokenizer.spec(),
            "source": source.describe(),
            "source_key": source.cache_key(),
            "val_fraction": val_fraction,
            "num_docs": {split: counts[split][0] for split in SPLITS},
            "num_tokens": {split: counts[split][1] for split in SPLITS},
            "build_seconds": round(time.time() - started, 2),
        }
        # meta.json is written last: its presence marks the directory complete.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _move_into_place(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _move_into_place(tmp: Path, directory: Path) -> None:
    if directory.exists():
        if is_complete(directory):
            return  # another process finished the same cache first; both are identical
        # Left over from an older format: replace it.
        stale = directory.parent / f".{directory.name}.stale-{uuid.uuid4().hex[:8]}"
        directory.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(directory)
    except OSError:
        if not is_complete(directory):
            raise
