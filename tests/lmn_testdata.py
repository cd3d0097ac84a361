"""What the tests share: where they find Tiny Shakespeare ($LMN_DATA_DIR, else
<repo>/../shared/data), a small corpus cut from it, and running the ``lmn`` command in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shakespeare_path() -> Path:
    data_dir = os.environ.get("LMN_DATA_DIR") or str(REPO.parent / "shared" / "data")
    return Path(data_dir) / "tinyshakespeare.txt"


def require_shakespeare() -> Path:
    path = shakespeare_path()
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path}; set LMN_DATA_DIR to the directory holding tinyshakespeare.txt")
    return path


def small_corpus(tmp_path: Path, n_chars: int = 20_000) -> Path:
    """The first ``n_chars`` characters of Tiny Shakespeare as a corpus of its own."""
    text = require_shakespeare().read_text(encoding="utf-8")[:n_chars]
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


# `lmn train` options of a run that takes a second (add --data, --out, --max-iters)
TINY_TRAIN_ARGS = ["--preset", "smoke", "--block-size", "16", "--batch-size", "2", "--eval-iters", "1",
                   "--no-whole-val", "--model-opt", "d_model=8", "--model-opt", "n_layers=1", "--threads", "1"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``lmn ARGV`` run in this process (``capsys``: pytest's)."""
    from lmn.cli import main

    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def kill_while_writing(argv, started, what: str) -> int:
    """Run ``lmn ARGV`` in a subprocess whose ``os.fsync`` never returns, wait until
    ``started(pid)`` says its output is being written, SIGKILL it there; returns the pid."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import os, sys, time; os.fsync = lambda fd: time.sleep(600); "
            "from lmn.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not started(proc.pid):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"{what} never started writing"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def one_line_error(status: int, err: str, *needles: str) -> None:
    """``lmn`` exited 2 with one line on stderr (no traceback) that names every needle."""
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def run_records(run: Path, kind: str) -> list[dict]:
    """The ``kind`` records of a run's metrics.jsonl, without their timing fields."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rows if r["type"] == kind]

