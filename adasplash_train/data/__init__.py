"""Data: offline tokenizers, corpus sources, token shards and the training DataModule."""

from .datamodule import TokenDataModule
from .shards import TokenShards, build_token_shards
from .sources import FilesSource, HFSource, StdlibSource, build_source
from .synthetic import SyntheticSample, SyntheticTasks
from .tokenizers import ByteTokenizer, TiktokenTokenizer, Tokenizer, build_tokenizer

__all__ = [
    "TokenDataModule",
    "TokenShards",
    "build_token_shards",
    "StdlibSource",
    "FilesSource",
    "HFSource",
    "build_source",
    "SyntheticSample",
    "SyntheticTasks",
    "Tokenizer",
    "ByteTokenizer",
    "TiktokenTokenizer",
    "build_tokenizer",
]
