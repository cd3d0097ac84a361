"""What both benchmarks share: argument parsing helpers, the machine description, the
subprocess runner, peak-memory readings and step timers.

Only the standard library at import time; torch is imported inside the functions that
need it, so the drivers can describe the machine before any model is built.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import atomic
# the run records (commit, machine, versions, header) live in lmn.records; re-exported here
from ..records import SCHEMA_VERSION, git_commit, header, machine_info  # noqa: F401
from ..records import package_version as _version  # noqa: F401

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


# ----------------------------------------------------------------------------- parsing
def parse_count(text: str) -> int:
    """``"256"``, ``"4K"``, ``"1M"`` -> 256, 4096, 1048576 (binary suffixes: K = 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text.upper())
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"expected a positive count like 512, 4K or 1M, got {text!r}")
    return int(m.group(1)) * _SUFFIX[m.group(2)]


def parse_counts(text: str) -> list[int]:
    """Comma-separated counts, sorted and deduplicated: ``"1K,256"`` -> ``[256, 1024]``."""
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list of counts, got {text!r}")
    return sorted({parse_count(s) for s in items})


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"0"`` -> bytes (binary suffixes; 0 means no limit)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)I?B?\s*", text.upper())
    if not m:
        raise ValueError(f"expected a size like 4G or 512M (0: no limit), got {text!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def parse_choices(text: str, allowed, what: str) -> list[str]:
    """Comma-separated names, each in ``allowed``; order kept, duplicates dropped."""
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"unknown {what} {', '.join(map(repr, bad)) or repr(text)}; choose from {', '.join(allowed)}")
    return names


def format_count(n: int) -> str:
    """Inverse of :func:`parse_count` where exact: 1024 -> ``"1K"``, 1048576 -> ``"1M"``."""
    for suffix in ("M", "K"):
        if n >= _SUFFIX[suffix] and n % _SUFFIX[suffix] == 0:
            return f"{n // _SUFFIX[suffix]}{suffix}"
    return str(n)


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}" if abs(n) < 100 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    return f"{s:.2f} s"


# ----------------------------------------------------------------------------- machine
def resolve_devices(text: str) -> list[str]:
    """``auto`` -> ``["cpu"]`` plus ``"cuda"`` when a GPU is visible; else the listed ones."""
    import torch

    if text == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = parse_choices(text, ("cpu", "cuda"), "device")
    if "cuda" in devices and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch.cuda.is_available() is False")
    return devices


def write_json(path: Path, doc: dict) -> None:
    """Atomic write (a crash never leaves half a JSON behind); NaN is refused."""
    atomic.write_json(path, doc, indent=1)


def write_text(path: Path, text: str) -> None:
    atomic.write_text(path, text)


# ----------------------------------------------------------------------------- subprocess
def child_env(threads: int) -> dict:
    """Environment of a measuring child: pinned thread counts, quiet libraries."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_point(module: str, args: list[str], timeout: float, threads: int) -> dict:
    """Run ``python -m module args`` and return its JSON line, or a failure record.

    Returns ``{"status": "ok", ...}`` as printed by the child, or ``{"status": "timeout" |
    "failed", "reason": ..., "wall_s": ...}``.
    """
    cmd = [sys.executable, "-m", module, *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(threads))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"no result within the {timeout:g} s limit",
                "wall_s": round(time.perf_counter() - t0, 3)}
    wall = round(time.perf_counter() - t0, 3)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        result = json.loads(lines[-1])
        result["wall_s"] = wall
        return result
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        why = f"killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        err = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = err[-1] if err else f"exit status {proc.returncode}"
    return {"status": "failed", "reason": why[:300], "wall_s": wall}


def set_malloc_mmap_threshold(n_bytes: int) -> None:
    """Fix glibc's mmap threshold at ``n_bytes`` (``mallopt(M_MMAP_THRESHOLD)``): every
    allocation at least that large is mapped on its own and unmapped when freed, instead of
    being carved from the heap, which cannot shrink past live blocks. This also switches
    off glibc's *dynamic* threshold (which rises to 32 MiB after the first large free).
    It trades page faults (time) for less heap fragmentation (peak RSS)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(-3, ctypes.c_int(n_bytes))  # -3: M_MMAP_THRESHOLD in glibc's malloc.h
    except (OSError, AttributeError) as err:
        raise RuntimeError(f"--malloc-mmap-threshold needs glibc's mallopt ({name or 'no C library found'}): {err}")
    if ok != 1:
        raise RuntimeError(f"mallopt(M_MMAP_THRESHOLD, {n_bytes}) was refused (glibc allows at most 32 MiB)")


def limit_address_space(limit_bytes: int) -> None:
    """RLIMIT_AS in a CPU child: an allocation past the limit raises instead of inviting
    the OOM killer onto the machine. (Not for CUDA: the driver maps huge address ranges.)"""
    if limit_bytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit_bytes = min(limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "cannot allocate memory" in text or "failed to allocate" in text


# ----------------------------------------------------------------------------- measurement
def peak_rss_bytes() -> int:
    """High-water resident set size of this process (``ru_maxrss``: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class StepTimer:
    """Times individual calls; CUDA events on a GPU (no host sync inside the loop), else
    ``perf_counter``. ``with timer: ...`` once per timed call, then :meth:`seconds`."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self._events: list = []
        self._times: list[float] = []
        self._torch = torch

    def __enter__(self):
        if self.cuda:
            start = self._torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append([start, None])
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            end = self._torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1][1] = end
        else:
            self._times.append(time.perf_counter() - self._t0)
        return False

    def seconds(self) -> list[float]:
        if self.cuda:
            self._torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1e3 for s, e in self._events]
        return list(self._times)


def summarize(times: list[float]) -> dict:
    """Median / min / max / mean of per-call seconds."""
    s = sorted(times)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median_s": median, "min_s": s[0], "max_s": s[-1], "mean_s": sum(s) / n, "n": n}


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def device_label(device: str) -> str:
    """``cpu`` or ``cuda (NVIDIA H100 80GB HBM3)``: the label of a result row."""
    import torch

    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def child_main(measure, args) -> int:
    """Body of a measuring child process: cap its address space (CPU), run
    ``measure(args)``, turn running out of memory into a recorded result, print one JSON
    line."""
    import json

    if args.device == "cpu":
        limit_address_space(args.mem_limit)
    try:
        result = measure(args)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        result = {"status": "oom", "reason": f"out of memory: {str(err).splitlines()[0][:200]}"}
    print(json.dumps(result), flush=True)
    return 0
