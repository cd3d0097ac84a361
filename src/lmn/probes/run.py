"""``lmn probe TASK --model KIND [...]``: train and evaluate models on a synthetic task with
the shared trainer, at the registry's matched sizes, and write JSON, markdown and plots.

    lmn probe mqar --model lmn --model gpt2 --model mamba --cell block_size=64,pairs=4 \\
        --task-opt vocab=64 --lrs 3e-3,1e-2 --seeds 1,2 --steps 400 --name mqar

For every model and *cell* (a sequence length and task options, e.g. MQAR's (T, pairs)):

1. **learning-rate sweep** (as Zoology does): one run per lr in ``--lrs`` with the first
   seed; the lr with the lowest final ``val`` loss (fresh random examples, not the test set)
   is the model's lr for that cell (``--sweep first``: swept on the first cell only and
   reused for the others; ``--lr-from FILE.json``: taken from another probe's results);
2. **seeds**: the remaining ``--seeds`` at that lr;
3. every run's whole-``test`` metrics (a fixed test set from the task's ``test_seed``):
   accuracy and accuracy per bucket (distance, or length for ListOps);
4. the **state bytes** the model carries after T tokens at batch 1 (float32), read from the
   registry's decode adapter after a prefill of T tokens (LMN's tree state, Mamba's conv +
   SSM state, GPT-2's KV cache), and LMN's slots per position.

Every model gets the same budget (steps, batch size, evaluation, sweep, seeds); the JSON
records it, and adding runs to an existing result file with another budget is refused.
Results accumulate: runs already in ``OUT/NAME.json`` are skipped, so a probe can be run one
model at a time, and more seeds can be added later (same sweep seed; the table shows each
row's seeds). ``--report-only`` re-renders the markdown and plots from the JSON.

Model specs: ``KIND`` or ``KIND:KEY=VALUE,KEY=VALUE`` (fields of the kind's config on top of
``--model-size``, e.g. ``lmn:stride=3,read=digits``); ``--model-opt`` applies to all models.

The probes of trained runs (context use, attention mass per tree level, sequential
fine-tuning) are one-off studies, not installed: ``python -m research.context|levels|sequential``
from a clone's root (``research/README.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import save_figure, write_json, write_text
from ..trainer.loop import PROVENANCE

# the probes of trained runs that moved to research/ (named in the error for ``lmn probe context``)
RESEARCH_PROBES = ("context", "levels", "sequential")

# default cells per task (the full-size grids; CPU runs pass --cell)
DEFAULT_CELLS = {
    "mqar": ["block_size=64,pairs=4", "block_size=128,pairs=8", "block_size=256,pairs=16", "block_size=512,pairs=64"],
    "passkey": ["block_size=1024"],
    "distance": ["block_size=512"],
    "selective-copy": ["block_size=256"],
    "listops": ["block_size=512"],
    # real data (issue 22): T is the data's sequence length
    "sfashion-mnist": ["block_size=784"],
    "ucr": ["block_size=1460,set=ACSF1", "block_size=427,set=OSULeaf", "block_size=251,set=ArrowHead"],
}
BUDGET_KEYS = ("steps", "batch_size", "eval_interval", "eval_iters", "lrs", "seeds", "sweep", "model_size",
               "task_options", "weight_decay", "lr_from")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(text: str) -> dict:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (values as JSON literals, else strings)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {part!r} in {text!r}")
        out[key.strip()] = _value(value.strip())
    return out


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    options: tuple  # ((key, value), ...) sorted

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        kind, _, rest = text.partition(":")
        return cls(kind.strip(), tuple(sorted(_pairs(rest).items())))

    @property
    def label(self) -> str:
        if not self.options:
            return self.kind
        return f"{self.kind}[{','.join(f'{k}={v}' for k, v in self.options)}]"


# config fields that only size a model to the cell (a position table long enough for T):
# --lr-from reads a model that differs from another probe's only in these as that model
LENGTH_ONLY_OPTIONS = frozenset({"n_positions"})


def lr_for(spec: "ModelSpec", chosen: dict):
    """The lr another probe chose for ``spec`` (``{label: lr}``): its own label's, else that
    of the same model without the options that only widen a position table
    (``gpt2:n_positions=4160`` takes ``gpt2``'s); None when the other probe has neither."""
    if spec.label in chosen:
        return chosen[spec.label]
    base = ModelSpec(spec.kind, tuple((k, v) for k, v in spec.options if k not in LENGTH_ONLY_OPTIONS))
    return chosen.get(base.label)


def merge_results(doc: dict, other: dict, source: str) -> int:
    """Add ``other``'s runs (and their state records, chosen lrs and commands) to ``doc``: a
    probe run in parts (one process per model, on another machine) made whole. Both must be
    the same task with the same budget; a run already in ``doc`` is kept, not duplicated.
    Returns how many runs were added."""
    if other.get("task") != doc.get("task"):
        raise ValueError(f"--merge {source}: task {other.get('task')!r}, not {doc.get('task')!r}")
    if {**other["budget"], "seeds": None} != {**doc["budget"], "seeds": None}:
        diff = {k: (doc["budget"].get(k), other["budget"].get(k)) for k in BUDGET_KEYS
                if k != "seeds" and doc["budget"].get(k) != other["budget"].get(k)}
        raise ValueError(f"--merge {source} was made with another budget {diff}; only runs of one budget merge")
    for key in ("n_test", "test_seed"):
        if key in other and key in doc and other[key] != doc[key]:
            raise ValueError(f"--merge {source}: {key} {other[key]} differs from {doc[key]}")
        if key in other:
            doc.setdefault(key, other[key])
    doc.setdefault("bucket_name", other.get("bucket_name", "distance"))
    doc["budget"]["seeds"] = list(dict.fromkeys([*doc["budget"]["seeds"], *other["budget"]["seeds"]]))
    done = {_key(r) for r in doc["runs"]}
    added = 0
    for r in other["runs"]:
        if _key(r) not in done:
            doc["runs"].append(r)
            done.add(_key(r))
            added += 1
    for k, v in other.get("state", {}).items():
        doc["state"].setdefault(k, v)
    for model, cells in other.get("chosen_lr", {}).items():
        for cell, lr in cells.items():
            doc["chosen_lr"].setdefault(model, {}).setdefault(cell, lr)
    for c in other.get("commands", []):
        if c not in doc["commands"]:
            doc["commands"].append(c)
    return added


def cell_label(cell: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items())


# ----------------------------------------------------------------------------- measuring
def state_bytes(kind_name: str, model_config: dict, positions: int) -> dict:
    """Bytes of the decode state after ``positions`` tokens (batch 1, float32), read from
    the kind's decode adapter; LMN's slots per position too."""
    from ..kinds import get_kind

    kind = get_kind(kind_name)
    out = {}
    torch.manual_seed(0)
    model = kind.build(model_config).eval()
    with torch.no_grad():
        decoder = kind.decoder(model, 1024)
        ids = torch.zeros(1, positions, dtype=torch.long)
        for lo in range(0, positions, 1024):
            decoder.prefill(ids[:, lo : lo + 1024])
        out["state_bytes"] = int(decoder.state_bytes())
    out.update(state_bytes_max(kind_name, model_config, positions, out["state_bytes"]))
    return out


def state_bytes_max(kind_name: str, model_config: dict, positions: int, at_end: int) -> dict:
    """What a model needs to hold to read ``positions`` tokens: the largest state over
    positions 1 .. T (batch 1, fp32) where the kind predicts its state size (LMN's tree
    shrinks at every carry of its counter: after exactly 64 = 4**3 tokens a stride-4 tree
    holds one node per bank), else the state after T (fixed-size or growing states); and,
    for a tree, the slots read at T and the most slots any position < T reads."""
    from ..kinds import get_kind

    kind = get_kind(kind_name)
    out = {"state_bytes_max": int(at_end), "state_bytes_max_source": "decoder after T"}
    if kind.state_bytes is not None:
        sizes = [int(kind.state_bytes(model_config, p)) for p in range(1, positions + 1)]
        out.update(state_bytes_predicted=sizes[-1], state_bytes_max=max(max(sizes), int(at_end)),
                   state_bytes_max_source="max over positions 1..T of the kind's predicted state")
    tree = getattr(kind.config_class.from_dict(model_config), "tree", None)
    if tree is not None and hasattr(tree, "n_slots"):
        out["slots"] = int(tree.n_slots(positions - 1))  # the slots position T-1 reads, itself included
        out["slots_max"] = max(int(tree.n_slots(t)) for t in range(positions))
    return out


def fill_state(doc: dict) -> bool:
    """Add ``state_bytes_max`` (and ``slots_max``) to state records made before they
    existed; True if anything was added."""
    changed = False
    configs = {r["model"]: (r["kind"], r["model_config"]) for r in doc["runs"]}
    for key, rec in doc.get("state", {}).items():
        model, _, cell = key.partition("|")
        if "state_bytes_max" in rec or model not in configs:
            continue
        kind, config = configs[model]
        block = int(_pairs(cell).get("block_size", 512))
        rec.update(state_bytes_max(kind, config, block, rec["state_bytes"]))
        changed = True
    return changed


def train_config(task: str, spec: ModelSpec, cell: dict, lr: float, seed: int, args, runs_dir: Path):
    """The :class:`lmn.trainer.TrainConfig` of one (model, cell, lr, seed) run."""
    from ..trainer import TrainConfig

    cell_task_opts = {k: v for k, v in cell.items() if k != "block_size"}
    block_size = cell.get("block_size", 512)
    model_config = {**args.model_opts, **dict(spec.options)}
    tag = f"{spec.label}-{cell_label(cell)}-lr{lr:g}-s{seed}".replace("/", "_").replace("[", "_").replace("]", "")
    return TrainConfig(model=spec.kind, model_size=args.model_size, model_config=model_config, task=task,
                       task_options={**args.task_opts, **cell_task_opts}, block_size=block_size,
                       batch_size=args.batch_size, lr=lr, weight_decay=args.weight_decay, max_iters=args.steps,
                       eval_interval=args.eval_interval, eval_iters=args.eval_iters, ckpt_interval=max(args.steps, 1),
                       log_interval=max(1, args.steps // 10), seed=seed, threads=args.threads,
                       device=args.device, gradient_checkpointing=args.gradient_checkpointing,
                       out_dir=str(runs_dir / tag))


class _Indented:
    """The trainer's progress lines, indented under the probe's line of the run (stderr)."""

    def __init__(self, stream, indent: str = "    "):
        self.stream, self.indent, self.at_line_start = stream, indent, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.indent)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def run_one(task: str, spec: ModelSpec, cell: dict, lr: float, seed: int, args, runs_dir: Path, stream=None) -> dict:
    """Train one (model, cell, lr, seed) with the shared trainer; its record. The trainer's
    progress goes to ``stream`` (default: nowhere)."""
    from ..trainer import train

    cfg = train_config(task, spec, cell, lr, seed, args, runs_dir)
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        summary = train(cfg, force=True, stream=stream if stream is not None else null)
    wall = time.perf_counter() - t0
    config = json.loads((Path(cfg.out_dir) / "config.json").read_text())
    test = {k[len("whole_test_"):]: v for k, v in summary.items() if k.startswith("whole_test_")}
    return {"model": spec.label, "kind": spec.kind, "model_options": dict(spec.options), "cell": cell, "lr": lr,
            "seed": seed, "params": summary["params"], "model_config": config["train"]["model_config"],
            "task": config.get("task"), "final_val_loss": summary.get("final_val_loss"),
            "final_train_loss": summary.get("final_train_loss"), "test": test,
            "train_time_s": summary.get("train_time_s"), "wall_s": wall,
            "s_per_step": (summary.get("train_time_s") or 0) / max(args.steps, 1), "run_dir": cfg.out_dir,
            **{k: summary.get(k) for k in PROVENANCE}}


# ----------------------------------------------------------------------------- checks before work
def parse_lrs(text: str) -> list[float]:
    """``--lrs``: comma-separated finite numbers > 0."""
    try:
        lrs = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lrs must be comma-separated numbers such as 1e-3,3e-3, got {text!r}") from None
    bad = [lr for lr in lrs if not (lr > 0 and math.isfinite(lr))]
    if bad:
        raise ValueError(f"--lrs: every learning rate must be a finite number > 0, got {bad[0]:g} in {text!r}")
    return lrs


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated whole numbers in [0, 2**31 - 1]."""
    try:
        seeds = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated whole numbers such as 1,2, got {text!r}") from None
    bad = [s for s in seeds if not 0 <= s <= 2**31 - 1]
    if bad:
        raise ValueError(f"--seeds: every seed must be in [0, {2**31 - 1}], got {bad[0]} in {text!r}")
    return seeds


def check_all(task: str, specs: list, texts: list, cells: list, lrs: list, seeds: list, args, runs_dir: Path,
              lr_from: dict | None = None) -> None:
    """Everything a probe's runs check before they train, for every model and every cell, so
    that a bad second model fails at once instead of after the first one's runs: the
    budget, each model's options, each cell's task options and length, then each (model,
    cell): its position limit, gradient checkpointing and whether it fits in memory
    (:mod:`lmn.limits`); the lr ``--lr-from`` gives each model.

    Raises:
        ValueError: one line naming the ``--model`` or ``--cell`` at fault.
    """
    from dataclasses import replace

    from ..kinds import get_kind
    from ..limits import check_train
    from ..tasks import make_task
    from ..trainer import init_distributed, resolve_model_config
    from ..trainer.models import check_model_config, check_positions, check_requirements
    from ..validation import check_int

    for cell in cells:
        check_int(f"--cell {cell_label(cell)}: block_size", cell.get("block_size", 512), min=1)
    lr0 = lrs[0] if lrs else 1e-3  # lrs may be empty with --lr-from: said per model below
    base = train_config(task, specs[0], cells[0], lr0, seeds[0], args, runs_dir)  # the budget's own checks
    _, device = init_distributed(base.device)
    for spec, text in zip(specs, texts):
        try:
            check_requirements(spec.kind)
            check_model_config(spec.kind, {**args.model_opts, **dict(spec.options)}, args.model_size)
        except ValueError as err:
            raise ValueError(f"--model {text}: {err}") from None
        if args.gradient_checkpointing and get_kind(spec.kind).enable_checkpointing is None:
            raise ValueError(f"--model {text}: --gradient-checkpointing is not supported for model {spec.kind!r}")
        if lr_from is not None and lr_for(spec, lr_from) is None:
            raise ValueError(f"--model {text}: --lr-from {args.lr_from} has no lr for {spec.label}")
    for cell in cells:
        try:
            cell_task = make_task(train_config(task, specs[0], cell, lr0, seeds[0], args, runs_dir))
        except ValueError as err:
            raise ValueError(f"--cell {cell_label(cell)}: {err}") from None
        for spec, text in zip(specs, texts):
            cfg = train_config(task, spec, cell, lr0, seeds[0], args, runs_dir)
            try:
                cfg = replace(cfg, model_config=resolve_model_config(cfg.model, cfg.model_config,
                                                                     cell_task.vocab_size, cfg.model_size))
                check_positions(cfg.model, cfg.model_config, cell_task.seq_len)
                check_train(cfg, cell_task.seq_len, device)
            except ValueError as err:
                raise ValueError(f"--model {text} at cell {cell_label(cell)}: {err}") from None


def _parsed(parse, flag: str, text: str):
    try:
        return parse(text)
    except ValueError as err:
        raise ValueError(f"{flag} {text}: {err}") from None


def planned_runs(n_cells: int, n_lrs: int, n_seeds: int, sweep: str, lr_from) -> int:
    """Runs per model: the sweep (first seed) of each swept cell, one run of each other cell,
    and every further seed."""
    per_cell = [1 if lr_from else (n_lrs if sweep == "all" or ci == 0 else 1) for ci in range(n_cells)]
    return sum(per_cell) + n_cells * (n_seeds - 1)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- results file
def _key(r: dict) -> tuple:
    return (r["model"], cell_label(r["cell"]), float(r["lr"]), int(r["seed"]))


def load_results(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def save_results(path: Path, doc: dict) -> None:
    write_json(path, doc, indent=1)


def best_lrs(doc: dict) -> dict:
    """``{model: {cell: lr}}``: per model and swept cell, the lr of the lowest final val loss
    among the sweep runs (first seed)."""
    out: dict = {}
    seed0 = doc["budget"]["seeds"][0]
    for r in doc["runs"]:
        if r["seed"] != seed0 or float(r["lr"]) not in [float(v) for v in doc["budget"]["lrs"]]:
            continue
        cell = cell_label(r["cell"])
        cur = out.setdefault(r["model"], {}).get(cell)
        loss = r["final_val_loss"] if r["final_val_loss"] is not None else math.inf
        if cur is None or loss < cur[1]:
            out[r["model"]][cell] = (float(r["lr"]), loss)
    return {m: {c: v[0] for c, v in cells.items()} for m, cells in out.items()}


def headline(doc: dict) -> list[dict]:
    """One row per (model, cell): the runs at the chosen lr over all seeds."""
    chosen = doc.get("chosen_lr", {})
    rows = []
    seen = []
    for r in doc["runs"]:
        key = (r["model"], cell_label(r["cell"]))
        if key not in seen:
            seen.append(key)
    for model, cell in seen:
        lr = chosen.get(model, {}).get(cell)
        runs = [r for r in doc["runs"] if r["model"] == model and cell_label(r["cell"]) == cell
                and lr is not None and float(r["lr"]) == float(lr)]
        if not runs:
            continue
        accs = [r["test"]["accuracy"] for r in runs]
        buckets = sorted({int(k.split("@")[1]) for r in runs for k in r["test"] if k.startswith("accuracy@")})
        per_bucket = {}
        for b in buckets:
            vals = [r["test"][f"accuracy@{b}"] for r in runs if f"accuracy@{b}" in r["test"]]
            per_bucket[b] = statistics.fmean(vals)
        first = runs[0]
        rows.append({"model": model, "cell": first["cell"], "lr": lr, "seeds": [r["seed"] for r in runs],
                     "accuracy": statistics.fmean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
                     "accuracies": accs, "per_bucket": per_bucket, "params": first["params"],
                     "state_bytes_at_T": doc.get("state", {}).get(f"{model}|{cell}", {}).get("state_bytes"),
                     "state_bytes": doc.get("state", {}).get(f"{model}|{cell}", {}).get(
                         "state_bytes_max", doc.get("state", {}).get(f"{model}|{cell}", {}).get("state_bytes")),
                     "slots": doc.get("state", {}).get(f"{model}|{cell}", {}).get("slots"),
                     "slots_max": doc.get("state", {}).get(f"{model}|{cell}", {}).get("slots_max"),
                     "s_per_step": statistics.fmean(r["s_per_step"] for r in runs),
                     "val_loss": statistics.fmean(r["final_val_loss"] for r in runs)})
    return rows


# ----------------------------------------------------------------------------- rendering
def _fmt_bytes(n) -> str:
    if n is None:
        return "?"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def render(doc: dict, out_dir: Path, name: str) -> Path:
    """Markdown (``NAME.md``) and plots (``NAME_*.png``) from the results document."""
    fill_state(doc)
    rows = headline(doc)
    lines = [f"# Probe `{doc['task']}` ({name})", "",
             "Generated by `lmn probe` from `" + name + ".json`; do not edit by hand.", "",
             "Command(s):", ""]
    lines += [f"    {c}" for c in doc.get("commands", [])]
    b = doc["budget"]
    lines += ["", f"Budget (the same for every model): {b['steps']} steps, batch {b['batch_size']}, AdamW "
              f"(weight decay {b['weight_decay']}), constant lr; lr sweep {b['lrs']} on seed {b['seeds'][0]} "
              f"(sweep on {b['sweep']} cell(s){'; lrs from ' + b['lr_from'] if b.get('lr_from') else ''}), the lr with "
              f"the lowest final val loss then run on seeds {b['seeds']}; model size `{b['model_size']}`; task "
              f"options {json.dumps(b['task_options'])}; test set: {doc.get('n_test', '?')} examples "
              f"(seed {doc.get('test_seed', '?')}).", ""]
    cells = []
    for r in rows:
        if r["cell"] not in cells:
            cells.append(r["cell"])
    for cell in cells:
        crow = [r for r in rows if r["cell"] == cell]
        buckets = sorted({bk for r in crow for bk in r["per_bucket"]})
        lines += [f"## Cell {cell_label(cell)}", "",
                  "State: the most bytes the model holds at any position up to T (batch 1, fp32; LMN's tree "
                  "state shrinks when its counter carries, so its state exactly at T can be smaller); slots: those "
                  "position T-1 reads / the most any position reads (LMN).", "",
                  "| model | params | state (max ≤ T) | slots | lr | seeds | test accuracy | "
                  + " | ".join(f"@{bk}" for bk in buckets) + " | val loss | s/step |",
                  "|---|---:|---:|---:|---:|---|---:|" + "---:|" * len(buckets) + "---:|---:|"]
        for r in crow:
            acc = f"{r['accuracy']:.3f}" + (f" ± {r['accuracy_std']:.3f}" if r["accuracy_std"] is not None else "")
            per = " | ".join(f"{r['per_bucket'][bk]:.2f}" if bk in r["per_bucket"] else "" for bk in buckets)
            slots = "" if r["slots"] is None else f"{r['slots']} / {r['slots_max']}"
            lines.append(f"| {r['model']} | {r['params']:,} | {_fmt_bytes(r['state_bytes'])} | "
                         f"{slots} | {r['lr']:g} | "
                         f"{','.join(map(str, r['seeds']))} | {acc} | {per} | {r['val_loss']:.3f} | "
                         f"{r['s_per_step']:.3f} |")
        lines.append("")
    # the sweep
    if not isinstance(b["lrs"], list):  # lrs taken from another probe: no sweep here
        b = {**b, "lrs": []}
    if b["lrs"]:
        lines += ["## Learning-rate sweep (first seed): final val loss / test accuracy", "",
                  "| model | cell | " + " | ".join(f"lr {lr:g}" for lr in b["lrs"]) + " |",
                  "|---|---|" + "---:|" * len(b["lrs"]) + ""]
    else:
        lines += [f"No learning-rate sweep here: each model's lr comes from `{b.get('lr_from')}`."]
    seed0 = b["seeds"][0]
    for model in dict.fromkeys(r["model"] for r in doc["runs"]):
        for cell in dict.fromkeys(cell_label(r["cell"]) for r in doc["runs"] if r["model"] == model):
            cellruns = {float(r["lr"]): r for r in doc["runs"] if r["model"] == model
                        and cell_label(r["cell"]) == cell and r["seed"] == seed0}
            if not any(float(lr) in cellruns for lr in b["lrs"]):
                continue
            vals = [f"{cellruns[float(lr)]['final_val_loss']:.3f} / {cellruns[float(lr)]['test']['accuracy']:.3f}"
                    if float(lr) in cellruns else "—" for lr in b["lrs"]]
            lines.append(f"| {model} | {cell} | " + " | ".join(vals) + " |")
    lines.append("")
    plots = _plots(rows, out_dir, name, doc)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    md = out_dir / f"{name}.md"
    write_text(md, "\n".join(lines) + "\n")
    return md


def _plots(rows: list[dict], out_dir: Path, name: str, doc: dict) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells = list(dict.fromkeys(cell_label(r["cell"]) for r in rows))
    xname = doc.get("bucket_name", "distance")
    # accuracy vs distance (or length), one panel per cell, one line per model
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.8), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        for model in models:
            r = next((r for r in rows if r["model"] == model and cell_label(r["cell"]) == cell), None)
            if r and r["per_bucket"]:
                xs = sorted(r["per_bucket"])
                ax.plot(xs, [r["per_bucket"][x] for x in xs], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"{xname} (bucket, tokens)")
        ax.set_ylabel("test accuracy")
        ax.set_title(cell, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{doc['task']}: accuracy vs {xname}")
    fig.tight_layout()
    fname = f"{name}_vs_{xname}.png"
    save_figure(fig, out_dir / fname, dpi=110)
    plt.close(fig)
    out.append(fname)
    if len(cells) > 1:
        for xkey, fname, xlabel in (("T", f"{name}_vs_length.png", "sequence length T"),
                                    ("state_bytes", f"{name}_vs_state.png", "state bytes to read T tokens (max over positions, batch 1, fp32)")):
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for model in models:
                pts = [(r["cell"].get("block_size") if xkey == "T" else r["state_bytes"], r["accuracy"])
                       for r in rows if r["model"] == model]
                pts = sorted(p for p in pts if p[0] is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
                    if xkey == "state_bytes":  # which T each point is
                        for r in rows:
                            if r["model"] == model and r["state_bytes"]:
                                ax.annotate(f"T={r['cell'].get('block_size')}", (r["state_bytes"], r["accuracy"]),
                                            fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_title(f"{doc['task']}: accuracy vs {'sequence length' if xkey == 'T' else 'state size'}")
            fig.tight_layout()
            save_figure(fig, out_dir / fname, dpi=110)
            plt.close(fig)
            out.append(fname)
    else:  # one cell: accuracy vs state bytes as points
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in rows:
            if r["state_bytes"]:
                ax.scatter([r["state_bytes"]], [r["accuracy"]], label=r["model"])
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("state bytes to read T tokens (max over positions, batch 1, fp32)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{doc['task']} {cells[0]}: accuracy vs state size")
        fig.tight_layout()
        fname = f"{name}_vs_state.png"
        save_figure(fig, out_dir / fname, dpi=110)
        plt.close(fig)
        out.append(fname)
    return out


# ----------------------------------------------------------------------------- command
def build_parser(prog: str = "lmn probe") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train and evaluate models on a synthetic probe task "
                                "(lmn.tasks) at matched sizes; JSON + markdown + plots.")
    p.add_argument("task", help="synthetic task: mqar, passkey, distance, selective-copy, listops")
    p.add_argument("--model", action="append", default=[], metavar="KIND[:K=V,...]",
                   help="model kind, optionally with config fields (repeatable), e.g. lmn:stride=3,read=digits")
    p.add_argument("--model-size", default="paper", help="registry size of every model (default paper, ~71K params)")
    p.add_argument("--model-opt", action="append", default=[], metavar="K=V", help="config field for every model")
    p.add_argument("--task-opt", action="append", default=[], metavar="K=V", help="task option for every cell")
    p.add_argument("--cell", action="append", default=[], metavar="K=V,...",
                   help="one cell: block_size and task options (repeatable; default: the task's grid)")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="learning rates swept on the first seed")
    p.add_argument("--seeds", default="1,2", help="seeds (the first runs the sweep)")
    p.add_argument("--sweep", choices=("all", "first"), default="all", help="sweep on every cell or on the first")
    p.add_argument("--lr-from", default=None, metavar="JSON",
                   help="take each model's lr from another probe's results (its first cell's choice); no sweep")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-interval", type=int, default=None, help="periodic estimate every N steps (default steps/4)")
    p.add_argument("--eval-iters", type=int, default=4, help="batches per split in each periodic estimate")
    p.add_argument("--name", default=None, help="result name (default: the task)")
    p.add_argument("--out", default="docs/results/probes", help="where NAME.json/.md/.png go")
    p.add_argument("--runs-dir", default="runs/probes", help="where the training run directories go")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block in backward (long sequences; same results, less memory)")
    p.add_argument("--report-only", action="store_true", help="re-render NAME.md and plots from NAME.json")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="add the runs of another result file of this task and budget (a probe run in parts, "
                        "e.g. one process per model) to NAME.json, then re-render (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be made, then stop")
    return p


def main(argv: list[str] | None = None, prog: str = "lmn probe") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RESEARCH_PROBES:
        raise ValueError(f"{argv[0]!r} is a probe of trained runs, a study outside the installed package: "
                         f"run `python -m research.{argv[0]} ...` from the repository's root (research/README.md)")
    args = build_parser(prog).parse_args(argv)
    from ..tasks import task_class, task_names

    if args.task in ("text", "dataset") or args.task not in task_names():  # (the corpus tasks are not probes)
        names = [n for n in task_names() if n not in ("text", "dataset")]
        raise ValueError(f"unknown probe {args.task!r}; choose a task ({', '.join(names)})")
    task_class(args.task)
    name = args.name or args.task
    out_dir = Path(args.out)
    path = out_dir / f"{name}.json"
    if args.merge:
        docs = []
        for src in args.merge:
            other = load_results(Path(src))
            if other is None:
                raise FileNotFoundError(f"--merge: no results at {src}")
            docs.append((src, other))
        doc = load_results(path)
        if doc is None:
            src, first = docs.pop(0)
            doc = {**first, "name": name, "runs": [], "state": {}, "chosen_lr": {}, "commands": []}
            merge_results(doc, first, src)
        for src, other in docs:
            merge_results(doc, other, src)
        save_results(path, doc)
        print(render(doc, out_dir, name))
        return 0
    if args.report_only:
        doc = load_results(path)
        if doc is None:
            raise FileNotFoundError(f"no results at {path}")
        if fill_state(doc):
            save_results(path, doc)
        print(render(doc, out_dir, name))
        return 0
    if not args.model:
        raise ValueError("give at least one --model")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    args.model_opts = dict(_pairs(",".join(args.model_opt)))
    args.task_opts = dict(_pairs(",".join(args.task_opt)))
    args.eval_interval = args.eval_interval or max(1, args.steps // 4)
    specs = [_parsed(ModelSpec.parse, "--model", m) for m in args.model]
    from ..kinds import kind_names

    for s in specs:
        if s.kind not in kind_names("train"):
            raise ValueError(f"unknown model {s.kind!r}; choose from {', '.join(kind_names('train'))}")
    cells = [_parsed(_pairs, "--cell", c) for c in (args.cell or DEFAULT_CELLS.get(args.task, ["block_size=256"]))]
    lrs, seeds = parse_lrs(args.lrs), parse_seeds(args.seeds)
    if not lrs or not seeds:
        raise ValueError("--lrs and --seeds need at least one value each")
    lr_from = None
    if args.lr_from:
        other = load_results(Path(args.lr_from))
        if other is None:
            raise FileNotFoundError(f"--lr-from: no results at {args.lr_from}")
        lr_from = {m: next(iter(c.values())) for m, c in other.get("chosen_lr", {}).items()}
        lrs = sorted({lr for lr in (lr_for(s, lr_from) for s in specs) if lr is not None})
    budget = {"steps": args.steps, "batch_size": args.batch_size, "eval_interval": args.eval_interval,
              "eval_iters": args.eval_iters, "lrs": lrs if not lr_from else "from " + str(args.lr_from),
              "seeds": seeds, "sweep": args.sweep if not lr_from else "none", "model_size": args.model_size,
              "task_options": args.task_opts, "weight_decay": args.weight_decay, "lr_from": args.lr_from}
    doc = load_results(path)
    if doc is None:
        doc = {"task": args.task, "name": name, "budget": budget, "commands": [], "runs": [], "state": {},
               "chosen_lr": {}}
    elif (doc["budget"] != budget and {**doc["budget"], "seeds": None} == {**budget, "seeds": None}
          and doc["budget"]["seeds"][0] == budget["seeds"][0]):
        # more (or other) seeds after the same sweep seed: every model gets the union
        seeds = list(dict.fromkeys([*doc["budget"]["seeds"], *budget["seeds"]]))
        doc["budget"]["seeds"] = seeds
    elif doc["budget"] != budget:
        diff = {k: (doc["budget"].get(k), budget.get(k)) for k in BUDGET_KEYS if doc["budget"].get(k) != budget.get(k)}
        raise ValueError(f"{path} was made with another budget {diff}: every model of a probe gets the same "
                         f"budget (use another --name)")
    runs_dir = Path(args.runs_dir) / name
    t_check = time.perf_counter()
    check_all(args.task, specs, args.model, cells, lrs, seeds, args, runs_dir, lr_from)  # before any run trains
    command = "lmn probe " + " ".join(a if " " not in a else repr(a) for a in argv)
    if command not in doc["commands"]:
        doc["commands"].append(command)
    if args.threads:
        torch.set_num_threads(args.threads)
    done = {_key(r) for r in doc["runs"]}
    total = len(specs) * planned_runs(len(cells), len(lrs), len(seeds), args.sweep, lr_from)
    count = {"runs": 0}

    if args.dry_run:
        for spec, cell in ((s, c) for c in cells for s in specs):
            print(f"{spec.label} | {cell_label(cell)} | lrs {lrs if not lr_from else lr_for(spec, lr_from)} | "
                  f"seeds {seeds}")
        return 0

    _say(f"{name}: {len(specs)} model(s) x {len(cells)} cell(s) checked ({time.perf_counter() - t_check:.1f} s); "
         f"{total} run(s) of {args.steps} steps, those already in {path} skipped")

    def do(spec, cell, lr, seed):
        key = (spec.label, cell_label(cell), float(lr), int(seed))
        count["runs"] += 1
        if key in done:
            return
        _say(f"{name} | {spec.label} | {cell_label(cell)} | lr {lr:g} seed {seed}: training (run {count['runs']}/"
             f"{total})")
        t0 = time.perf_counter()
        rec = run_one(args.task, spec, cell, lr, seed, args, runs_dir, stream=_Indented(sys.stderr))
        skey = f"{spec.label}|{cell_label(cell)}"
        if skey not in doc["state"]:
            doc["state"][skey] = state_bytes(spec.kind, rec["model_config"], int(cell.get("block_size", 512)))
        doc["runs"].append(rec)
        done.add(key)
        if rec.get("task"):
            doc.setdefault("n_test", rec["task"].get("n_test"))
            doc.setdefault("test_seed", rec["task"].get("test_seed"))
        doc["bucket_name"] = getattr(task_class(args.task), "bucket_name", "distance")
        _say(f"{name} | {spec.label} | {cell_label(cell)} | lr {lr:g} seed {seed}: "
             f"test acc {rec['test'].get('accuracy', float('nan')):.3f}, val loss {rec['final_val_loss']:.3f} "
             f"({time.perf_counter() - t0:.0f} s)")
        save_results(path, doc)

    # breadth first: every model's sweep (first seed) of a cell, then each further seed for
    # every model, then the next cell; a run cut short leaves every model with the same seeds
    for ci, cell in enumerate(cells):
        cl = cell_label(cell)
        t_cell = time.perf_counter()
        _say(f"{name} | cell {ci + 1}/{len(cells)} {cl}: start")
        for spec in specs:
            if lr_from:
                lr = lr_for(spec, lr_from)
                do(spec, cell, lr, seeds[0])
            elif args.sweep == "all" or ci == 0:
                for lr in lrs:
                    do(spec, cell, lr, seeds[0])
                lr = best_lrs(doc)[spec.label][cl]
            else:
                lr = doc["chosen_lr"][spec.label][cell_label(cells[0])]
                do(spec, cell, lr, seeds[0])
            doc["chosen_lr"].setdefault(spec.label, {})[cl] = lr
            save_results(path, doc)
            render(doc, out_dir, name)
        for seed in seeds[1:]:
            for spec in specs:
                do(spec, cell, doc["chosen_lr"][spec.label][cl], seed)
            render(doc, out_dir, name)
        chosen = ", ".join(f"{spec.label} {doc['chosen_lr'][spec.label][cl]:g}" for spec in specs)
        _say(f"{name} | cell {ci + 1}/{len(cells)} {cl}: done ({time.perf_counter() - t_cell:.0f} s; lr {chosen})")
    save_results(path, doc)
    print(render(doc, out_dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
