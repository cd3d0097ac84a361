"""Corpora, the tokenizers (char, bytes, bpe:N; :func:`load_tokenizer` reads any run's) and the
batching of the paper's protocol."""

from .batches import check_split_sizes, get_batch, sequential_windows, split_tokens
from .corpus import CORPORA, DATA_DIR_ENV, CorpusError, cache_dir, load_corpus, read_text, resolve_corpus
from .tokenizer import (ByteTokenizer, CharTokenizer, encode_splits, fit_tokenizer, load_tokenizer,
                        parse_tokenizer_spec, split_text, tokenizer_from_dict)

__all__ = [
    "CORPORA",
    "DATA_DIR_ENV",
    "ByteTokenizer",
    "CharTokenizer",
    "CorpusError",
    "cache_dir",
    "check_split_sizes",
    "encode_splits",
    "fit_tokenizer",
    "get_batch",
    "load_corpus",
    "load_tokenizer",
    "parse_tokenizer_spec",
    "read_text",
    "resolve_corpus",
    "sequential_windows",
    "split_text",
    "split_tokens",
    "tokenizer_from_dict",
]
