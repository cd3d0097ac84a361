"""What the runners share: train one arm (or skip it when finished), read a run back,
and the equivalent ``lmn train`` command line of a config."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from lmn.trainer import TrainConfig, train
from lmn.trainer.config import cli_flags

FINAL, CONFIG, METRICS = "final.json", "config.json", "metrics.jsonl"


def command_line(cfg: TrainConfig) -> str:
    """The ``lmn train`` command that trains ``cfg`` (every field that differs from the
    defaults), so each arm can be rerun by hand."""
    args = ["lmn", "train", "--model", cfg.model]
    args += cli_flags(cfg.to_dict(), TrainConfig(model=cfg.model).to_dict(),
                      skip=("model", "out_dir", "model_config", "task_options", "threads"))
    for key, value in cfg.task_options.items():
        args += ["--task-opt", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    for key, value in cfg.model_config.items():
        args += ["--model-opt", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    args += ["--out", cfg.out_dir]
    return " ".join(shlex.quote(a) for a in args)


def run_arm(cfg: TrainConfig, log=None) -> dict:
    """Train ``cfg`` into ``cfg.out_dir`` unless a finished run with the same configuration
    is there (then its final.json is returned); an unfinished one is resumed."""
    log = log if log is not None else sys.stderr
    out = Path(cfg.out_dir)
    if (out / FINAL).is_file() and (out / CONFIG).is_file():
        saved = json.loads((out / CONFIG).read_text())["train"]
        mine = cfg.to_dict()
        same = all(saved.get(k) == v for k, v in mine.items() if k not in ("model_config", "threads"))
        same = same and all(saved["model_config"].get(k) == v for k, v in cfg.model_config.items())
        if same:
            print(f"[skip] {out} is finished", file=log, flush=True)
            return json.loads((out / FINAL).read_text())
        raise ValueError(f"{out} holds a finished run of another configuration; remove it or pick another --runs-dir")
    torch.set_num_threads(max(cfg.threads, 1))
    print(f"[run] {command_line(cfg)}", file=log, flush=True)
    t0 = time.perf_counter()
    summary = train(cfg, resume=out.exists() and any(out.iterdir()), stream=log)
    print(f"[done] {out} in {time.perf_counter() - t0:.0f}s", file=log, flush=True)
    return summary


def read_run(run_dir: Path) -> dict | None:
    """A run's config, final summary (None while unfinished) and eval records."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        return None
    records = []
    if (run_dir / METRICS).is_file():
        records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    final = json.loads((run_dir / FINAL).read_text()) if (run_dir / FINAL).is_file() else None
    return {"config": json.loads((run_dir / CONFIG).read_text()), "final": final,
            "evals": [r for r in records if r["type"] == "eval"]}
