"""The tables of ``docs/results/memory.md``: probe results of LMN's memory mechanisms beside
the peers, read from ``lmn probe`` result files (issue 21, items 3 and 5).

Each table is one probe task; each row one model (an arm), from whichever of the given
JSON files holds it, with its runs' budget, lr, seeds, test accuracy (mean ± sample std
over seeds), accuracy per distance bucket, parameters, state, time per step and the file it
came from. Files of one task must share the steps, batch size and evaluation settings
(checked); their lrs may differ and are listed per row. Where a file swept lrs, only the
runs at the lr it chose (its ``chosen_lr``) are read.

    python -m research.memory_report --out docs/results/memory/tables.md \\
        --task passkey docs/results/probes/passkey-long.json docs/results/memory/passkey-a.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SAME = ("steps", "batch_size", "eval_interval", "eval_iters", "model_size", "task_options", "weight_decay")


def _fmt_bytes(n) -> str:
    return "" if n is None else f"{n / 1024:.1f} KiB"


def rows_of(paths: list[str]) -> tuple[list[dict], dict]:
    """One row per model label over the files (runs of one label pooled over seeds)."""
    budget, rows, by_label = None, [], {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        b = {k: doc["budget"].get(k) for k in SAME}
        if budget is None:
            budget = b
        elif b != budget:
            diff = {k: (budget[k], b[k]) for k in SAME if budget[k] != b[k]}
            raise SystemExit(f"{path}: another budget than the first file's: {diff}")
        chosen = doc.get("chosen_lr") or {}
        for r in doc["runs"]:
            label = r["model"]
            cell = "|".join(f"{k}={v}" for k, v in r["cell"].items()).replace("|", ",")
            pick = chosen.get(label, {}).get(cell)
            if pick is not None and r["lr"] != pick:
                continue  # a run of the lr sweep the probe did not choose
            row = by_label.get(label)
            if row is None:
                cell = "|".join(f"{k}={v}" for k, v in r["cell"].items())
                state = doc.get("state", {}).get(f"{label}|{cell}", {})
                row = {"model": label, "params": r["params"], "lrs": set(), "runs": [], "source": path,
                       "state_bytes": state.get("state_bytes_max"), "slots": state.get("slots")}
                by_label[label] = row
                rows.append(row)
            if any(x["seed"] == r["seed"] and x["lr"] == r["lr"] for x in row["runs"]):
                continue  # (the same run in two files)
            row["runs"].append(r)
            row["lrs"].add(r["lr"])
    return rows, budget or {}


def render(task: str, rows: list[dict], budget: dict) -> str:
    buckets = sorted({k for row in rows for r in row["runs"] for k in r["test"] if k.startswith("accuracy@")},
                     key=lambda k: int(k.split("@")[1]))
    head = ["model", "params", "state (max ≤ T)", "lr", "seeds", "test accuracy", *[b.split("accuracy")[1] for b in buckets],
            "val loss", "s/step", "from"]
    lines = [f"### {task}", "",
             f"Budget: {budget.get('steps')} steps, batch {budget.get('batch_size')}, task options "
             f"{json.dumps(budget.get('task_options'))}, model size `{budget.get('model_size')}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        runs = row["runs"]
        acc = [r["test"]["accuracy"] for r in runs]
        mean = statistics.fmean(acc)
        spread = f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
        per = [statistics.fmean(r["test"][b] for r in runs) if all(b in r["test"] for r in runs) else None for b in buckets]
        val = statistics.fmean(r["final_val_loss"] for r in runs)
        sps = statistics.fmean(r["s_per_step"] for r in runs)
        cells = [f"`{row['model']}`", f"{row['params']:,}", _fmt_bytes(row["state_bytes"]),
                 ",".join(f"{x:g}" for x in sorted(row["lrs"])), ",".join(str(r["seed"]) for r in runs),
                 f"{mean:.3f}{spread}", *["" if p is None else f"{p:.2f}" for p in per], f"{val:.3f}", f"{sps:.3f}",
                 Path(row["source"]).name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.memory_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", action="append", nargs="+", required=True, metavar=("TASK", "JSON"),
                   help="a table: its title, then the probe result files it reads (repeatable)")
    p.add_argument("--out", required=True, help="markdown file written")
    a = p.parse_args(argv)
    parts = []
    for task, *paths in a.task:
        if not paths:
            p.error(f"--task {task}: give the result files it reads")
        rows, budget = rows_of(paths)
        parts.append(render(task, rows, budget))
    Path(a.out).write_text("\n".join(parts))
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
