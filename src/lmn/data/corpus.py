"""Text corpora: find a named corpus on disk (or download and verify it), read any UTF-8
text file.

A named corpus is looked for, in order:

1. the explicit path given by the caller (``--data PATH``);
2. ``$LMN_DATA_DIR/<file name>``;
3. the user cache directory, ``$XDG_CACHE_HOME/lmn`` or ``~/.cache/lmn``;
4. a download from its canonical URL into the cache directory, accepted only if its
   sha256 matches.

A copy found under a data or cache directory must also match the sha256, so that every
run that says "tinyshakespeare" trained on the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_path

DATA_DIR_ENV = "LMN_DATA_DIR"


class CorpusError(ValueError):
    """A corpus could not be found, fetched or read; the message says what to do."""


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    filename: str
    url: str
    sha256: str


CORPORA = {
    "tinyshakespeare": NamedCorpus(
        name="tinyshakespeare",
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lmn`` if XDG_CACHE_HOME is set, else ``~/.cache/lmn``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "lmn"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_corpus(spec: str | os.PathLike, *, download: bool = True, timeout: float = 30.0) -> Path:
    """Turn ``spec`` -- a corpus name such as ``"tinyshakespeare"`` or a path to a text
    file -- into the path of a file on disk.

    An existing file always wins, so ``--data ./tinyshakespeare`` reads that file even
    though it is also a corpus name.

    Raises:
        CorpusError: the path does not exist and ``spec`` is not a known name; or the named
            corpus is nowhere on disk and could not be downloaded; or a copy on disk or the
            download does not match the expected sha256.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise CorpusError(f"corpus path {str(spec)!r} exists but is not a regular file")
    corpus = CORPORA.get(str(spec))
    if corpus is None:
        known = ", ".join(sorted(CORPORA))
        raise CorpusError(f"no such file {str(spec)!r}, and it is not a known corpus name (known: {known})")

    candidates = []
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        candidates.append(Path(data_dir).expanduser() / corpus.filename)
    cached = cache_dir() / corpus.filename
    candidates.append(cached)
    for candidate in candidates:
        if candidate.is_file():
            _verify(candidate, corpus)
            return candidate

    looked = ", ".join(str(c) for c in candidates)
    if not download:
        raise CorpusError(f"corpus {corpus.name!r} not found (looked in {looked}); {_how_to_provide(corpus)}")
    try:
        _download(corpus, cached, timeout)
    except (OSError, urllib.error.URLError) as err:  # offline, DNS, HTTP error, read-only cache...
        reason = getattr(err, "reason", None) or err
        raise CorpusError(
            f"corpus {corpus.name!r} not found (looked in {looked}) and downloading it from {corpus.url} "
            f"failed ({reason}); {_how_to_provide(corpus)}"
        ) from None
    return cached


def _how_to_provide(corpus: NamedCorpus) -> str:
    return (
        f"download {corpus.url} yourself and pass --data PATH, or save it as {corpus.filename} "
        f"in ${DATA_DIR_ENV} or in {cache_dir()}"
    )


def _verify(path: Path, corpus: NamedCorpus) -> None:
    digest = sha256_file(path)
    if digest != corpus.sha256:
        raise CorpusError(
            f"{path} is not the {corpus.name!r} corpus: sha256 {digest} != expected {corpus.sha256}; "
            f"delete or replace it, or pass it explicitly with --data {path} to train on it anyway"
        )


def _download(corpus: NamedCorpus, dest: Path, timeout: float) -> None:
    """Fetch into a temporary file beside ``dest``, check the sha256, then rename, so a
    failed or partial download never leaves a file that looks like the corpus."""
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(corpus.url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        digest = sha256_file(tmp)
        if digest != corpus.sha256:
            raise CorpusError(
                f"downloaded {corpus.url} but its sha256 {digest} != expected {corpus.sha256}; "
                f"{_how_to_provide(corpus)}"
            )


def read_text(path: str | os.PathLike) -> str:
    """Read a whole UTF-8 text file (a leading BOM is kept as a character).

    Raises:
        CorpusError: unreadable, empty, or not valid UTF-8 (the message gives the byte offset).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read corpus {str(path)!r}: {err.strerror or err}") from None
    if not data:
        raise CorpusError(f"corpus {str(path)!r} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"corpus {str(path)!r} is not valid UTF-8 (byte {err.start}: {data[err.start:err.start + 1]!r}); "
            "convert it to UTF-8 first"
        ) from None


def load_corpus(spec: str | os.PathLike, *, download: bool = True) -> tuple[Path, str]:
    """``resolve_corpus`` then ``read_text``: returns ``(path, text)``."""
    path = resolve_corpus(spec, download=download)
    return path, read_text(path)
