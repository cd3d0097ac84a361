"""Token datasets on disk: a corpus tokenised once (``lmn data prepare``) into raw token
files that training reads a window at a time (``lmn train --dataset DIR``).

Sources (:func:`prepare`), read in the order given, each file streamed:

* a text file: one document (UTF-8; a leading BOM is kept as a character, as ``--data``);
* a ``.jsonl`` / ``.ndjson`` file: one document per non-blank line, a JSON object whose
  ``text_field`` (default ``"text"``) is a string;
* a folder: every regular file under it, recursively, sorted by relative path (POSIX
  form), hidden names (``.git``, ``.DS_Store``: a path part starting with ``.``) left
  out; or the files matching ``glob`` (``Path.glob`` relative to the folder, e.g.
  ``"**/*.txt"``; hidden names still left out). Each file is one document, a ``.jsonl``
  file one per line.

Empty documents are skipped (counted in the manifest).

Split: with two or more documents, by documents: ``n_val = max(1, round(val_frac * n))``
(at most ``n - 1``) evenly spaced documents validate, document ``i`` (0-based, in reading
order) when ``(i + 1) * n_val // n > i * n_val // n`` -- the last one always, a function of
the document count alone. With one document, by position as the text task splits
(:func:`lmn.data.split_text`): its first ``int((1 - val_frac) * n_chars)`` characters
train, the rest validates, each part encoded on its own. ``char`` takes every character of
the corpus (both splits, as the text task); ``bpe:N`` is fitted on the training split only.

The directory (written whole, or not at all: :func:`lmn.atomic.atomic_dir`)::

    manifest.json        what it is (below); sha256 of its bytes identifies the dataset
    tokenizer.json       the tokenizer (lmn.data.load_tokenizer reads it)
    train-000000.bin     tokens of the training split, raw little-endian unsigned integers
    train-000001.bin     of the manifest's dtype (uint8 when every id fits, else uint16,
    ...                  else uint32), at most ``shard_tokens`` each: np.memmap(path, dtype)
    train.docs.bin       int64, ascending: the token offset in the split's stream (all its
                         shards one after the other) at which each document starts; the
                         first is 0. Document d is tokens [docs[d], docs[d+1]) (the last
                         to the split's end); there is no separator token, so the
                         vocabulary stays the tokenizer's. A document may span shards.
    val-000000.bin, val.docs.bin   the same for the validation split

The manifest (``format`` ``lmn-token-dataset``, ``version`` 1): the sources (path, sha256,
bytes, documents; a folder's files each with theirs), the tokenizer (spec, kind,
vocab_size, file and its sha256), the dtype, the documents (read, skipped empty, per split),
how the split was made, and per split its tokens, UTF-8 bytes (for bits per byte), document
offsets file and shards (file, tokens, sha256).

Memory: the input is read in pieces of about 1 MiB (a JSONL line whole), tokens are written
as they come, so a corpus larger than RAM prepares. What stays in memory is the character
set (``char``) or, while ``bpe:N`` is fitted, the library's count of each distinct
pre-tokenized word of the training split. A document is encoded in chunks of about
:data:`CHUNK_CHARS` characters; for ``bpe:N`` a chunk ends only where the byte-level
pre-tokenizer splits anyway (:func:`safe_cut`), so the ids are those of the whole document,
unless a document runs :data:`FORCED_CUT_FACTOR` chunks without such a place (the
manifest counts those cuts: ``forced_cuts``). The sources are read two or three times
(scan, BPE fit, encode); a source that changes in between is an error.

Reading (:class:`TokenDataset`, :class:`TokenSplit`): each window is one ``os.pread`` per
shard it touches, so training holds only its batches -- its resident memory does not grow
with the corpus (an ``np.memmap`` would count every page a whole-split pass touched).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_dir, dumps_json
from .corpus import CorpusError
from .tokenizer import ByteTokenizer, CharTokenizer, load_tokenizer, parse_tokenizer_spec

FORMAT = "lmn-token-dataset"
VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 2**28
JSONL_SUFFIXES = (".jsonl", ".ndjson")
READ_BYTES = 1 << 20  # bytes per read of a text file
CHUNK_CHARS = 1 << 20  # characters per encoded chunk, about
FORCED_CUT_FACTOR = 4  # a BPE chunk is cut anywhere once this many CHUNK_CHARS hold no safe place
DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
DOC_DTYPE = np.dtype("<i8")
SPLIT_RULE = ("documents: n_val = max(1, round(val_frac * n)), at most n - 1; document i (0-based, reading order) "
              "validates when (i + 1) * n_val // n > i * n_val // n; position (one document): the first "
              "int((1 - val_frac) * n_chars) characters train, the rest validates, each part encoded on its own")
DOCUMENTS_RULE = ("SPLIT.docs.bin: int64 token offsets, ascending, in the split's stream (its shards concatenated), "
                  "where each document starts; no separator token")


class DatasetError(CorpusError):
    """A dataset cannot be prepared or read; the message says what to do."""


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned integer dtype that holds every id ``0 .. vocab_size - 1``."""
    top = vocab_size - 1
    return "uint8" if top <= 0xFF else "uint16" if top <= 0xFFFF else "uint32"


# ----------------------------------------------------------------------------- sources
@dataclass
class _File:
    path: Path
    jsonl: bool
    shown: str  # how errors and the manifest name it


@dataclass
class _Source:
    path: Path
    kind: str  # "text", "jsonl" or "folder"
    files: list[_File] = field(default_factory=list)


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES


def _folder_files(folder: Path, glob: str | None) -> list[Path]:
    try:
        found = folder.rglob("*") if glob is None else folder.glob(glob)
        found = [p for p in found
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    except (ValueError, NotImplementedError) as err:
        raise DatasetError(f"bad --glob {glob!r}: {err}") from None
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def resolve_sources(specs, glob: str | None = None, out: Path | None = None) -> list[_Source]:
    """The sources ``specs`` name (see the module doc), checked before anything is read.

    Raises:
        DatasetError: no sources, one that does not exist or is neither a file nor a folder,
            a folder without (matching) files, or ``out`` inside a source folder.
    """
    if not specs:
        raise DatasetError("no SOURCE given: name text files, .jsonl files or folders")
    sources = []
    for spec in specs:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DatasetError(f"source {str(spec)!r} does not exist")
        if path.is_dir():
            if out is not None and (out.resolve() == path.resolve() or path.resolve() in out.resolve().parents):
                raise DatasetError(f"--out {out} is inside source folder {spec}; write the dataset elsewhere")
            files = _folder_files(path, glob)
            if not files:
                which = f"matching --glob {glob!r}" if glob is not None else "(hidden names are left out)"
                raise DatasetError(f"source folder {str(spec)!r} holds no files {which}")
            sources.append(_Source(path, "folder", [_File(f, _is_jsonl(f), str(f)) for f in files]))
        elif path.is_file():
            kind = "jsonl" if _is_jsonl(path) else "text"
            sources.append(_Source(path, kind, [_File(path, kind == "jsonl", str(spec))]))
        else:
            raise DatasetError(f"source {str(spec)!r} is neither a regular file nor a folder")
    return sources


def _open(file: _File):
    try:
        return open(file.path, "rb")
    except OSError as err:
        raise DatasetError(f"cannot read {file.shown}: {err.strerror or err}") from None


def _text_pieces(file: _File, digest) -> Iterator[str]:
    """The text of a text file in decoded pieces (UTF-8 checked; ``digest`` sees every byte)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0  # bytes passed to the decoder
    with _open(file) as f:
        while True:
            data = f.read(READ_BYTES)
            digest.update(data)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                at = done - len(decoder.getstate()[0]) + err.start
                raise DatasetError(f"{file.shown} is not valid UTF-8 (byte {max(at, 0)}); convert it to UTF-8, or "
                                   "leave it out (--glob)") from None
            done += len(data)
            if text:
                yield text
            if not data:
                return


def _jsonl_documents(file: _File, text_field: str, digest) -> Iterator[tuple[str, str]]:
    """``(where, text)`` of each non-blank line of a JSONL file."""
    with _open(file) as f:
        for number, raw in enumerate(f, 1):
            digest.update(raw)
            where = f"{file.shown} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DatasetError(f"{where} is not valid UTF-8 (byte {err.start} of the line)") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where} is not JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{where} is a JSON {type(record).__name__}, not an object with a "
                                   f"{text_field!r} field")
            if text_field not in record:
                has = ", ".join(map(repr, list(record)[:10])) or "none"
                raise DatasetError(f"{where} has no field {text_field!r} (its fields: {has}); name the text field "
                                   "with --text-field")
            text = record[text_field]
            if not isinstance(text, str):
                raise DatasetError(f"{where}: field {text_field!r} is a JSON {type(text).__name__}, not a string")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise DatasetError(f"{where}: field {text_field!r} holds a lone surrogate "
                                   f"({text[err.start]!r} at character {err.start}), which is no text") from None
            yield where, text


@dataclass
class _Document:
    where: str
    pieces: Iterator[str]  # consumed before the next document is read


def _documents(sources: list[_Source], text_field: str, hashes: dict) -> Iterator[_Document]:
    """Every document of ``sources`` in order; ``hashes[path]`` gets each file's sha256 and
    size once it has been read whole."""
    for source in sources:
        for file in source.files:
            digest = hashlib.sha256()
            if file.jsonl:
                for where, text in _jsonl_documents(file, text_field, digest):
                    yield _Document(where, iter((text,)))
            else:
                yield _Document(file.shown, _text_pieces(file, digest))
            hashes[str(file.path)] = (digest.hexdigest(), file.path.stat().st_size)


# ----------------------------------------------------------------------------- chunks
_CUT = re.compile(r"(?<=\w)(?= \w)|(?<=\w\n)(?=\w)")


def safe_cut(text: str, lo: int = 1) -> int:
    """The last position ``c >= lo`` of ``text`` where the byte-level pre-tokenizer of
    ``bpe:N`` splits whatever follows, so that encoding ``text[:c]`` and ``text[c:]`` on
    their own gives the ids of the whole; -1 if there is none. Such a place: before a space
    between word characters (``"a| b"``), or after a newline between them (``"a\\n|b"``);
    no token of GPT-2's pattern runs across either."""
    end = len(text)
    while end > lo:
        start = max(lo, end - 65536)
        last = -1
        for m in _CUT.finditer(text, start, end):
            last = m.start()
        if last >= lo:
            return last
        end = start
    return -1


def _chunks(pieces: Iterator[str], careful: bool, counts: dict) -> Iterator[str]:
    """The text of ``pieces`` in chunks of about :data:`CHUNK_CHARS`; ``careful`` (BPE):
    cut only at :func:`safe_cut` places (``counts["forced_cuts"]`` counts the others)."""
    if not careful:
        for piece in pieces:
            for i in range(0, len(piece), CHUNK_CHARS):
                yield piece[i:i + CHUNK_CHARS]
        return
    buf = ""
    for piece in pieces:
        buf += piece
        while len(buf) >= CHUNK_CHARS:
            cut = safe_cut(buf)  # the last place: the rest holds none
            if cut >= 0:
                yield buf[:cut]
                buf = buf[cut:]
                break
            if len(buf) < FORCED_CUT_FACTOR * CHUNK_CHARS:
                break  # wait for more text
            counts["forced_cuts"] = counts.get("forced_cuts", 0) + 1
            yield buf[:CHUNK_CHARS]
            buf = buf[CHUNK_CHARS:]
    if buf:
        yield buf


# ----------------------------------------------------------------------------- split
def val_document_count(n_docs: int, val_frac: float) -> int:
    """Documents that validate of ``n_docs`` (two or more)."""
    return min(n_docs - 1, max(1, round(val_frac * n_docs)))


def is_val_document(i: int, n_docs: int, n_val: int) -> bool:
    """Whether document ``i`` of ``n_docs`` validates when ``n_val`` do (evenly spaced, the last always)."""
    return (i + 1) * n_val // n_docs > i * n_val // n_docs


def _split_at(pieces: Iterator[str], at: int) -> Iterator[tuple[str, str]]:
    """``("train", piece)`` for the first ``at`` characters of ``pieces``, ``("val", piece)`` after."""
    seen = 0
    for piece in pieces:
        if seen >= at:
            yield "val", piece
        elif seen + len(piece) <= at:
            yield "train", piece
        else:
            yield "train", piece[:at - seen]
            yield "val", piece[at - seen:]
        seen += len(piece)


@dataclass
class _Scan:
    """What the first pass learns: documents (non-empty and empty), characters of the only
    document (position split), the character set (``char``), each file's sha256."""

    n_docs: int = 0
    n_empty: int = 0
    first_chars: int = 0
    chars: set = field(default_factory=set)
    hashes: dict = field(default_factory=dict)


def _scan(sources, text_field: str, want_chars: bool) -> _Scan:
    scan = _Scan()
    for doc in _documents(sources, text_field, scan.hashes):
        n = 0
        for piece in doc.pieces:
            n += len(piece)
            if want_chars:
                scan.chars.update(piece)
        if n == 0:
            scan.n_empty += 1
            continue
        if scan.n_docs == 0:
            scan.first_chars = n
        scan.n_docs += 1
    return scan


def _tagged(sources, text_field: str, scan: _Scan, val_frac: float, hashes: dict) -> Iterator[tuple[str, Iterator]]:
    """``(split, pieces)`` of every part of a non-empty document, in order (a document split by
    position gives two parts)."""
    n = scan.n_docs
    n_val = val_document_count(n, val_frac) if n >= 2 else 0
    at = int((1.0 - val_frac) * scan.first_chars) if n == 1 else None
    i = 0
    for doc in _documents(sources, text_field, hashes):
        pieces = (p for p in doc.pieces if p)
        first = next(pieces, None)
        if first is None:
            continue

        def chained(first=first, pieces=pieces):
            yield first
            yield from pieces

        if at is not None:
            for split, group in groupby(_split_at(chained(), at), key=lambda sp: sp[0]):
                yield split, (p for _, p in group)
        else:
            yield ("val" if is_val_document(i, n, n_val) else "train"), chained()
        i += 1


def _check_unchanged(before: dict, after: dict) -> None:
    for path, (digest, size) in after.items():
        if before.get(path, (digest, size))[0] != digest:
            raise DatasetError(f"{path} changed while lmn data prepare read it (sha256 {before[path][0]} then "
                               f"{digest}); prepare again once it is no longer written")


# ----------------------------------------------------------------------------- writing
class _SplitWriter:
    """The token shards and document offsets of one split, written as ids come."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, DTYPES[dtype], shard_tokens
        self.tokens = 0
        self.bytes = 0  # UTF-8 bytes of the text encoded
        self.shards: list[dict] = []
        self._file = None
        self._digest = None
        self._in_shard = 0
        self._doc_starts: list[int] = []
        self._docs_file = open(folder / f"{split}.docs.bin", "wb")
        self.n_docs = 0

    def start_document(self) -> None:
        self._doc_starts.append(self.tokens)
        self.n_docs += 1
        if len(self._doc_starts) >= 1 << 16:
            self._flush_docs()

    def _flush_docs(self) -> None:
        self._docs_file.write(np.asarray(self._doc_starts, dtype=DOC_DTYPE).tobytes())
        self._doc_starts = []

    def _next_shard(self) -> None:
        self._close_shard()
        name = f"{self.split}-{len(self.shards):06d}.bin"
        self._file = open(self.folder / name, "wb")
        self._digest = hashlib.sha256()
        self._in_shard = 0
        self.shards.append({"file": name, "tokens": 0})

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1].update(tokens=self._in_shard, sha256=self._digest.hexdigest())
            self._file = None

    def write(self, ids: np.ndarray, n_bytes: int) -> None:
        ids = ids.astype(self.dtype, copy=False)
        self.bytes += n_bytes
        while len(ids):
            if self._file is None or self._in_shard == self.shard_tokens:
                self._next_shard()
            take = ids[: self.shard_tokens - self._in_shard]
            data = take.tobytes()
            self._file.write(data)
            self._digest.update(data)
            self._in_shard += len(take)
            self.tokens += len(take)
            ids = ids[len(take):]

    def close(self) -> dict:
        self._close_shard()
        self._flush_docs()
        self._docs_file.close()
        return {"tokens": self.tokens, "bytes": self.bytes, "documents": self.n_docs,
                "doc_starts": {"file": f"{self.split}.docs.bin", "dtype": "int64", "count": self.n_docs},
                "shards": self.shards}

    def abort(self) -> None:
        for f in (self._file, self._docs_file):
            if f is not None and not f.closed:
                f.close()


# ----------------------------------------------------------------------------- prepare
def _fit(spec: str, sources, text_field: str, scan: _Scan, val_frac: float, log):
    kind, n = parse_tokenizer_spec(spec)
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "char":
        if len(scan.chars) < 2:
            raise DatasetError(f"the corpus holds {len(scan.chars)} distinct character(s): a char tokenizer has "
                               "nothing to predict; give a text with at least 2 different characters, or --tokenizer "
                               "bytes")
        return CharTokenizer(sorted(scan.chars))
    from .bpe import BPETokenizer

    log(f"fitting {spec} on the training split")
    hashes: dict = {}
    counts: dict = {}

    def train_chunks():
        for split, pieces in _tagged(sources, text_field, scan, val_frac, hashes):
            if split == "train":
                yield from _chunks(pieces, True, counts)
            else:
                for _ in pieces:
                    pass

    tok = BPETokenizer.fit_pieces(train_chunks(), n)
    _check_unchanged(scan.hashes, hashes)
    return tok


def _out_is_dataset(out: Path) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not _out_is_dataset(out):
            raise DatasetError(f"--out {out} is a non-empty directory that is not an lmn dataset; choose another --out")
        if not force:
            raise DatasetError(f"--out {out} holds a dataset already; pass --force to replace it")


def _remove_stale(out: Path, log) -> None:
    """Remove ``.OUT.tmpPID`` directories of prepares that were killed (their process is gone)."""
    import shutil

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.tmp(\d+)$")
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        found = pattern.match(entry.name)
        if not found or not entry.is_dir() or int(found.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(found.group(1)), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log(f"removed {entry} (left by a prepare that was killed)")


def prepare(sources, out, tokenizer: str, *, val_frac: float = 0.1, text_field: str = "text",
            glob: str | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS, force: bool = False,
            log: Callable[[str], None] | None = None) -> dict:
    """Tokenise ``sources`` into the dataset directory ``out`` (see the module doc); returns
    the manifest.

    Raises:
        DatasetError: a bad source, argument or text; nothing is written then.
        ValueError: a bad tokenizer spec. ImportError: ``bpe:N`` without ``tokenizers``.
    """
    log = log or (lambda message: None)
    out = Path(out).expanduser()
    parse_tokenizer_spec(tokenizer)
    if tokenizer.startswith("bpe"):
        from .bpe import require_tokenizers

        require_tokenizers()
    if isinstance(val_frac, bool) or not isinstance(val_frac, (int, float)) or not 0.0 < val_frac < 1.0:
        raise DatasetError(f"--val-frac must be a number in (0, 1), got {val_frac!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DatasetError(f"--shard-tokens must be a whole number >= 1, got {shard_tokens!r}")
    if not isinstance(text_field, str) or not text_field:
        raise DatasetError("--text-field must name a field (a non-empty string)")
    resolved = resolve_sources(sources, glob, out)
    _check_out(out, force)

    log("scanning the sources")
    scan = _scan(resolved, text_field, want_chars=tokenizer == "char")
    if scan.n_docs == 0:
        what = f" ({scan.n_empty} empty document(s))" if scan.n_empty else ""
        raise DatasetError(f"the sources hold no text{what}: nothing to prepare")
    if scan.n_docs == 1 and int((1.0 - val_frac) * scan.first_chars) in (0, scan.first_chars):
        raise DatasetError(f"the corpus is one document of {scan.first_chars} character(s): too short to split at "
                           f"--val-frac {val_frac}; give a longer text")
    tok = _fit(tokenizer, resolved, text_field, scan, val_frac, log)
    dtype = token_dtype(tok.vocab_size)
    careful = tok.kind == "bpe"

    _remove_stale(out, log)
    log(f"encoding with {tok.spec} into {out}")
    counts: dict = {}
    hashes: dict = {}
    with atomic_dir(out) as tmp:
        writers = {split: _SplitWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
        try:
            for split, pieces in _tagged(resolved, text_field, scan, val_frac, hashes):
                writer = writers[split]
                writer.start_document()
                for chunk in _chunks(pieces, careful, counts):
                    writer.write(tok.encode(chunk).numpy(), len(chunk.encode("utf-8", "surrogatepass")))
            splits = {split: w.close() for split, w in writers.items()}
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        _check_unchanged(scan.hashes, hashes)
        # (plain writes inside the temporary directory: atomic_dir fsyncs each file before the rename)
        (tmp / TOKENIZER_FILE).write_text(dumps_json(tok.to_dict(), indent=None), encoding="utf-8")
        manifest = {
            "format": FORMAT, "version": VERSION,
            "sources": _source_records(resolved, hashes, text_field),
            "read": {"folders": "every regular file, recursively, sorted by relative path, hidden names left out"
                     if glob is None else f"the files matching glob {glob!r}, sorted by relative path, hidden names left out",
                     "jsonl": f"files ending {' or '.join(JSONL_SUFFIXES)}: one document per non-blank line, "
                              f"field {text_field!r}",
                     "text": "other files: one document each, UTF-8"},
            "tokenizer": {"spec": tok.spec, "kind": tok.kind, "vocab_size": tok.vocab_size, "file": TOKENIZER_FILE,
                          "sha256": _sha256(tmp / TOKENIZER_FILE)},
            "dtype": dtype, "byte_order": "little", "shard_tokens": shard_tokens,
            "documents": {"total": scan.n_docs, "skipped_empty": scan.n_empty,
                          **{split: splits[split]["documents"] for split in SPLITS}, "separator": DOCUMENTS_RULE},
            "split": {"by": "documents" if scan.n_docs >= 2 else "position", "val_frac": val_frac,
                      **({"val_documents": val_document_count(scan.n_docs, val_frac)} if scan.n_docs >= 2 else
                         {"chars": scan.first_chars, "train_chars": int((1.0 - val_frac) * scan.first_chars)}),
                      "rule": SPLIT_RULE},
            "forced_cuts": counts.get("forced_cuts", 0),
            "splits": splits,
        }
        (tmp / MANIFEST).write_bytes(_manifest_bytes(manifest))
    return manifest


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _sha256(path: Path) -> str:
    from .corpus import sha256_file

    return sha256_file(path)


def _source_records(sources: list[_Source], hashes: dict, text_field: str) -> list[dict]:
    records = []
    for source in sources:
        record = {"path": str(source.path), "kind": source.kind}
        if source.kind == "folder":
            record["files"] = [{"path": f.path.relative_to(source.path).as_posix(), "sha256": hashes[str(f.path)][0],
                                "bytes": hashes[str(f.path)][1]} for f in source.files]
        else:
            record.update(sha256=hashes[str(source.path)][0], bytes=hashes[str(source.path)][1])
        if source.kind == "jsonl" or any(f.jsonl for f in source.files):
            record["text_field"] = text_field
        records.append(record)
    return records


# ----------------------------------------------------------------------------- reading
class TokenSplit:
    """One split of a dataset: ``len()`` tokens read a window at a time from its shards.

    Attributes:
        name: ``train`` or ``val``.
        n_docs: documents (or parts of one) in the split.
    """

    def __init__(self, folder: Path, name: str, record: dict, dtype: np.dtype):
        self.folder, self.name, self.dtype = folder, name, dtype
        self._paths = [folder / s["file"] for s in record["shards"]]
        sizes = [int(s["tokens"]) for s in record["shards"]]
        self._bounds = np.cumsum([0, *sizes])  # (n_shards + 1,) first token of each shard
        self.n_tokens = int(self._bounds[-1])
        if self.n_tokens != int(record["tokens"]):
            raise DatasetError(f"{folder / MANIFEST}: split {name}'s shards hold {self.n_tokens} tokens, it says "
                               f"{record['tokens']}")
        for path, n in zip(self._paths, sizes):
            _check_size(path, n * dtype.itemsize, f"{n} tokens of {dtype.name}")
        self.n_docs = int(record["doc_starts"]["count"])
        self._docs_path = folder / record["doc_starts"]["file"]
        _check_size(self._docs_path, self.n_docs * DOC_DTYPE.itemsize, f"{self.n_docs} int64 document offsets")
        self._fds: list[int] | None = None
        self._doc_starts = None

    def __len__(self) -> int:
        return self.n_tokens

    def _open(self) -> list[int]:
        if self._fds is None:
            self._fds = [os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0)) for p in self._paths]
        return self._fds

    def close(self) -> None:
        fds, self._fds = self._fds, None
        for fd in fds or ():
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    def __getstate__(self):  # a copy (e.g. another process) opens the files again
        return {**self.__dict__, "_fds": None, "_doc_starts": None}

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``start .. start + length - 1`` of the split's stream (its dtype)."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens {start}..{start + length} are outside split {self.name} of {self.n_tokens}")
        fds, size = self._open(), self.dtype.itemsize
        out = np.empty(length, dtype=self.dtype)
        done, shard = 0, int(np.searchsorted(self._bounds, start, side="right")) - 1
        while done < length:
            at = start + done - int(self._bounds[shard])
            take = min(length - done, int(self._bounds[shard + 1]) - (start + done))
            data = os.pread(fds[shard], take * size, at * size)
            if len(data) != take * size:
                raise DatasetError(f"{self._paths[shard]} ended early (read {len(data)} of {take * size} bytes at "
                                   f"{at * size}): the dataset is damaged; prepare it again")
            out[done:done + take] = np.frombuffer(data, dtype=self.dtype)
            done += take
            shard += 1
        return out

    def windows(self, starts: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Inputs and targets ``(B, length)`` int64 of the windows beginning at ``starts (B,)``:
        what :func:`lmn.data.batches.gather_windows` gives for the split held in memory."""
        rows = np.stack([self.read(int(s), length + 1) for s in starts.tolist()]) if len(starts) else \
            np.zeros((0, length + 1), dtype=self.dtype)
        both = torch.from_numpy(rows.astype(np.int64))
        return both[:, :-1].contiguous(), both[:, 1:].contiguous()

    @property
    def doc_starts(self) -> np.ndarray:
        """``(n_docs,)`` int64: where each document starts in the stream (memory-mapped)."""
        if self._doc_starts is None:
            self._doc_starts = np.memmap(self._docs_path, dtype=DOC_DTYPE, mode="r", shape=(self.n_docs,))
        return self._doc_starts

    def document_starts(self, starts: Tensor, length: int) -> Tensor:
        """``(B, length)`` bool: True where a document begins inside each window of
        ``length`` tokens beginning at ``starts`` (what a packed batch with resets needs)."""
        docs = self.doc_starts
        mask = torch.zeros(len(starts), length, dtype=torch.bool)
        for row, s in enumerate(starts.tolist()):
            lo, hi = np.searchsorted(docs, [s, s + length], side="left")
            mask[row, torch.from_numpy(np.asarray(docs[lo:hi]) - s)] = True
        return mask


def _check_size(path: Path, expected: int, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}; the dataset is incomplete, prepare it "
                           "again") from None
    if size != expected:
        raise DatasetError(f"{path} is {size} bytes but the manifest says {what} ({expected} bytes): the dataset "
                           "is damaged; prepare it again")


class TokenDataset:
    """A directory written by :func:`prepare`, opened for reading.

    Attributes:
        path: the directory. manifest: its manifest. sha256: of ``manifest.json``'s bytes.
        dtype: the numpy dtype of the shards.
    """

    def __init__(self, path):
        self.path = Path(path).expanduser()
        manifest_path = self.path / MANIFEST
        if not self.path.is_dir():
            raise DatasetError(f"dataset {str(path)!r} is not a directory; make one with lmn data prepare")
        try:
            raw = manifest_path.read_bytes()
        except OSError:
            raise DatasetError(f"{path} has no {MANIFEST}: it is not a dataset lmn data prepare wrote (or its "
                               "prepare did not finish)") from None
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"{manifest_path} is not valid JSON ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path} is not the manifest of an lmn token dataset")
        if manifest.get("version") != VERSION:
            raise DatasetError(f"{manifest_path} has version {manifest.get('version')!r}; this lmn reads version "
                               f"{VERSION} (prepare it again with this lmn)")
        try:
            self.dtype = DTYPES[manifest["dtype"]]
            self.splits = {s: TokenSplit(self.path, s, manifest["splits"][s], self.dtype) for s in SPLITS}
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{manifest_path} is incomplete or damaged ({type(err).__name__}: {err}); prepare "
                               "the dataset again") from None
        self.manifest, self.sha256 = manifest, hashlib.sha256(raw).hexdigest()

    def tokenizer(self):
        """The dataset's tokenizer (checked against the manifest's sha256 and vocab_size)."""
        info = self.manifest["tokenizer"]
        path = self.path / info["file"]
        if not path.is_file() or _sha256(path) != info["sha256"]:
            raise DatasetError(f"{path} is missing or is not the tokenizer the manifest records (sha256); prepare the "
                               "dataset again")
        tok = load_tokenizer(path)
        if tok.vocab_size != info["vocab_size"]:
            raise DatasetError(f"{path} holds {tok.vocab_size} symbols, the manifest says {info['vocab_size']}")
        return tok

    def split(self, name: str) -> TokenSplit:
        return self.splits[name]


def describe_difference(saved: dict, now: dict) -> str:
    """What differs between two manifests (``saved``: the run's copy), in a phrase."""
    parts = []
    if saved.get("sources") != now.get("sources"):
        a = {r.get("path"): r for r in saved.get("sources") or []}
        b = {r.get("path"): r for r in now.get("sources") or []}
        if list(a) != list(b):
            parts.append(f"sources {', '.join(map(str, a))} vs {', '.join(map(str, b))}")
        for path in (p for p in a if p in b and a[p] != b[p]):
            fa = {f["path"]: f.get("sha256") for f in a[path].get("files", [])}
            fb = {f["path"]: f.get("sha256") for f in b[path].get("files", [])}
            if fa or fb:
                changed = [f"{f} {'changed' if f in fa and f in fb else 'removed' if f in fa else 'added'}"
                           for f in sorted(set(fa) | set(fb)) if fa.get(f) != fb.get(f)]
                more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
                parts.append(f"in source {path}: {', '.join(changed[:3]) or 'how it was read'}{more}")
            elif a[path].get("sha256") != b[path].get("sha256"):
                parts.append(f"the contents of source {path} (sha256 {str(a[path].get('sha256'))[:12]} vs "
                             f"{str(b[path].get('sha256'))[:12]})")
            else:
                parts.append(f"how source {path} was read")
    if saved.get("tokenizer") != now.get("tokenizer"):
        a, b = saved.get("tokenizer") or {}, now.get("tokenizer") or {}
        parts.append(f"tokenizer {a.get('spec')} (sha256 {str(a.get('sha256'))[:12]}) vs {b.get('spec')} "
                     f"(sha256 {str(b.get('sha256'))[:12]})")
    for key in ("split", "dtype", "shard_tokens", "read"):
        if saved.get(key) != now.get(key):
            a, b = saved.get(key), now.get(key)
            if key == "split" and isinstance(a, dict) and isinstance(b, dict):
                a, b = ({k: v for k, v in d.items() if k != "rule" and a.get(k) != b.get(k)} for d in (a, b))
            parts.append(f"{key} {json.dumps(a)[:80]} vs {json.dumps(b)[:80]}")
    if not parts:
        keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        parts.append(", ".join(keys) or "the manifest's bytes")
    return "; ".join(parts)


def log_to_stderr(message: str) -> None:
    """A progress line on stderr (``lmn data prepare``'s ``log``)."""
    print(message, file=sys.stderr, flush=True)
