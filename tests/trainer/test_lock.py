"""One trainer per run directory (issue 23): ``lmn train`` holds ``RUN/lmn-run.lock``; a
second trainer, ``--force`` or ``--resume`` on a live run is refused in one line naming the
holder; a lock left by a dead process is taken over; the lock goes at exit, errors
included."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmn.trainer import preset_config, train
from lmn.trainer.lock import LOCK_FILE, RunLock, RunLocked, lock_holder
from tests.lmn_testdata import TINY_TRAIN_ARGS as TINY
from tests.lmn_testdata import run_cli, small_corpus


def first_line(err: str) -> str:
    return err.strip().splitlines()[0] if err.strip() else ""


def _tiny_run(tmp_path, name="run", **overrides):
    settings = dict(max_iters=2, eval_interval=2, eval_iters=1, block_size=16, batch_size=2, whole_val=False,
                    model_config={"d_model": 8, "n_layers": 1})
    cfg = preset_config("smoke", data=str(small_corpus(tmp_path)), out_dir=str(tmp_path / name),
                        **{**settings, **overrides})
    train(cfg, stream=open(os.devnull, "w"))
    return Path(cfg.out_dir)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- the lock itself
def test_a_lock_excludes_a_second_holder_and_goes_with_release(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert not second.acquire(create=False)  # no lock file: nothing taken, nothing written
    assert not (tmp_path / LOCK_FILE).exists()
    assert first.acquire() and first.held
    holder = lock_holder(tmp_path)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with pytest.raises(RunLocked, match=f"in use by another lmn train \\(pid {os.getpid()} on host"):
        second.acquire()  # another open file: excluded even within one process
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    first.release()  # twice: nothing
    with second:
        assert second.acquire()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_file_is_taken_over(tmp_path):
    """The file alone does not hold a run; a flock does. A record of a dead process, of a
    live one that holds no flock (this test's parent), or no record at all is stale."""
    for record in ({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"},
                   {"pid": os.getppid(), "host": socket.gethostname(), "started": "then"}, None):
        (tmp_path / LOCK_FILE).write_text("" if record is None else json.dumps(record))
        lock = RunLock(tmp_path)
        assert lock.acquire(create=False)
        assert lock_holder(tmp_path)["pid"] == os.getpid()
        lock.release()
        assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_unlinked_between_open_and_flock_is_not_held(tmp_path, monkeypatch):
    """A holder releasing (unlink, then close) while another trainer has the file open: the
    other's flock then succeeds on a file that is no longer the lock's, so it must try again
    on the path's new file instead of believing it holds the run."""
    import fcntl

    import lmn.trainer.lock as lockmod

    holder = RunLock(tmp_path)
    holder.acquire()
    real_flock, calls = fcntl.flock, []

    def flock_after_release(fd, op):
        if not calls:
            calls.append(fd)
            holder.release()  # between this trainer's open and its flock
        return real_flock(fd, op)

    monkeypatch.setattr(lockmod.fcntl, "flock", flock_after_release)
    other = RunLock(tmp_path)
    assert other.acquire()
    assert os.path.samestat(os.fstat(other._fd), os.stat(tmp_path / LOCK_FILE))  # the file at the path
    other.release()


# ----------------------------------------------------------------------------- two real trainers
def test_a_second_trainer_force_or_resume_on_a_live_run_is_refused(tmp_path, capsys):
    corpus = small_corpus(tmp_path)
    out, log = tmp_path / "run", tmp_path / "first.log"
    argv = ["train", *TINY, "--data", corpus, "--out", out, "--max-iters", 100_000, "--ckpt-interval", 50,
            "--eval-interval", 100_000, "--log-interval", 50]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        first = subprocess.Popen([sys.executable, "-m", "lmn.cli", *map(str, argv)], stdout=f, stderr=f, env=env)
    try:
        deadline = time.monotonic() + 180
        while not ((lock_holder(out) or {}).get("pid") == first.pid and (out / "checkpoints").is_dir()):
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first trainer did not take the lock:\n" + log.read_text()
            time.sleep(0.05)
        holder = f"pid {first.pid} on host {socket.gethostname()}, started {lock_holder(out)['started']}"
        # a second trainer (a real process) on the same --out
        second = subprocess.run([sys.executable, "-m", "lmn.cli", *map(str, argv)], capture_output=True, text=True,
                                env=env, timeout=180)
        assert second.returncode == 2, second.stderr
        assert first_line(second.stderr) == (f"lmn train: error: {out} is in use by another lmn train ({holder}); "
                                             "wait for it to end, or stop it, then try again")
        assert len(second.stderr.strip().splitlines()) == 1
        for flags in (["--force", *TINY, "--data", corpus], ["--resume"]):
            status, _, err = run_cli(capsys, "train", "--out", out, *flags, "--max-iters", 100_000)
            assert status == 2 and len(err.strip().splitlines()) == 1, (flags, err)
            assert first_line(err) == first_line(second.stderr), flags
        assert first.poll() is None  # untouched: still training
        assert lock_holder(out)["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed outright: its lock file stays, held by nobody -- the next trainer takes it over
    assert (out / LOCK_FILE).is_file() and lock_holder(out)["pid"] == first.pid
    status, _, err = run_cli(capsys, "train", "--out", out, "--force", *TINY, "--data", corpus, "--max-iters", 2)
    assert status == 0, err
    assert not (out / LOCK_FILE).exists()
    assert json.loads((out / "final.json").read_text())["step"] == 2


def test_a_lock_left_by_a_dead_process_is_taken_over_by_resume(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    (run / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}))
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 3)
    assert status == 0, err
    assert not (run / LOCK_FILE).exists()
    assert json.loads((run / "final.json").read_text())["step"] == 3


def test_the_lock_is_released_on_errors_and_never_made_in_a_foreign_directory(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--lr", "0.5")  # refused: another config
    assert status == 2 and "lr" in err
    assert not (run / LOCK_FILE).exists()
    status, _, err = run_cli(capsys, "train", "--out", run, "--max-iters", 4)  # refused: holds a run already
    assert status == 2 and "--resume" in err
    assert not (run / LOCK_FILE).exists()
    held = RunLock(run)
    held.acquire()
    try:  # while held, the other refusal reasons are not reached: the holder is named first
        status, _, err = run_cli(capsys, "train", "--out", run, "--max-iters", 4)
        assert status == 2 and "in use by another lmn train" in err
    finally:
        held.release()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    status, _, err = run_cli(capsys, "train", *TINY, "--data", small_corpus(tmp_path), "--out", mine)
    assert status == 2 and "not an lmn run" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_directory_holding_only_a_stale_lock_is_an_empty_one(tmp_path, capsys):
    """What a trainer killed right after making the directory leaves: a lock file alone."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}))
    status, _, err = run_cli(capsys, "train", *TINY, "--data", small_corpus(tmp_path), "--out", out,
                             "--max-iters", 2, "--eval-interval", 2)
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "final.json", "lmn-run.json",
                                                     "metrics.jsonl", "tokenizer.json"]


@pytest.mark.slow
def test_under_ddp_process_0_holds_the_lock_and_a_refusal_stops_every_process(tmp_path):
    """Two processes (torchrun, gloo) on a run another trainer holds: process 0 is refused,
    process 1 stops with it (no hang at a barrier); unheld, the two train and only one lock
    file ever exists, gone at the end."""
    import torch

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    run = _tiny_run(tmp_path, batch_size=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lmn.cli",
           "train", "--out", str(run), "--resume", "--max-iters", "3", "--threads", "1"]
    with RunLock(run) as held:
        held.acquire()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert proc.returncode != 0
        assert f"lmn train: error: {run} is in use by another lmn train (pid {os.getpid()}" in proc.stderr
        assert "process 0 stopped with an error" in proc.stderr, proc.stderr[-3000:]
    assert not (run / LOCK_FILE).exists()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "final.json").read_text())["step"] == 3 and not (run / LOCK_FILE).exists()
