"""One trainer per run directory: the run lock (``RUN/lmn-run.lock``).

``lmn train`` (a new run, ``--resume`` and ``--force`` alike) holds an exclusive
``flock`` on ``RUN/lmn-run.lock`` for as long as it runs, and writes into that file who
holds it: ``{"pid", "host", "started"}``. A second trainer on the same directory finds the
lock taken and refuses in one line naming the holder (:class:`RunLocked`), before it reads
or writes anything else there.

* **Released at exit, whatever the exit.** The file is removed and its descriptor closed
  by :meth:`RunLock.release` (normal end, an error, Ctrl-C); a process killed outright
  (SIGKILL, a crash, a power cut) holds no lock any more either -- the kernel drops a
  ``flock`` with the process -- and leaves only the file, which the next trainer takes
  over (a *stale* lock: the file is there, nobody holds it).
* **Race-free take-over.** A lock is held only on the file that is at the lock's path: after
  ``flock`` succeeds the holder checks that its descriptor is still the file at that path
  (not one that a releasing holder unlinked meanwhile) and tries again otherwise.
* **Where ``flock`` does not work** (some network file systems refuse it), the recorded
  holder decides: a live process of the same host holds the run; a dead one, or none, is
  stale. This is a best effort, not mutual exclusion.

Under DDP/FSDP only process 0 takes the lock (:mod:`lmn.trainer.loop`): the processes of
one run are one trainer.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "lmn-run.lock"

__all__ = ["LOCK_FILE", "RunLock", "RunLocked", "lock_holder"]


class RunLocked(ValueError):
    """The run directory is in use by another trainer (the message names it)."""


def _holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime())}


def lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """What the lock file of ``run_dir`` says of its holder (``{"pid", "host", "started"}``),
    or None when it has no readable record. Says nothing about whether it is still held."""
    try:
        doc = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that has not yet recorded itself"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """The lock of one run directory; :meth:`acquire` it, :meth:`release` it (or use it as
    a context manager, which releases it). Releasing a lock not held does nothing."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, create: bool = True) -> bool:
        """Take the lock (at once, never waiting).

        Args:
            create: make the lock file when there is none (the directory must exist);
                otherwise only a lock file already there is taken (and ``False`` returned
                when there is none), so that nothing is written into a directory that
                will be refused anyway.
        Returns:
            whether the lock is now held.
        Raises:
            RunLocked: another live trainer holds it.
        """
        if self._fd is not None:
            return True
        while True:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            try:
                fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._locked(lock_holder(self.run_dir)) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    os.close(fd)
                    raise
                holder = lock_holder(self.run_dir)
                if holder and holder.get("host") == socket.gethostname() and _alive(holder.get("pid")) \
                        and holder.get("pid") != os.getpid():
                    os.close(fd)
                    raise self._locked(holder) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # a holder released (unlinked) it between our open and our flock: again
                os.close(fd)
                continue
            self._fd = fd
            break
        data = json.dumps(_holder_info()).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        return True

    def _locked(self, holder: dict | None) -> RunLocked:
        return RunLocked(f"{self.run_dir} is in use by another lmn train ({_describe(holder)}); "
                         "wait for it to end, or stop it, then try again")

    def release(self) -> None:
        """Remove the lock file and let go of the lock (the file first: a trainer that opened
        it meanwhile sees that it is no longer the file at the lock's path)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
