"""Kill a training run at random moments, again and again: it always resumes, always loads,
and ends exactly where an uninterrupted run ends (issue 10).

A tiny LMN with a checkpoint every step is started with ``lmn train``, SIGKILLed after a
seeded random delay (during start-up, evaluation, a step, or a checkpoint save), resumed
with ``lmn train --resume`` and killed again, 20+ times; then resumed runs get two SIGINTs
in quick succession (the second one lands in the save the first one asked for) several
times. After every kill the run directory must load (``load_run``, newest checkpoint intact,
no fallback needed) or, before its first checkpoint, say so; the finished run must equal an
uninterrupted one record for record and weight for weight, and ``lmn generate`` must load it.

Start-up (python + torch import) would dominate, so every run is a child forked from a
``multiprocessing`` fork server that has torch and lmn imported already: a process that
starts in milliseconds, but is still a real process with its own files, killed for real.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

KILLS = 20  # SIGKILLs, the first one of the first run, the rest of resumed ones
DOUBLE_INTERRUPTS = 5
MAX_ITERS = 150
SEED = 20260527


def _cli_child(argv: list[str], log: str) -> None:
    """Body of a forked child: ``lmn ARGV`` with its output appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.write(fd, b"[child running]\n")  # past multiprocessing's bootstrap: a SIGINT now reaches lmn
    from lmn.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    try:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(int(status or 0))


def _corpus(tmp_path: Path) -> Path:
    """6,000 characters of seeded pseudo-words (no data download needed)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(1, 7))) for _ in range(60)]
    text = ""
    while len(text) < 6000:
        text += rng.choice(words) + rng.choice("  \n,.")
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ctx():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "safetensors.torch", "lmn.cli", "lmn.trainer", "lmn.tasks.text",
                                "test_kill"])
    return ctx


def _start(ctx, argv, log):
    log.write_text(" ".join(map(str, argv)) + "\n")
    p = ctx.Process(target=_cli_child, args=([str(a) for a in argv], str(log)), daemon=True)
    p.start()
    return p


def _finish(p, log, timeout=120.0) -> int:
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        pytest.fail(f"a run did not end within {timeout} s; its output:\n{log.read_text()[-3000:]}")
    return p.exitcode


def _wait_for_kill_point(rng, p, log: Path, startup: bool = True) -> None:
    """Wait for a seeded random moment of the child's life: a quarter of the time during its
    start-up (bootstrap, setup, loading the checkpoint, the first save), otherwise a few
    ms after its n-th training step (n = 0..4: at most a few steps per child whatever
    the machine's speed), which lands in evaluations, steps and checkpoint saves."""
    if startup and rng.random() < 0.25:
        p.join(rng.uniform(0.0, 0.3))
        return
    n = rng.randint(0, 4)
    deadline = time.monotonic() + 60
    while p.exitcode is None and time.monotonic() < deadline:
        text = log.read_text()
        if "[child running]" in text and sum(line.startswith("step ") for line in text.splitlines()) >= n:
            break
        time.sleep(0.002)
    p.join(rng.uniform(0.0, 0.03))


def _records(run: Path) -> dict:
    from lmn.trainer import read_metrics

    out = {}
    for r in read_metrics(run):
        out.setdefault(r["type"], []).append({k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")})
    return out


def _check_loadable(run: Path) -> int | None:
    """After a kill: the run loads from its newest checkpoint, or has none yet and says so.
    Returns the newest checkpoint's step."""
    from lmn.trainer import CheckpointError, list_checkpoints, load_run, newest_checkpoint

    if not (run / "config.json").is_file():
        assert not list_checkpoints(run) if run.is_dir() else True
        return None
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        with pytest.raises(CheckpointError, match="no checkpoint yet"):
            load_run(run)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damaged checkpoint to pass over: every commit was whole
        assert newest_checkpoint(run, need_state=True) == checkpoints[0]
        load_run(run)
    from lmn.trainer.rundir import _verify

    for c in checkpoints:  # a step directory is complete or absent, never half-written or half-deleted
        _verify(c, need_state=True)
    return checkpoints[0].step


TINY_LMN = ("--model-opt", "d_model=8", "--model-opt", "n_layers=1", "--model-opt", "n_heads=2")


def test_kill_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path, ctx):
    # LMN_KILL_SEED / LMN_KILL_ARGS (e.g. "--model gpt2 --ckpt-interval 3") try other loops by hand
    extra = os.environ.get("LMN_KILL_ARGS", "").split()
    kill_loop(ctx, tmp_path, int(os.environ.get("LMN_KILL_SEED", SEED)), [*(TINY_LMN if not extra else ()), *extra])


def kill_loop(ctx, tmp_path: Path, seed: int, model_args) -> None:
    t_start = time.perf_counter()
    corpus = _corpus(tmp_path)
    run, ref, log = tmp_path / "run", tmp_path / "ref", tmp_path / "log.txt"

    def command(out):
        return ["train", "--preset", "smoke", "--data", corpus, "--out", out, "--block-size", 16, "--batch-size", 2,
                "--eval-interval", 7, "--eval-iters", 1, "--ckpt-interval", 1, "--log-interval", 1,
                "--max-iters", MAX_ITERS, "--threads", 1, "--seed", 5, *model_args]

    def resume():
        # `--resume --out RUN` reads the run's own config; before config.json exists the
        # original command (with --resume) starts it at step 0.
        return ["train", "--out", run, "--resume"] if (run / "config.json").is_file() else [*command(run), "--resume"]

    assert _finish(_start(ctx, command(ref), log), log) == 0, log.read_text()[-3000:]
    t_ref = time.perf_counter() - t_start

    rng = random.Random(seed)
    kills, finished_early, steps_seen = 0, 0, []
    argv = command(run)
    while kills < KILLS:
        p = _start(ctx, argv, log)
        _wait_for_kill_point(rng, p, log)
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        status = _finish(p, log)
        assert status in (0, -signal.SIGKILL), f"exit {status}:\n{log.read_text()[-3000:]}"
        finished_early += status == 0
        steps_seen.append(_check_loadable(run))
        argv = resume()
    assert finished_early == 0, "the run finished before all kills: raise MAX_ITERS"

    interrupts = 0
    while interrupts < DOUBLE_INTERRUPTS:
        p = _start(ctx, resume(), log)
        _wait_for_kill_point(rng, p, log, startup=False)  # a SIGINT before lmn runs is multiprocessing's
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGINT)
            time.sleep(rng.uniform(0.0, 0.03))  # the second one mostly lands in the checkpoint save
            if p.exitcode is None:
                os.kill(p.pid, signal.SIGINT)
            interrupts += 1
        status = _finish(p, log)
        assert status in (0, 130), f"exit {status}:\n{log.read_text()[-3000:]}"
        steps_seen.append(_check_loadable(run))

    assert _finish(_start(ctx, resume(), log), log) == 0, log.read_text()[-3000:]
    elapsed = time.perf_counter() - t_start
    print(f"{kills} SIGKILLs + {interrupts} double SIGINTs, checkpoints at {steps_seen}; reference run "
          f"{t_ref:.1f} s, all {elapsed:.1f} s")

    # The finished run is the uninterrupted one: every record and every weight.
    got, want = _records(run), _records(ref)
    assert got["train"] == want["train"] and got["final"] == want["final"]
    assert {r["step"]: r for r in got["eval"]} == {r["step"]: r for r in want["eval"]}
    from lmn.trainer import load_run

    a, b = load_run(run)[0].state_dict(), load_run(ref)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    final = {k: v for k, v in json.loads((run / "final.json").read_text()).items()
             if k.startswith(("final_", "whole_"))}
    assert final == {k: v for k, v in json.loads((ref / "final.json").read_text()).items()
                     if k.startswith(("final_", "whole_"))}
    # Nothing a killed writer left behind survives the last session's start.
    leftovers = [p.name for d in (run, run / "checkpoints") for p in d.iterdir() if p.name.startswith(".")]
    assert leftovers == []

    if json.loads((run / "config.json").read_text())["train"]["model"] == "lmn":  # generate streams LMN runs
        from lmn.cli import main

        assert main(["generate", "--checkpoint", str(run), "--tokens", "20", "--seed", "0"]) == 0
