"""Byte-level BPE (tokenizer ``bpe:N``): GPT-2's scheme, fitted and applied by the
HuggingFace ``tokenizers`` library, an optional extra (``pip install "torch-lmn[bpe]"``)
imported only when a BPE tokenizer is made or loaded.

* pre-tokenisation: the ``ByteLevel`` pre-tokenizer (its regex splits words, spaces and
  punctuation; every byte is one of 256 printable stand-ins, so every text encodes and
  decodes exactly), no normaliser, no special tokens;
* vocabulary: the 256 bytes, then merges learned on the **training split only** until the
  vocabulary holds ``N`` symbols (fewer when the split offers no more pairs);
* saved in the run as ``{"format": "lmn-tokenizer", "kind": "bpe", "vocab_size",
  "requested_vocab_size", "tokenizer": <the library's own JSON>}``.

Decoding needs no library call: each id's bytes come from its vocabulary entry
(:class:`lmn.data.tokenizer.ByteLevelTokenizer`).
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor

from ..atomic import write_json
from .tokenizer import BYTE_LEVEL_ALPHABET, BYTE_LEVEL_BYTES, TOKENIZER_FORMAT, ByteLevelTokenizer

INSTALL = 'pip install "torch-lmn[bpe]"'
_CHUNK = 1 << 20  # characters per piece the trainer reads (cut after a newline)


def require_tokenizers():
    """The ``tokenizers`` module, or one ImportError line naming the install command."""
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f"the bpe tokenizer needs the HuggingFace tokenizers library: {INSTALL}") from None
    return tokenizers


def _pieces(text: str):
    """``text`` in pieces of about :data:`_CHUNK` characters, each ending after a newline
    where there is one (the trainer counts words piece by piece)."""
    start = 0
    while start < len(text):
        end = start + _CHUNK
        if end < len(text):
            cut = text.find("\n", end)
            end = len(text) if cut < 0 else cut + 1
        yield text[start:end]
        start = end


class BPETokenizer(ByteLevelTokenizer):
    """A byte-level BPE vocabulary (see the module doc).

    Args:
        tokenizer_json: the ``tokenizers`` library's JSON of a byte-level BPE (as
            :meth:`fit` makes it).
        requested_vocab_size: the ``N`` of ``bpe:N`` it was fitted for (default: its size).
    """

    kind = "bpe"

    def __init__(self, tokenizer_json: dict, requested_vocab_size: int | None = None):
        tk = require_tokenizers()
        _check_structure(tokenizer_json)
        try:
            self._tok = tk.Tokenizer.from_str(json.dumps(tokenizer_json))
        except Exception as err:  # the library's own exception type
            raise ValueError(f"the tokenizers library cannot read this BPE tokenizer: {err}") from None
        self._json = json.loads(self._tok.to_str())  # the library's canonical form: what equality compares
        vocab = self._json["model"]["vocab"]
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ValueError("a BPE vocabulary must number its tokens 0, 1, ... without gaps")
        missing = [c for c in BYTE_LEVEL_ALPHABET if c not in vocab]
        if missing:
            raise ValueError(f"a byte-level BPE vocabulary needs all 256 bytes; {len(missing)} are missing")
        try:
            self.token_bytes = [bytes(BYTE_LEVEL_BYTES[c] for c in token) for token, _ in by_id]
        except KeyError as err:
            raise ValueError(f"BPE token with a character that stands for no byte: {err}") from None
        self.requested_vocab_size = int(requested_vocab_size or len(by_id))
        self.spec = f"bpe:{self.requested_vocab_size}"

    @classmethod
    def fit(cls, text: str, vocab_size: int) -> "BPETokenizer":
        """Learn merges on ``text`` (the training split) up to ``vocab_size`` symbols."""
        return cls.fit_pieces(_pieces(text), vocab_size)

    @classmethod
    def fit_pieces(cls, pieces, vocab_size: int) -> "BPETokenizer":
        """Learn merges on the texts of the iterable ``pieces`` (read one at a time: the
        library keeps the count of each distinct pre-tokenized word, not the texts) up to
        ``vocab_size`` symbols. A word cut between two pieces counts as two words: cut
        where the pre-tokenizer splits anyway (:func:`lmn.data.dataset.safe_cut`)."""
        tk = require_tokenizers()
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = tk.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                      special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(pieces, trainer)
        return cls(json.loads(tok.to_str()), vocab_size)

    def __eq__(self, other) -> bool:
        return isinstance(other, BPETokenizer) and self._json == other._json

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, spec={self.spec!r})"

    def encode(self, text: str) -> Tensor:
        """``text`` -> ids ``(n,)`` int64 (every text encodes)."""
        if not text:
            return torch.zeros(0, dtype=torch.int64)
        return torch.tensor(self._tok.encode(text, add_special_tokens=False).ids, dtype=torch.int64)

    def library_tokenizer(self):
        """A fresh ``tokenizers.Tokenizer`` of this vocabulary (e.g. for ``transformers``)."""
        return require_tokenizers().Tokenizer.from_str(json.dumps(self._json))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"format": TOKENIZER_FORMAT, "kind": self.kind, "vocab_size": self.vocab_size,
                "requested_vocab_size": self.requested_vocab_size,
                "tokenizers_version": require_tokenizers().__version__, "tokenizer": self._json}

    @classmethod
    def from_dict(cls, data: dict) -> "BPETokenizer":
        if not isinstance(data.get("tokenizer"), dict):
            raise ValueError("a bpe tokenizer file needs its \"tokenizer\" object")
        tok = cls(data["tokenizer"], data.get("requested_vocab_size"))
        if data.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise ValueError(f"it says vocab_size {data['vocab_size']} but its vocabulary holds {tok.vocab_size}")
        return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a temporary ``.NAME.tmpPID`` renamed over ``path``)."""
        write_json(path, self.to_dict(), indent=None)


def byte_library_tokenizer():
    """:class:`lmn.data.ByteTokenizer` as a ``tokenizers.Tokenizer`` (for ``transformers``):
    a byte-level BPE without merges whose id ``b`` is byte ``b``."""
    tk = require_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers

    tok = tk.Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(BYTE_LEVEL_ALPHABET)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _check_structure(data) -> None:
    """The shape of a byte-level BPE as :meth:`BPETokenizer.fit` makes it, or ValueError."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError("not a tokenizers-library tokenizer (no \"model\" object)")
    model, pre = data["model"], data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"expected a BPE model, got {model.get('type')!r}")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        raise ValueError("expected the ByteLevel pre-tokenizer without a prefix space")
    if data.get("normalizer") is not None or data.get("added_tokens"):
        raise ValueError("a byte-level BPE of lmn has no normalizer and no added tokens")
