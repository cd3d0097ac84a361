"""What a run shows and how it stops: the progress line, the deferred Ctrl-C, machine info."""

from __future__ import annotations

import math
import signal
import sys
import threading

from ..records import machine_info  # noqa: F401  (the run records' machine, re-exported)


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per update
    otherwise (log files)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open = False

    def update(self, step: int, loss: float, tokens_per_s: float, eta_s: float) -> None:
        if not self.enabled:
            return
        width = len(str(self.total))
        frac = step / self.total if self.total else 1.0
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = (
            f"step {step:>{width}}/{self.total} [{bar}] loss {loss:.4f} | "
            f"{tokens_per_s / 1000:.1f}k tok/s | ETA {_fmt_duration(eta_s)}"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()


class DeferredStop:
    """Turn the first SIGINT/SIGTERM into a request honoured between steps (checkpoint,
    then KeyboardInterrupt), so a stop never lands inside an optimizer update; a second
    signal interrupts at once, even inside a checkpoint save, which is safe: a checkpoint
    becomes current only by its final rename (:mod:`lmn.trainer.rundir`). Off under DDP,
    where processes could see the request at different steps; there the periodic
    checkpoints are the resume points."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
