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
  :func:`write_together` -- files that belong together (a model and its description):
  the free space checked, all written first, then renamed into place one after another.
  :func:`write_json` refuses NaN and infinities (``allow_nan=False``) so that every JSON
  lmn writes is valid JSON.
* :func:`atomic_path` -- a temporary *path*, for writers that take a file name
  (``torch.onnx``, ``torch.export.save``, safetensors' ``save_file``, matplotlib's
  ``savefig``); :func:`save_figure` for a matplotlib figure.
* :func:`atomic_dir` -- a temporary sibling *directory*, written whole first and then
  renamed into place whole (e.g. the Hugging Face directory of ``lmn convert``): the
  destination is either the previous directory or the complete new one. Every file in
  it is fsynced before the rename. With ``merge=True`` onto a non-empty directory (whose
  other files must survive) those other files are linked into the new one first, and it
  still replaces the old one whole.
* :func:`check_space` -- refuse, before writing, bytes the file system has no room for.
* :func:`fsync_path`, :func:`fsync_dir`, :func:`rename` -- the primitives, for a writer
  whose commit point is its own rename (a checkpoint directory,
  :func:`lmn.trainer.rundir.save_checkpoint`).

**Modes.** A file appears with the mode it would have had if written in place: a new one
``0o666 & ~umask`` (``0o777 & ~umask`` if its writer made it executable), one that
replaces a file keeps that file's mode -- whatever mode the temporary was created with
(``safetensors`` and ``mkstemp`` create theirs ``0600``).

**Errors.** An ``OSError`` raised while writing (a full disk, a file too large) names the
destination, not the temporary: ``[Errno 28] No space left on device: 'out/model.onnx'``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_path", "atomic_dir", "write_bytes", "write_text", "write_json",
           "dumps_json", "save_figure", "fsync_path", "fsync_dir", "rename", "temporary_name", "check_space",
           "umask", "new_file_mode", "write_together"]


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


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, so only as the fallback)
    os.umask(mask)
    return mask


def new_file_mode(executable: bool = False) -> int:
    """The mode a file created now gets: ``0o666 & ~umask`` (``0o777`` if ``executable``)."""
    return (0o777 if executable else 0o666) & ~umask()


def _settle_mode(tmp: Path, dest: Path) -> None:
    """Give the temporary ``tmp`` the mode ``dest`` has (if it exists) or a new file's."""
    try:
        mode = stat.S_IMODE(os.stat(dest).st_mode)
    except OSError:
        mode = new_file_mode(executable=bool(stat.S_IMODE(os.stat(tmp).st_mode) & 0o111))
    os.chmod(tmp, mode)


def check_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` when its file system has fewer than
    ``nbytes`` bytes free (for the caller's user), before anything is written. Where the
    free space cannot be read, nothing is checked (the write itself still fails cleanly)."""
    here = Path(path).absolute().parent
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return
    if free < nbytes:
        raise OSError(errno.ENOSPC, f"No space left on device ({nbytes:,} bytes to write, {free:,} free)", str(path))


def _naming(err: BaseException, dest: Path, tmp: Path) -> BaseException:
    """``err`` as an ``OSError`` that names ``dest`` (not the temporary ``tmp``, or no file)."""
    if not isinstance(err, OSError) or err.errno is None:
        return err
    name = None if err.filename is None else os.fsdecode(err.filename)
    if name is None:
        target = str(dest)
    elif name.startswith(str(tmp)):  # the temporary, or a file inside the temporary directory
        target = str(dest) + name[len(str(tmp)):]
    else:
        return err  # names some other file: leave it
    try:
        named = type(err)(err.errno, err.strerror or os.strerror(err.errno), target)
    except TypeError:  # an OSError subclass with its own constructor
        named = OSError(err.errno, err.strerror or os.strerror(err.errno), target)
    return named.with_traceback(err.__traceback__)


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
        _settle_mode(tmp, path)
        fsync_path(tmp)
        rename(tmp, path)
    except BaseException as err:
        _remove(tmp)
        named = _naming(err, path, tmp)
        if named is err:
            raise
        raise named from err


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


def write_together(files) -> None:
    """Write each ``(path, bytes)`` of ``files`` atomically, as one set: the free space for
    all of them is checked first (:func:`check_space`), every temporary is written and
    fsynced, and only then are they renamed into place, in the order given, one right after
    another (a file that fails to write leaves every destination as it was)."""
    files = [(Path(path), data) for path, data in files]
    if not files:
        return
    check_space(files[0][0], sum(len(data) for _, data in files))
    with ExitStack() as stack:  # exits in reverse order of entry: the renames run last, in the order given
        tmps = [stack.enter_context(atomic_path(path)) for path, _ in reversed(files)][::-1]
        for tmp, (path, data) in zip(tmps, files):
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:  # named here: every temporary's context sees it
                named = _naming(err, path, tmp)
                if named is err:
                    raise
                raise named from err


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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False``
    where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _carry_over(old: Path, new: Path) -> None:
    """Link (or copy) every entry of ``old`` that ``new`` lacks into ``new``, recursively."""
    for entry in os.scandir(old):
        src, dst = Path(entry.path), new / entry.name
        if entry.is_dir(follow_symlinks=False):
            if dst.is_dir() and not dst.is_symlink():
                _carry_over(src, dst)
            elif not os.path.lexists(dst):
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        elif not os.path.lexists(dst):
            if entry.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                _link_or_copy(src, dst)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def atomic_dir(path: str | os.PathLike, merge: bool = False):
    """Yield an empty temporary directory beside ``path`` (``.NAME.tmpPID``) to fill. On
    an exception it is removed and ``path`` is left as it was. On a normal exit every
    file in it is fsynced and given its mode (a new file's, or the mode of the file it
    replaces), then the directory replaces ``path`` whole: ``path`` is the previous
    directory or the complete new one, never a mixture.

    With ``merge=True`` onto a non-empty directory (e.g. ``--force`` onto a directory that
    holds other files, which must survive) the entries of ``path`` that the new directory
    lacks are first hard-linked (or copied) into it, so they survive the replacement.

    On Linux the two directories are swapped in one step (``renameat2``); elsewhere the
    previous ``path`` is moved aside first and deleted after, and only between those two
    renames is ``path`` absent (a process killed there leaves it in ``.NAME.oldPID``).
    ``path`` is a new directory inode afterwards (a process whose working directory was
    the old one keeps seeing the old one)."""
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
                file = Path(root) / name
                if not file.is_symlink():
                    _settle_mode(file, path / file.relative_to(tmp))
                    fsync_path(file)
            fsync_dir(root)
        if path.exists():
            if merge:
                _carry_over(path, tmp)
                fsync_dir(tmp)
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # the directory keeps its mode (after filling it)
            if _exchange(tmp, path):
                fsync_dir(path.parent)
                _remove(tmp)  # now the previous directory
            else:
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
    except BaseException as err:
        _remove(tmp)
        named = _naming(err, path, tmp)
        if named is err:
            raise
        raise named from err
