"""Peak resident memory of ``lmn data prepare`` and of ``lmn train --dataset`` against the
size of the corpus: does training hold only its windows?

For each size S (MB) this writes a generated corpus of S MB (lowercase words and newlines
from a seeded generator, one text file), prepares it with ``--tokenizer bytes`` (uint8
shards) and trains a tiny LMN from it for a few steps, each command in a fresh process
whose peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) it reports. Holding the
corpus would add S MB (its uint8 ids) or 8 S MB (int64 ids) to training's peak.

    python -m research.dataset_rss --sizes 8,200,1000 --text-sizes 8,200 --work /tmp/rss \
        --out docs/results/real_data_rss.json

The defaults of the training command: ``--preset smoke`` at d_model 16, 2 layers, block 256,
batch 16, 30 steps, an estimate every 10 steps on 8 batches per split, and the whole
validation split evaluated at the end (``--whole-val``; every validation token is read
once), with ``--val-frac 0.01`` so that the whole-split pass stays short.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20
TRAIN_ARGS = ["--preset", "smoke", "--model-opt", "d_model=16", "--model-opt", "n_layers=2", "--block-size", "256",
              "--batch-size", "16", "--max-iters", "30", "--eval-interval", "10", "--eval-iters", "8",
              "--ckpt-interval", "30", "--whole-val", "--threads", "1"]
PREPARE_ARGS = ["--tokenizer", "bytes", "--val-frac", "0.01", "--quiet"]

# Runs `lmn ARGV` in this process and prints its peak RSS (KiB on Linux) as the last line.
_RUNNER = ("import resource, sys\n"
           "from lmn.cli import main\n"
           "status = main(sys.argv[1:])\n"
           "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
           "sys.exit(status)\n")


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """``megabytes`` MB (10^6 bytes) of lowercase letters, spaces and newlines, written in
    pieces of 8 MB (this process never holds more); returns the size."""
    rng = np.random.default_rng(seed)
    table = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz" + b"eeeaaoo" + b" " * 6 + b"\n", dtype=np.uint8)
    total, left = int(megabytes * 1e6), int(megabytes * 1e6)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        while left:
            n = min(left, 8 * 10**6)
            f.write(table[rng.integers(0, len(table), n)].tobytes())
            left -= n
    return total


def run_lmn(argv: list[str]) -> tuple[float, float]:
    """``(peak RSS in MiB, wall seconds)`` of ``lmn ARGV`` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"lmn {' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("peak_rss_kib")][-1]
    return int(last.split()[1]) / 1024, wall


# The text task on the same file, for comparison: it reads the corpus and holds its ids.
TEXT_ARGS = ["--task-opt", "tokenizer=bytes", "--train-frac", "0.99"]


def measure(work: Path, megabytes: float, train_args=TRAIN_ARGS, text_task: bool = False) -> dict:
    """Write, prepare and train on a corpus of ``megabytes`` MB under ``work``; the figures.
    ``text_task``: also train with ``--data`` on the same file (the same split and batches)."""
    work = Path(work)
    corpus, ds, run = work / "corpus.txt", work / "ds", work / "run"
    size = write_corpus(corpus, megabytes)
    prep_rss, prep_s = run_lmn(["data", "prepare", corpus, "--out", ds, *PREPARE_ARGS, "--force"])
    manifest = json.loads((ds / "manifest.json").read_text())
    train_rss, train_s = run_lmn(["train", "--dataset", ds, "--out", run, "--force", *train_args])
    final = json.loads((run / "final.json").read_text())
    row = {"corpus_mb": size / 1e6, "train_tokens": manifest["splits"]["train"]["tokens"],
           "val_tokens": manifest["splits"]["val"]["tokens"], "dtype": manifest["dtype"],
           "prepare_peak_rss_mib": round(prep_rss, 1), "prepare_s": round(prep_s, 1),
           "train_peak_rss_mib": round(train_rss, 1), "train_s": round(train_s, 1),
           "whole_val_tokens": final.get("whole_val_tokens"), "whole_val_loss": final.get("whole_val_loss"),
           "steps": final["step"]}
    if text_task:
        text_rss, text_s = run_lmn(["train", "--data", corpus, "--out", work / "text-run", "--force", *TEXT_ARGS,
                                    *train_args])
        text_final = json.loads((work / "text-run" / "final.json").read_text())
        row.update(text_task_peak_rss_mib=round(text_rss, 1), text_task_s=round(text_s, 1),
                   text_task_whole_val_loss=text_final.get("whole_val_loss"))
    return row


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    try:
        mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / MIB
        mem = f", {mem:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.dataset_rss", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8,200", help="corpus sizes in MB, comma-separated (default 8,200)")
    p.add_argument("--text-sizes", default="", help="sizes at which the text task (--data) trains on the same file "
                   "too, for comparison (default none; it holds the corpus: about 10 bytes of memory per byte)")
    p.add_argument("--work", required=True, help="scratch directory (corpora, datasets, runs; deleted per size)")
    p.add_argument("--out", default=None, help="JSON file for the figures (default: print them)")
    args = p.parse_args(argv)
    import shutil

    rows = []
    text_sizes = {float(s) for s in args.text_sizes.split(",") if s}
    for mb in [float(s) for s in args.sizes.split(",")]:
        work = Path(args.work) / f"{mb:g}MB"
        rows.append(measure(work, mb, text_task=mb in text_sizes))
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    doc = {"machine": machine(), "prepare": ["lmn", "data", "prepare", "CORPUS", "--out", "DS", *PREPARE_ARGS],
           "train": ["lmn", "train", "--dataset", "DS", "--out", "RUN", *TRAIN_ARGS],
           "text_task": ["lmn", "train", "--data", "CORPUS", "--out", "RUN", *TEXT_ARGS, *TRAIN_ARGS], "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    else:
        print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
