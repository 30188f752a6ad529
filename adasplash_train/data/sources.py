"""Document sources: each yields the documents of a corpus as strings, in a deterministic order.

- ``stdlib``: the running interpreter's standard library source (non-test ``.py`` files) plus the
  reference prose of ``pydoc_data.topics``. Present on every machine, needs no network.
- ``files``: local ``.txt``/``.md`` (one document per file), ``.jsonl`` (one per line, field
  ``text_field``) and ``.parquet`` (one per row, column ``text_field``) files, directories or globs.
- ``hf``: ``datasets.load_dataset(name, config, split=...)`` for users with a local cache.

Every source has a ``cache_key()``: a short name plus a hash of everything that changes its
documents, so token shards built from it are reused exactly when they are still valid.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

SOURCE_NAMES = ("stdlib", "files", "hf")

# Directories of the standard library that hold tests, bundled third-party code or tooling
# rather than library source. pydoc_data is left out because its topics are read as prose below.
_STDLIB_TEST_DIRS = {"test", "tests", "idle_test"}
_STDLIB_SKIPPED_DIRS = {"idlelib", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}
# Build-configuration dumps that differ from machine to machine; leaving them out keeps the
# corpus (and its cache key) identical wherever the same Python version runs.
_STDLIB_SKIPPED_PREFIXES = ("_sysconfigdata",)

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def _short_hash(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def _check_max_docs(max_docs: int | None) -> int | None:
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise ValueError(f"data.source_args.max_docs must be a positive integer or null, got {max_docs!r}.")
    return max_docs


def _limited(documents: Iterator[str], max_docs: int | None) -> Iterator[str]:
    for count, document in enumerate(documents):
        if max_docs is not None and count >= max_docs:
            return
        yield document


class StdlibSource:
    """The Python standard library's own source files, then the ``pydoc_data.topics`` prose."""

    name = "stdlib"

    def __init__(self, max_docs: int | None = None, include_topics: bool = True, include_tests: bool = False):
        self.max_docs = _check_max_docs(max_docs)
        self.include_topics = bool(include_topics)
        # The test suites roughly double the corpus, for users who want more (if more repetitive) text.
        self.include_tests = bool(include_tests)
        self.root = Path(sysconfig.get_paths()["stdlib"])

    def source_files(self) -> list[Path]:
        skipped = _STDLIB_SKIPPED_DIRS if self.include_tests else _STDLIB_SKIPPED_DIRS | _STDLIB_TEST_DIRS
        files = []
        for directory, subdirs, names in os.walk(self.root):
            # Pruning in place stops os.walk from descending into skipped directories.
            subdirs[:] = sorted(d for d in subdirs if d not in skipped and not d.startswith("config-"))
            for name in sorted(names):
                if name.endswith(".py") and not name.startswith(_STDLIB_SKIPPED_PREFIXES):
                    files.append(Path(directory) / name)
        # Sort by the path relative to the root so the order is the same on every machine.
        return sorted(files, key=lambda path: path.relative_to(self.root).as_posix())

    def _all_documents(self) -> Iterator[str]:
        for path in self.source_files():
            # Source files are UTF-8 (PEP 3120); a stray byte must not stop the corpus build.
            yield path.read_bytes().decode("utf-8", errors="replace")
        if self.include_topics:
            from pydoc_data.topics import topics

            for topic in sorted(topics):
                yield topics[topic]

    def documents(self) -> Iterator[str]:
        return _limited(self._all_documents(), self.max_docs)

    def num_documents(self) -> int | None:
        total = len(self.source_files())
        if self.include_topics:
            from pydoc_data.topics import topics

            total += len(topics)
        return total if self.max_docs is None else min(total, self.max_docs)

    def cache_key(self) -> str:
        version = f"{sys.implementation.name}{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
        args = {"version": version, "max_docs": self.max_docs, "include_topics": self.include_topics}
        if self.include_tests:  # keeps the key of the default corpus unchanged
            args["include_tests"] = True
        return f"stdlib-{_short_hash(args)}"

    def describe(self) -> str:
        return f"Python {sys.version.split()[0]} standard library at {self.root}"


class FilesSource:
    """Local files: ``paths`` is a path, directory or glob, or a list of them."""

    name = "files"

    def __init__(self, paths: str | list[str] | None = None, text_field: str = "text", max_docs: int | None = None):
        if paths is None or paths == [] or paths == "":
            raise ValueError(
                "source 'files' needs data.source_args.paths: a file, directory or glob "
                "(or a list of them) of .txt/.md, .jsonl or .parquet files."
            )
        self.patterns = [paths] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        self.text_field = text_field
        self.max_docs = _check_max_docs(max_docs)
        self.files = self._resolve_files()

    def _resolve_files(self) -> list[Path]:
        files: list[Path] = []
        for pattern in self.patterns:
            expanded = os.path.expanduser(str(pattern))
            if glob.has_magic(expanded):
                matches = [Path(p) for p in sorted(glob.glob(expanded, recursive=True)) if Path(p).is_file()]
            elif Path(expanded).is_dir():
                matches = sorted(p for p in Path(expanded).rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
            elif Path(expanded).is_file():
                matches = [Path(expanded)]
            else:
                matches = []
            if not matches:
                raise FileNotFoundError(
                    f"data.source_args.paths: nothing found at {pattern!r} (resolved to {os.path.abspath(expanded)}). "
                    f"Give existing files, directories or globs of {', '.join(SUPPORTED_SUFFIXES)} files."
                )
            files.extend(matches)
        for path in files:
            if path.suffix not in SUPPORTED_SUFFIXES:
                raise ValueError(
                    f"data.source_args.paths: unsupported file type {path.suffix!r} ({path}); "
                    f"supported: {', '.join(SUPPORTED_SUFFIXES)}."
                )
        return files

    def _read_jsonl(self, path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number} is not valid JSON: {error}") from error
                if not isinstance(record, dict) or self.text_field not in record:
                    raise ValueError(
                        f"{path}:{line_number} has no field {self.text_field!r}; "
                        "set data.source_args.text_field to the field that holds the text."
                    )
                yield str(record[self.text_field])

    def _read_parquet(self, path: Path) -> Iterator[str]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if self.text_field not in parquet.schema_arrow.names:
            raise ValueError(
                f"{path} has no column {self.text_field!r} (columns: {parquet.schema_arrow.names}); "
                "set data.source_args.text_field to the column that holds the text."
            )
        for batch in parquet.iter_batches(columns=[self.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield str(text)

    def _all_documents(self) -> Iterator[str]:
        for path in self.files:
            if path.suffix in TEXT_SUFFIXES:
                yield path.read_text(encoding="utf-8", errors="replace")
            elif path.suffix in JSONL_SUFFIXES:
                yield from self._read_jsonl(path)
            else:
                yield from self._read_parquet(path)

    def documents(self) -> Iterator[str]:
        return _limited(self._all_documents(), self.max_docs)

    def num_documents(self) -> int | None:
        if all(path.suffix in TEXT_SUFFIXES for path in self.files):
            return len(self.files) if self.max_docs is None else min(len(self.files), self.max_docs)
        return None

    def cache_key(self) -> str:
        # Size and modification time make an edited file produce a new cache entry.
        stamps = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]
        return f"files-{_short_hash({'files': stamps, 'text_field': self.text_field, 'max_docs': self.max_docs})}"

    def describe(self) -> str:
        return f"{len(self.files)} local file(s) from {self.patterns}"


class HFSource:
    """A Hugging Face dataset read through ``datasets.load_dataset`` (local cache or network)."""

    name = "hf"

    def __init__(self, name: str | None = None, config: str | None = None, split: str = "train",
                 text_field: str = "text", max_docs: int | None = None, streaming: bool = False,
                 load_kwargs: dict | None = None):
        if not name:
            raise ValueError(
                "source 'hf' needs data.source_args.name: a dataset name (e.g. 'HuggingFaceFW/fineweb-edu'), "
                "a local dataset directory, or a builder such as 'json' with load_kwargs.data_files."
            )
        self.dataset_name = name
        self.config = config
        self.split = split
        self.text_field = text_field
        self.max_docs = _check_max_docs(max_docs)
        self.streaming = bool(streaming)
        self.load_kwargs = dict(load_kwargs or {})

    def _load(self):
        try:
            import datasets
        except ImportError as error:
            raise ImportError("source 'hf' needs the 'datasets' package: pip install datasets") from error
        try:
            return datasets.load_dataset(self.dataset_name, self.config, split=self.split,
                                         streaming=self.streaming, **self.load_kwargs)
        except Exception as error:  # datasets raises many types (ConnectionError, DatasetNotFoundError...)
            offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false", "False")
            hint = ("HF_DATASETS_OFFLINE is set, so only the local cache (HF_HOME / HF_DATASETS_CACHE) was searched; "
                    "download the dataset on a machine with network and copy the cache, or unset it."
                    if offline else
                    "Without network access, set HF_DATASETS_OFFLINE=1 to read the local cache "
                    "(HF_HOME / HF_DATASETS_CACHE), or use source 'files' with local jsonl/parquet files.")
            raise RuntimeError(
                f"could not load Hugging Face dataset {self.dataset_name!r} (config={self.config!r}, "
                f"split={self.split!r}): {type(error).__name__}: {error}\n{hint}"
            ) from error

    def documents(self) -> Iterator[str]:
        dataset = self._load()
        column_names = getattr(dataset, "column_names", None)
        if column_names is not None and self.text_field not in column_names:
            raise ValueError(
                f"dataset {self.dataset_name!r} has no column {self.text_field!r} (columns: {column_names}); "
                "set data.source_args.text_field."
            )
        texts = (str(record[self.text_field]) for record in dataset if record[self.text_field] is not None)
        return _limited(texts, self.max_docs)

    def num_documents(self) -> int | None:
        return self.max_docs

    def cache_key(self) -> str:
        args = {"name": self.dataset_name, "config": self.config, "split": self.split,
                "text_field": self.text_field, "max_docs": self.max_docs, "load_kwargs": self.load_kwargs}
        safe_name = "".join(c if c.isalnum() else "_" for c in str(self.dataset_name))[-40:]
        return f"hf-{safe_name}-{_short_hash(args)}"

    def describe(self) -> str:
        return f"Hugging Face dataset {self.dataset_name!r} config={self.config!r} split={self.split!r}"


_SOURCES = {"stdlib": StdlibSource, "files": FilesSource, "hf": HFSource}


def build_source(name: str, **source_args):
    """Instantiate a document source by name with its arguments (``data.source_args``)."""
    if name not in _SOURCES:
        raise ValueError(f"unknown data source {name!r}; choose one of {list(SOURCE_NAMES)} (data.source).")
    try:
        return _SOURCES[name](**source_args)
    except TypeError as error:
        raise TypeError(f"bad data.source_args for source {name!r}: {error}") from error
