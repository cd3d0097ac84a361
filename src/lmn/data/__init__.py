"""Corpora, the character tokenizer and the batching of the paper's protocol."""

from .batches import check_split_sizes, get_batch, sequential_windows, split_tokens
from .corpus import CORPORA, DATA_DIR_ENV, CorpusError, cache_dir, load_corpus, read_text, resolve_corpus
from .tokenizer import CharTokenizer

__all__ = [
    "CORPORA",
    "DATA_DIR_ENV",
    "CharTokenizer",
    "CorpusError",
    "cache_dir",
    "check_split_sizes",
    "get_batch",
    "load_corpus",
    "read_text",
    "resolve_corpus",
    "sequential_windows",
    "split_tokens",
]
