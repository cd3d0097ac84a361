"""Build ``docs/results/table1.{json,md}`` from training runs: the paper's Table 1 protocol.

    python -m lmn.results table1 runs/lmn-s1337 runs/gpt2-s1337 ... --out docs/results/table1

The JSON holds everything the markdown shows (the markdown is rendered from the JSON
alone); runs that have not finished are listed with their last evaluation and marked
incomplete, never averaged in.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from .atomic import write_json, write_text
from .kinds import REGISTRY, get_kind, kind_or_none
from .records import cpu_name, gpu_name


def paper_table1() -> dict:
    """Taha, "Logarithmic Memory Networks (LMNs)", arXiv 2501.07905, Table 1 (Tiny
    Shakespeare, character level; "val loss" after 5,000 iterations of the protocol in
    lmn.trainer): ``{kind: {"params", "val_loss"}}``, as each registered kind states it."""
    return {name: dict(get_kind(name).paper) for name in REGISTRY if get_kind(name).paper is not None}


def model_title(kind: str) -> str:
    """A kind's name in tables ("GPT-2"); an unregistered name as it is."""
    spec = kind_or_none(kind)
    return spec.title if spec is not None else kind

# The paper's training protocol (the presets paper-lmn / paper-gpt2); a run that departs from
# it (e.g. Mamba's shorter budget) is labelled with its departures and summarised apart.
PAPER_PROTOCOL = {"max_iters": 5000, "eval_iters": 200, "eval_interval": 100, "block_size": 512,
                  "batch_size": 16, "lr": 1e-3}
# Every run's validation loss is also read at this step, so runs with different budgets can be
# compared at equal training.
COMMON_STEP = 1000


def protocol_label(train: dict) -> str:
    """``"paper"``, or the settings in which ``train`` departs from the paper's protocol."""
    diffs = [f"{k}={train[k]:g}" for k, v in PAPER_PROTOCOL.items() if k in train and train[k] != v]
    tokenizer = (train.get("task_options") or {}).get("tokenizer", "char")
    if tokenizer != "char":  # the paper's runs are character-level: others are summarised apart
        diffs.append(f"tokenizer={tokenizer}")
    return "paper" if not diffs else ", ".join(diffs)


def run_command(cfg: dict, out: str) -> str:
    """The ``lmn train`` command of a run: its preset plus every training field that differs
    from the preset (the model's own config comes from the preset and ``--model-opt``)."""
    from .trainer.config import PRESETS, TrainConfig, cli_flags, preset_config

    train, preset = cfg["train"], cfg.get("preset")
    known = preset in PRESETS
    base = (preset_config(preset) if known else TrainConfig(model=train["model"])).to_dict()
    args = ["lmn", "train"] + (["--preset", preset] if known else ["--model", train["model"]])
    args += cli_flags(train, base, skip=("model_config", "task_options", "out_dir", "threads", "device")
                      + (("model",) if known else ()))
    for key, value in train.get("task_options", {}).items():  # e.g. tokenizer=bpe:1024
        args += ["--task-opt", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return " ".join(args + ["--out", out])


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def collect_run(run_dir: Path) -> dict:
    """Summary of one run directory (finished or not)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    train = cfg["train"]
    final_path = run_dir / "final.json"
    row = {
        "run": run_dir.name,
        "model": train["model"],
        "preset": cfg.get("preset"),
        "seed": train["seed"],
        "params": cfg.get("params"),
        "max_iters": train["max_iters"],
        "eval_iters": train["eval_iters"],
        "protocol": protocol_label(train),
        "command": run_command(cfg, run_dir.as_posix()),
        "corpus": cfg.get("corpus"),
    }
    evals = [r for r in _read_jsonl(run_dir / "metrics.jsonl") if r.get("type") == "eval"]
    row["val_loss_at_common_step"] = next((r["val_loss"] for r in evals if r.get("step") == COMMON_STEP), None)
    if final_path.exists():
        final = json.loads(final_path.read_text())
        row.update(
            complete=final["step"] >= train["max_iters"],
            step=final["step"],
            final_train_loss=final["final_train_loss"],
            final_val_loss=final["final_val_loss"],
            final_val_bpb=final.get("final_val_bpb"),  # bits per byte (runs made before it: None)
            whole_val_loss=final.get("whole_val_loss"),
            whole_val_bits_per_char=final.get("whole_val_bits_per_char"),
            whole_val_bpb=final.get("whole_val_bpb"),
            wall_time_s=final["wall_time_s"],
            train_time_s=final["train_time_s"],
            tokens_per_s=final["tokens_per_s"],
            threads=final["threads"],
            device=final["device"],
            machine=final["machine"],
            versions=final["versions"],
            git=final.get("git"),  # commit and whether the tree was dirty (runs made before this record: None)
        )
    else:
        last = evals[-1] if evals else {}
        row.update(
            complete=False,
            step=last.get("step", 0),
            final_train_loss=last.get("train_loss"),
            final_val_loss=last.get("val_loss"),
            final_val_bpb=last.get("val_bpb"),
            wall_time_s=last.get("elapsed_s"),
        )
    return row


def _mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def build_table1(run_dirs: list[Path]) -> dict:
    runs = [collect_run(Path(d)) for d in run_dirs]
    summary = {}
    done = [r for r in runs if r["complete"]]
    groups = sorted({(r["model"], r["protocol"]) for r in done})
    for model, protocol in groups:
        group = [r for r in done if (r["model"], r["protocol"]) == (model, protocol)]
        # Keyed by model; a model run under more than one protocol gets one entry per protocol.
        key = model if sum(m == model for m, _ in groups) == 1 else f"{model} [{protocol}]"
        summary[key] = {
            stat: _mean_std([r[stat] for r in group])
            for stat in ("final_train_loss", "final_val_loss", "final_val_bpb", "whole_val_loss",
                         "whole_val_bits_per_char", "whole_val_bpb", "val_loss_at_common_step", "wall_time_s",
                         "tokens_per_s")
            if all(r.get(stat) is not None for r in group)
        }
        summary[key].update(model=model, protocol=protocol, params=group[0]["params"])
    return {"paper": paper_table1(), "paper_protocol": PAPER_PROTOCOL, "common_step": COMMON_STEP,
            "runs": runs, "summary": summary}


def _f(x, digits=4):
    return "–" if x is None else f"{x:.{digits}f}"


def _ms(stat: dict | None, digits=4) -> str:
    if not stat:
        return "–"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f} (n=1)"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} (n={stat['n']})"


TITLE = "Table 1 — Tiny Shakespeare (character level), paper protocol"


def finished_on(row: dict) -> str:
    """Where a run's last segment ran: its GPU's name, else the CPU's and the thread count."""
    m = row.get("machine") or {}
    if gpu_name(m) and str(row.get("device", "")).startswith("cuda"):
        return gpu_name(m)
    return f"{cpu_name(m) or 'CPU'}, {row.get('threads', '?')} thread(s)" if m else "–"


def render_markdown(table: dict) -> str:
    with_paper = table.get("with_paper", True)
    out = [f"# {table.get('title', TITLE)}", ""]
    out.append("Generated by `python -m lmn.results table1` from `table1.json`; do not edit by hand.")
    out.append("")
    out.append("## Per run")
    out.append("")
    step = table.get("common_step", COMMON_STEP)
    machines = {json.dumps(r.get("machine"), sort_keys=True) for r in table["runs"] if r.get("machine")}
    mixed = len(machines) > 1  # runs finished on different machines: say which, beside its times
    out.append(f"| run | model | seed | params | protocol | steps | val loss at step {step:,} | final train loss "
               "| final val loss | whole-val loss (nats) | whole-val bits/char | wall time | train tokens/s | status |"
               + (" finished on |" if mixed else ""))
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if mixed else ""))
    for r in table["runs"]:
        wall = "–" if r.get("wall_time_s") is None else f"{r['wall_time_s'] / 60:.1f} min"
        tps = "–" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}"
        status = "complete" if r["complete"] else f"incomplete (last evaluation at step {r['step']} of {r['max_iters']})"
        out.append(
            f"| {r['run']} | {model_title(r['model'])} | {r['seed']} | {r['params']:,} "
            f"| {r.get('protocol', 'paper')} | {r['step']} | {_f(r.get('val_loss_at_common_step'))} "
            f"| {_f(r.get('final_train_loss'))} | {_f(r.get('final_val_loss'))} | {_f(r.get('whole_val_loss'))} "
            f"| {_f(r.get('whole_val_bits_per_char'))} | {wall} | {tps} | {status} |"
            + (f" {finished_on(r)} |" if mixed else "")
        )
    out.append("")
    if not with_paper:
        out += _summary_without_paper(table, step)
    else:
        out += _summary_with_paper(table, step)
    corpora = {json.dumps({k: c.get(k) for k in ("path", "sha256", "n_chars", "vocab_size")}, sort_keys=True)
               for c in (r.get("corpus") for r in table["runs"]) if c}
    if corpora:
        out += ["", "Corpus: " + "; ".join(corpora)]
    out.append("")
    if mixed:
        out += ["Runs finished on different machines. A run resumed on another machine reports wall time "
                "and tokens/s over all its segments together, so those two columns do not compare "
                "across such rows; the losses do.", ""]
    out.append("Machine(s): " + "; ".join(machines) if machines else "Machine: (no finished run)")
    out.append("")
    out.append("Commands (data: `LMN_DATA_DIR=../shared/data`, one thread per run):")
    out.append("")
    out.append("```")
    out += [r["command"] for r in table["runs"]]
    out.append("```")
    if table.get("notes"):
        out += ["", "## Discussion", "", table["notes"].strip()]
    return "\n".join(out) + "\n"


def _summary_without_paper(table: dict, step: int) -> list[str]:
    out = ["## Summary (complete runs only: mean ± sample std over seeds)", "",
           f"| model | protocol | params | val loss at step {step:,} | final val loss | whole-val loss "
           "| whole-val bits/char | final train loss | train tokens/s |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(table["summary"]):
        s = table["summary"][key]
        tps = "–" if not s.get("tokens_per_s") else f"{s['tokens_per_s']['mean']:,.0f}"
        out.append(
            f"| {model_title(s['model'])} | {s['protocol']} | {s['params']:,} "
            f"| {_ms(s.get('val_loss_at_common_step'))} | {_ms(s.get('final_val_loss'))} "
            f"| {_ms(s.get('whole_val_loss'))} | {_ms(s.get('whole_val_bits_per_char'))} "
            f"| {_ms(s.get('final_train_loss'))} | {tps} |")
    return out


def _summary_with_paper(table: dict, step: int) -> list[str]:
    out = []
    out.append("## Summary (complete runs only: mean ± sample std over seeds) beside the paper")
    out.append("")
    out.append(f"| model | protocol | params (ours) | params (paper) | val loss at step {step:,} "
               "| final val loss (ours) | val loss (paper) | whole-val loss | whole-val bits/char | final train loss |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    summarised = {s.get("model", k) for k, s in table["summary"].items()}
    keys = list(table["summary"]) + [m for m in table["paper"] if m not in summarised]
    for key in sorted(keys):
        s = table["summary"].get(key, {})
        model = s.get("model", key)
        p = table["paper"].get(model, {}) if s.get("protocol", "paper") == "paper" else {}
        out.append(
            f"| {model_title(model)} | {s.get('protocol', '–')} "
            f"| {s.get('params', '–') if not s else format(s['params'], ',')} "
            f"| {format(p['params'], ',') if p else '–'} | {_ms(s.get('val_loss_at_common_step'))} "
            f"| {_ms(s.get('final_val_loss'))} "
            f"| {_f(p.get('val_loss')) if p else '–'} | {_ms(s.get('whole_val_loss'))} "
            f"| {_ms(s.get('whole_val_bits_per_char'))} | {_ms(s.get('final_train_loss'))} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmn.results", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t1 = sub.add_parser("table1", help="Table 1 from run directories")
    t1.add_argument("runs", nargs="+", type=Path, help="run directories written by `lmn train`")
    t1.add_argument("--out", type=Path, default=Path("docs/results/table1"), help="output path without suffix")
    t1.add_argument("--notes", type=Path, help="markdown file with the discussion, stored in the JSON and rendered last")
    t1.add_argument("--title", default=TITLE, help="the page's title (e.g. for another corpus)")
    t1.add_argument("--no-paper", action="store_true",
                    help="leave out the paper's figures (runs on another corpus than Tiny Shakespeare)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.runs if not (d / "config.json").exists()]
    if missing:
        print(f"error: not a run directory (no config.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    table = build_table1(args.runs)
    table.update(title=args.title, with_paper=not args.no_paper)
    if args.notes is not None:
        if not args.notes.is_file():
            print(f"error: notes file {args.notes} does not exist", file=sys.stderr)
            return 2
        table["notes"] = args.notes.read_text()
    write_json(args.out.with_suffix(".json"), table, indent=2)
    write_text(args.out.with_suffix(".md"), render_markdown(table))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
