"""Run records: what qualifies a number lmn writes down.

The one home for the commit (and whether the tree was dirty), the machine, the thread
counts, the library versions and the header on top of every result JSON. The trainer's
run records (``final.json``), the benchmarks and the probes all read these from here.

Only the standard library at import time; torch is imported inside the functions that
need it, so a driver can describe the machine before any model is built.

``machine_info`` has one set of keys (see its docstring). Run records written before
this module kept the CPU under ``"cpu"`` and the GPU under ``"gpu"``; :func:`cpu_name`
and :func:`gpu_name` read both the old and the current keys.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1


def git_commit(path: str | os.PathLike | None = None) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default:
    this package); ``{"commit": None, "dirty": None}`` outside a git checkout. ``dirty``
    counts tracked files only (untracked files do not change what ran)."""
    here = Path(path).resolve() if path is not None else Path(__file__).resolve().parent
    if here.is_file():
        here = here.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def package_version(dist: str) -> str | None:
    """Installed version of the distribution ``dist``; ``None`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def library_versions(packages=()) -> dict:
    """``{"lmn": ..., "torch": ..., PACKAGE: ...}``: lmn, torch and each module named in
    ``packages`` (imported, its ``__version__``), for a run's records."""
    import importlib

    import torch

    from . import __version__

    out = {"lmn": __version__, "torch": torch.__version__}
    for package in packages:
        out[package] = importlib.import_module(package).__version__
    return out


def thread_counts() -> dict:
    """torch's intra- and inter-op thread counts and the thread variables of the environment."""
    import torch

    return {
        "torch": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        **{var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }


def machine_info(threads: int | None = None, devices: list[str] | None = None) -> dict:
    """Everything that qualifies a timing: machine, versions, threads, devices.

    Keys (always all of them): ``platform``, ``machine``, ``cpu_model``, ``cpu_count``,
    ``cpu_usable``, ``memory_bytes``, ``python``, ``torch``, ``transformers``,
    ``mambapy``, ``threads``, ``devices``, ``cuda`` (``None``, or ``{"version",
    "device_name"}`` when CUDA is among ``devices`` and available). ``threads`` defaults
    to torch's thread count; ``devices`` to ``["cpu"]`` plus ``"cuda"`` when a GPU is
    visible."""
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_bytes": _total_memory(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "mambapy": package_version("mambapy"),
        "threads": threads,
        "devices": list(devices),
        "cuda": None,
    }
    if "cuda" in devices and torch.cuda.is_available():
        info["cuda"] = {"version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0)}
    return info


def cpu_name(machine: dict) -> str | None:
    """The CPU of a ``machine`` record, current (``cpu_model``) or older (``cpu``) keys."""
    return machine.get("cpu_model") or machine.get("cpu")


def gpu_name(machine: dict) -> str | None:
    """The GPU of a ``machine`` record, current (``cuda.device_name``) or older (``gpu``) keys."""
    return (machine.get("cuda") or {}).get("device_name") or machine.get("gpu")


def header(bench: str, command: str, threads: int, devices: list[str], settings: dict) -> dict:
    """The top of every result JSON."""
    return {
        "bench": bench,
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "argv": sys.argv,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(),
        "machine": machine_info(threads, devices),
        "settings": settings,
    }
