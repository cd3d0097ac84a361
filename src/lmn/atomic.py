"""Safe writes: every file lmn writes appears whole or not at all.

One pattern, written once: the bytes go to a temporary ``.NAME.tmpPID`` beside the
destination (the same directory, so the rename never crosses a file system), are flushed
and ``fsync``-ed, and the temporary is renamed onto the destination with ``os.replace``
(atomic on POSIX and Windows); the directory is then fsynced, so the rename itself
survives a power cut. If anything raises before the rename, the temporary is removed
and the previous file (if any) stays as it was. A process killed outright (SIGKILL) can
leave a ``.NAME.tmpPID`` behind, never a half-written destination; the run directory's
cleaner (:func:`lmn.trainer.rundir.clean_stale`) removes such leftovers by that name.

* :func:`atomic_write` -- a file object (``"wb"`` or ``"w"``).
* :func:`write_bytes`, :func:`write_text`, :func:`write_json` -- whole contents at once.
  :func:`write_json` refuses NaN and infinities (``allow_nan=False``) so that every JSON
  lmn writes is valid JSON.
* :func:`atomic_path` -- a temporary *path*, for writers that take a file name
  (``torch.onnx``, ``torch.export.save``, safetensors' ``save_file``, matplotlib's
  ``savefig``); :func:`save_figure` for a matplotlib figure.
* :func:`atomic_dir` -- a temporary sibling *directory*, written whole first and then
  renamed into place whole (e.g. the Hugging Face directory of ``lmn convert``): the
  destination is either the previous directory or the complete new one. Every file in
  it is fsynced before the rename. With ``merge=True`` onto a non-empty directory (whose
  other files must survive) its files are renamed in one by one instead.
* :func:`fsync_path`, :func:`fsync_dir`, :func:`rename` -- the primitives, for a writer
  whose commit point is its own rename (a checkpoint directory,
  :func:`lmn.trainer.rundir.save_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_path", "atomic_dir", "write_bytes", "write_text", "write_json",
           "dumps_json", "save_figure", "fsync_path", "fsync_dir", "rename", "temporary_name"]


def temporary_name(path: str | os.PathLike) -> Path:
    """The temporary beside ``path``: ``DIR/.NAME.tmpPID``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_path(path: str | os.PathLike) -> None:
    """``fsync`` a file already written and closed (by name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a directory, so that a rename inside it is durable (a no-op where
    directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)``, then fsync ``dst``'s directory: the one rename of lmn."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` for a writer that takes a file name; on a
    normal exit it is fsynced and renamed onto ``path``, on an exception removed (the
    previous ``path`` stays intact). The temporary's name does not end in ``path``'s
    suffix: give a writer that guesses the format from the name the format explicitly
    (e.g. ``savefig(tmp, format="png")``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"{path}: the writer did not create its file (expected {tmp.name})")
        fsync_path(tmp)
        rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """``with atomic_write(path) as f: f.write(...)``: ``f`` is a temporary file beside
    ``path`` (``mode`` ``"wb"`` or ``"w"``; text defaults to UTF-8), flushed, fsynced and
    renamed onto ``path`` on a normal exit; removed on an exception."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 unless told)."""
    write_bytes(path, text.encode(encoding))


def dumps_json(doc, *, indent: int | None = 1, sort_keys: bool = False, ensure_ascii: bool = True,
               where: str | os.PathLike = "JSON") -> str:
    """``json.dumps(doc, ...) + "\\n"``, refusing NaN and infinities with one line naming
    ``where`` (strict JSON readers reject them)."""
    try:
        return json.dumps(doc, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                          allow_nan=False) + "\n"
    except ValueError as err:
        raise ValueError(f"{where}: refusing to write a non-finite number (NaN or infinity) as JSON "
                         f"({err}); record it as null or a string instead") from None


def write_json(path: str | os.PathLike, doc, *, indent: int | None = 1, sort_keys: bool = False,
               ensure_ascii: bool = True) -> None:
    """Write ``doc`` as JSON (``json.dumps(doc, indent=indent, sort_keys=sort_keys)`` plus
    a newline) atomically; NaN and infinities are refused (:func:`dumps_json`), before
    anything is written."""
    write_text(path, dumps_json(doc, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, where=path))


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` (matplotlib) to ``path`` atomically; the format is ``path``'s
    suffix (``.png``) unless ``format=`` is given. Returns ``path``."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike, merge: bool = False):
    """Yield an empty temporary directory beside ``path`` (``.NAME.tmpPID``) to fill. On
    an exception it is removed and ``path`` is left as it was. On a normal exit every
    file in it is fsynced, then:

    * ``merge=False`` (or ``path`` absent or empty): the directory is renamed into place
      whole -- ``path`` is the previous directory or the complete new one. A previous
      ``path`` is moved aside first and deleted after (only between those two renames
      is ``path`` absent).
    * ``merge=True`` and ``path`` a non-empty directory (e.g. ``--force`` onto a
      directory that holds other files, which must survive): each file is renamed into
      ``path`` on its own (each atomic, the set not: a crash between two renames leaves
      some files new and some old), then the temporary is removed. Nothing is moved
      before everything is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a directory")
    tmp = temporary_name(path)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                fsync_path(Path(root) / name)
            fsync_dir(root)
        if merge and path.is_dir() and any(path.iterdir()):
            for root, _dirs, files in os.walk(tmp):
                dest = path / Path(root).relative_to(tmp)
                dest.mkdir(exist_ok=True)
                for name in files:
                    os.replace(Path(root) / name, dest / name)
                fsync_dir(dest)
            _remove(tmp)
        elif path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            _remove(old)
            os.replace(path, old)
            try:
                rename(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
