"""Tokenizers of the text task, and the one loader every reader of a run uses.

Three kinds, named by a spec string (``--task-opt tokenizer=SPEC`` of ``lmn train``):

* ``char`` (:class:`CharTokenizer`): the vocabulary is the sorted set of characters of a
  corpus, so id ``i`` is the ``i``-th smallest code point (the paper's 65 symbols for Tiny
  Shakespeare, ``"\\n"`` first);
* ``bytes`` (:class:`ByteTokenizer`): the UTF-8 bytes of the text, id = byte value, 256
  symbols, nothing to fit;
* ``bpe:N`` (:class:`lmn.data.bpe.BPETokenizer`): byte-level BPE with a vocabulary of at
  most ``N`` (256 bytes plus merges), fitted on the training split with the optional
  ``tokenizers`` library (``pip install "torch-lmn[bpe]"``), imported only then.

A run directory's ``tokenizer.json`` says which kind it holds (``"kind"``; a file without
it is a character vocabulary, as every run made before the other kinds):
:func:`load_tokenizer` reads any of them. Every tokenizer has ``kind``, ``spec``,
``vocab_size``, ``encode(text) -> (N,) int64``, ``decode(ids) -> str``,
``unknown_chars(text)``, ``byte_lengths()`` (the UTF-8 bytes each id stands for, for bits
per byte), ``stream_decoder()`` (text as ids arrive one at a time: a character whose bytes
span several ids comes out whole) and ``to_dict``/``save``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import write_json

FORMAT = "lmn-char-tokenizer"  # the character vocabulary's file (no "kind": files of every lmn version)
TOKENIZER_FORMAT = "lmn-tokenizer"  # the other kinds' files: {"format", "kind", ...}
TOKENIZER_KINDS = ("char", "bytes", "bpe")
TOKENIZER_SPEC_HELP = ("char (the corpus's characters; the default), bytes (UTF-8 bytes, 256 symbols) or "
                       "bpe:N (byte-level BPE of vocabulary N > 256 fitted on the training split; needs "
                       'pip install "torch-lmn[bpe]")')


class CharTokenizer:
    """Maps characters to ids and back.

    Args:
        chars: the vocabulary, distinct characters in ascending code-point order.
    """

    kind = spec = "char"

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

    def byte_lengths(self) -> Tensor:
        """``(vocab_size,)`` int64: the UTF-8 bytes of each character."""
        return torch.tensor([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], dtype=torch.int64)

    def stream_decoder(self):
        """A callable ``ids -> text`` for ids that arrive a few at a time (with ``flush()``)."""
        return _CharStream(self)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        # A list of one-character strings survives JSON exactly, whatever the characters.
        return {"format": FORMAT, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        if (not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("chars"), list)
                or data.get("kind", "char") != "char"):
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



class _CharStream:
    def __init__(self, tokenizer: CharTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def flush(self) -> str:
        return ""


# ----------------------------------------------------------------------------- byte-level
def _byte_level_alphabet() -> list[str]:
    """The printable stand-in of each byte value (GPT-2's byte-level scheme, which the
    ``tokenizers`` library's ByteLevel pre-tokenizer uses): printable Latin-1 bytes stand
    for themselves, the other 68 for the code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


BYTE_LEVEL_ALPHABET = _byte_level_alphabet()  # byte value -> its one-character stand-in
BYTE_LEVEL_BYTES = {c: b for b, c in enumerate(BYTE_LEVEL_ALPHABET)}  # and back


class ByteLevelTokenizer:
    """Common part of the tokenizers whose ids stand for byte strings (:class:`ByteTokenizer`,
    :class:`lmn.data.bpe.BPETokenizer`): ``token_bytes[i]`` is what id ``i`` stands for.
    Every text encodes (``unknown_chars`` is always empty); decoding joins the bytes and
    reads them as UTF-8, an incomplete or invalid sequence (e.g. sampled ids) as U+FFFD."""

    token_bytes: list[bytes]

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def unknown_chars(self, text: str) -> list[str]:
        """Always empty: every text has UTF-8 bytes."""
        return []

    def _ids(self, ids) -> list[int]:
        ids = ids.reshape(-1).tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside [0, {self.vocab_size})")
        return ids

    def to_bytes(self, ids) -> bytes:
        """The bytes that ids (a tensor or any iterable of ints) stand for."""
        table = self.token_bytes
        return b"".join(table[i] for i in self._ids(ids))

    def decode(self, ids) -> str:
        """Ids -> text (bytes that are not valid UTF-8 read as U+FFFD)."""
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def byte_lengths(self) -> Tensor:
        """``(vocab_size,)`` int64: the bytes each id stands for."""
        return torch.tensor([len(b) for b in self.token_bytes], dtype=torch.int64)

    def stream_decoder(self):
        """A callable ``ids -> text`` for ids that arrive a few at a time: the bytes of a
        character split across ids are held until it is complete; ``flush()`` ends it."""
        return _ByteStream(self)


class _ByteStream:
    def __init__(self, tokenizer: ByteLevelTokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, ids) -> str:
        return self.decoder.decode(self.tokenizer.to_bytes(ids))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


class ByteTokenizer(ByteLevelTokenizer):
    """The UTF-8 bytes of a text: id ``b`` is byte value ``b``, 256 symbols, nothing fitted."""

    kind = spec = "bytes"
    token_bytes = [bytes([b]) for b in range(256)]

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteTokenizer)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"

    def encode(self, text: str) -> Tensor:
        """``text`` -> its UTF-8 bytes ``(n_bytes,)`` int64."""
        data = text.encode("utf-8", "surrogatepass")
        if not data:
            return torch.zeros(0, dtype=torch.int64)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)

    def library_tokenizer(self):
        """This vocabulary as a ``tokenizers.Tokenizer`` (needs the library; for ``transformers``)."""
        from .bpe import byte_library_tokenizer

        return byte_library_tokenizer()

    def to_dict(self) -> dict:
        return {"format": TOKENIZER_FORMAT, "kind": self.kind}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a temporary ``.NAME.tmpPID`` renamed over ``path``)."""
        write_json(path, self.to_dict(), indent=None)


# ----------------------------------------------------------------------------- specs, fitting, loading
_BPE_SPEC = re.compile(r"bpe:(\d+)")


def parse_tokenizer_spec(spec) -> tuple[str, int | None]:
    """``"char"``, ``"bytes"`` or ``"bpe:N"`` -> ``(kind, N or None)``.

    Raises:
        ValueError: anything else, or a BPE vocabulary of 256 or fewer.
    """
    if spec in ("char", "bytes"):
        return spec, None
    found = _BPE_SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if found is None:
        raise ValueError(f"unknown tokenizer {spec!r}; give {TOKENIZER_SPEC_HELP}")
    n = int(found.group(1))
    if n <= 256:
        raise ValueError(f"tokenizer {spec!r}: a byte-level BPE vocabulary holds the 256 bytes and its merges, so N "
                         f"must be more than 256 (got {n}); for the bytes alone give bytes")
    return "bpe", n


def split_text(text: str, train_frac: float = 0.9) -> tuple[str, str]:
    """``(train, val)`` text: the first ``int(train_frac * len(text))`` characters and the
    rest (for the character vocabulary the same split as :func:`lmn.data.split_tokens` of
    its ids; every tokenizer gets the same two texts, so that bits per byte compare)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac!r}")
    n = int(train_frac * len(text))
    return text[:n], text[n:]


def fit_tokenizer(spec: str, text: str, train_frac: float = 0.9):
    """The tokenizer ``spec`` names for corpus ``text``: ``char`` takes every character of
    the corpus (as runs always have, so that every validation character has an id);
    ``bytes`` is fixed; ``bpe:N`` is fitted on the training split alone
    (:func:`split_text`)."""
    kind, n = parse_tokenizer_spec(spec)
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bytes":
        return ByteTokenizer()
    from .bpe import BPETokenizer

    return BPETokenizer.fit(split_text(text, train_frac)[0], n)


def encode_splits(tokenizer, text: str, train_frac: float = 0.9) -> tuple[Tensor, Tensor]:
    """The train and validation ids of corpus ``text``: each split of :func:`split_text`
    encoded on its own (no token crosses the boundary). What the text task trains on, and
    what a probe of a run reads."""
    from .batches import split_tokens

    if tokenizer.kind == "char":  # the same ids, as every character run has split them
        return split_tokens(tokenizer.encode(text), train_frac)
    train, val = split_text(text, train_frac)
    return tokenizer.encode(train), tokenizer.encode(val)


def tokenizer_from_dict(data: dict):
    """The tokenizer of a ``to_dict()`` (any kind; no ``"kind"``: a character vocabulary).

    Raises:
        ValueError: not a tokenizer lmn writes.
        ImportError: a BPE tokenizer without the ``tokenizers`` library (naming the install).
    """
    if not isinstance(data, dict):
        raise ValueError("not an lmn tokenizer (expected a JSON object)")
    kind = data.get("kind", "char")
    if kind == "char":
        return CharTokenizer.from_dict(data)
    if data.get("format") != TOKENIZER_FORMAT:
        raise ValueError(f"not an lmn tokenizer (expected format {TOKENIZER_FORMAT!r})")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        from .bpe import BPETokenizer

        return BPETokenizer.from_dict(data)
    raise ValueError(f"unknown tokenizer kind {kind!r} (this lmn reads {', '.join(TOKENIZER_KINDS)}); "
                     "a newer lmn wrote it?")


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved at ``path`` (a run's ``tokenizer.json``), whatever its kind.

    Raises:
        ValueError: naming the file, when it cannot be read or is not a tokenizer.
        ImportError: a BPE tokenizer without the ``tokenizers`` library.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read tokenizer {str(path)!r}: {err}") from None
    try:
        return tokenizer_from_dict(data)
    except ValueError as err:
        raise ValueError(f"bad tokenizer file {str(path)!r}: {err}") from None
