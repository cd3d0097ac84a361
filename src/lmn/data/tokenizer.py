"""Character-level tokenizer: the vocabulary is the sorted set of characters of a corpus,
so id ``i`` is the ``i``-th smallest code point (the paper's 65 symbols for Tiny
Shakespeare, ``"\\n"`` first)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import write_json

FORMAT = "lmn-char-tokenizer"


class CharTokenizer:
    """Maps characters to ids and back.

    Args:
        chars: the vocabulary, distinct characters in ascending code-point order.
    """

    def __init__(self, chars: str | list[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("a tokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("tokenizer vocabulary entries must be single characters")
        if chars != sorted(set(chars)):
            raise ValueError("tokenizer vocabulary must be distinct characters in sorted order")
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        # Sorted code points: encoding is one searchsorted over the whole text.
        self._codes = torch.tensor([ord(c) for c in self.chars], dtype=torch.int64)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of ``text`` outside the vocabulary, sorted, each once."""
        return sorted(set(text) - set(self.stoi))

    def encode(self, text: str) -> Tensor:
        """``text`` -> ids ``(len(text),)`` int64.

        Raises:
            ValueError: naming the characters that are not in the vocabulary.
        """
        unknown = self.unknown_chars(text)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
            raise ValueError(
                f"{len(unknown)} character(s) not in the vocabulary of {self.vocab_size}: {shown}"
            )
        if not text:
            return torch.zeros(0, dtype=torch.int64)
        codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).to(torch.int64)
        return torch.searchsorted(self._codes, codes)

    def decode(self, ids) -> str:
        """Ids (a tensor or any iterable of ints) -> text."""
        ids = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        # A list of one-character strings survives JSON exactly, whatever the characters.
        return {"format": FORMAT, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("chars"), list):
            raise ValueError(f"not an lmn character tokenizer (expected format {FORMAT!r})")
        return cls(data["chars"])

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a temporary ``.NAME.tmpPID`` renamed over ``path``)."""
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read tokenizer {str(path)!r}: {err}") from None
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"bad tokenizer file {str(path)!r}: {err}") from None

