"""LMN's design choices on Tiny Shakespeare at one budget (issue 11).

    python -m research.ablations --steps 300 --seeds 1337,1338 --runs-dir runs/ablations \\
        --out docs/results/ablations

Every arm is the paper's LMN (``LMNConfig()``: d 32, 4 layers, 4 heads, 2 banks, linear
summarizer, no expander, ff_mult 4, implicit positions, stride 2, "latest" read) with one
field changed, trained with the same budget (steps, batch, window, learning rate, the same
evaluation) through the shared trainer, one run directory per arm and seed, one run at a
time. The JSON records each run's budget as read back from its own ``config.json``, so
that equal budgets can be checked; the markdown and the plot are rendered from the JSON.
``--report-only`` renders from the run directories without training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lmn.atomic import save_figure, write_json, write_text
from lmn.trainer import TrainConfig
from lmn.trainer.loop import PROVENANCE
from research.arms import command_line, read_run, run_arm

# (arm, group, what changes, model_config overrides); "baseline" is the paper's LMN and the
# reference of every group.
ARMS: list[tuple[str, str, str, dict]] = [
    ("baseline", "reference", "the paper's LMN (implicit positions, linear, 2 banks, k 0, ff 4, stride 2 latest)", {}),
    ("pos-sinusoidal", "positions", "sinusoidal positions added to the embedding", {"pos_encoding": "sinusoidal"}),
    ("sum-conv", "summarizer", "conv summarizer", {"summarizer": "conv"}),
    ("sum-dwsep", "summarizer", "depthwise-separable summarizer", {"summarizer": "dwsep"}),
    ("banks-1", "banks", "1 memory bank", {"n_banks": 1}),
    ("banks-4", "banks", "4 memory banks", {"n_banks": 4}),
    ("expand-1", "expander", "expander k = 1", {"expand": 1}),
    ("expand-2", "expander", "expander k = 2", {"expand": 2}),
    ("ff-1", "ff_mult", "feed-forward width 1 x d", {"ff_mult": 1}),
    ("stride2-digits", "stride/read", "stride 2, digits read", {"read": "digits"}),
    ("stride3-latest", "stride/read", "stride 3, latest read", {"stride": 3}),
    ("stride3-digits", "stride/read", "stride 3, digits read", {"stride": 3, "read": "digits"}),
    ("stride4-latest", "stride/read", "stride 4, latest read", {"stride": 4}),
    ("stride4-digits", "stride/read", "stride 4, digits read", {"stride": 4, "read": "digits"}),
    # issue 14, item 5: the pinned memory on language modelling
    ("pinned-4", "pinned", "4 pinned tokens per layer beside the tree", {"pinned": 4}),
    ("pinned-16", "pinned", "16 pinned tokens per layer beside the tree", {"pinned": 16}),
]
BUDGET_FIELDS = ("max_iters", "batch_size", "block_size", "lr", "weight_decay", "eval_interval", "eval_iters",
                 "whole_val", "train_frac", "dtype", "data", "task")


def budget(args) -> dict:
    return {"max_iters": args.steps, "batch_size": args.batch_size, "block_size": args.block_size, "lr": args.lr,
            "eval_interval": args.eval_interval, "eval_iters": args.eval_iters}


def arm_config(arm: str, seed: int, args) -> TrainConfig:
    overrides = next(o for name, _, _, o in ARMS if name == arm)
    return TrainConfig(model="lmn", model_config=dict(overrides), data=args.data, seed=seed,
                       out_dir=str(Path(args.runs_dir) / f"{arm}-s{seed}"), ckpt_interval=args.steps,
                       log_interval=10, **budget(args))


def collect(args, arms: list[str], seeds: list[int]) -> dict:
    """The JSON document: per arm, per seed: budget (from the run's config.json), params,
    losses, times; per arm the mean over its finished seeds."""
    rows = []
    for arm, group, what, overrides in ARMS:
        if arm not in arms:
            continue
        runs = []
        for seed in seeds:
            cfg = arm_config(arm, seed, args)
            run = read_run(Path(cfg.out_dir))
            if run is None:
                continue
            train = run["config"]["train"]
            final = run["final"] or {}
            evals = run["evals"]
            runs.append({
                "seed": seed, "run_dir": cfg.out_dir, "finished": run["final"] is not None,
                **{k: final.get(k) for k in PROVENANCE},
                "budget": {k: train[k] for k in BUDGET_FIELDS},
                "model_config": train["model_config"], "params": run["config"]["params"],
                "whole_val_loss": final.get("whole_val_loss"), "whole_val_bpc": final.get("whole_val_bits_per_char"),
                "final_val_loss": final.get("final_val_loss"), "final_train_loss": final.get("final_train_loss"),
                "wall_time_s": final.get("wall_time_s"), "train_time_s": final.get("train_time_s"),
                "s_per_step": (final["train_time_s"] / final["step"]) if final.get("step") else None,
                "curve": [{"step": e["step"], "train_loss": e["train_loss"], "val_loss": e["val_loss"]} for e in evals],
                "command": command_line(cfg),
            })
        done = [r for r in runs if r["finished"]]

        def mean(key):
            vals = [r[key] for r in done if r[key] is not None]
            return statistics.fmean(vals) if vals else None

        rows.append({"arm": arm, "group": group, "what": what, "overrides": overrides, "runs": runs,
                     "n_seeds": len(done), "params": runs[0]["params"] if runs else None,
                     "whole_val_loss": mean("whole_val_loss"),
                     "whole_val_loss_range": [min(r["whole_val_loss"] for r in done),
                                              max(r["whole_val_loss"] for r in done)] if done else None,
                     "s_per_step": mean("s_per_step"), "wall_time_s": mean("wall_time_s")})
    budgets = {json.dumps(r["budget"], sort_keys=True) for row in rows for r in row["runs"]}
    base = next((r for r in rows if r["arm"] == "baseline"), None)
    for row in rows:
        if base and base["whole_val_loss"] is not None and row["whole_val_loss"] is not None:
            row["delta_vs_baseline"] = row["whole_val_loss"] - base["whole_val_loss"]
            row["time_vs_baseline"] = row["s_per_step"] / base["s_per_step"] if base["s_per_step"] else None
    return {"what": "LMN ablations on Tiny Shakespeare, one budget for every arm (issue 11)",
            "budget": {**budget(args), "seeds": seeds, "data": args.data},
            "equal_budgets": len(budgets) <= 1, "arms": rows}


def expander_cost(lengths: list[int], expands=(0, 1, 2), repeats: int = 3) -> list[dict]:
    """Forward + backward seconds of the paper's LMN (batch 1, one thread) at each length
    and expander k: the expander's cost beyond the training window (best of ``repeats``)."""
    import time

    import torch

    from lmn.config import LMNConfig
    from lmn.model import LMN

    out = []
    for k in expands:
        torch.manual_seed(0)
        model = LMN(LMNConfig(expand=k))
        for T in lengths:
            idx = torch.randint(65, (1, T))
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(idx).float().logsumexp(-1).mean().backward()
                best = min(best, time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
            out.append({"expand": k, "T": T, "fwd_bwd_s": best, "us_per_token": best / T * 1e6})
    return out


def _f(x, fmt="{:.4f}"):
    return "–" if x is None else fmt.format(x)


def render_markdown(doc: dict) -> str:
    b = doc["budget"]
    lines = [
        "# LMN ablations on Tiny Shakespeare (issue 11)",
        "",
        f"Budget, the same for every arm (checked from each run's own config.json: "
        f"equal = {doc['equal_budgets']}): {b['max_iters']} AdamW steps of {b['batch_size']} x {b['block_size']} "
        f"characters, lr {b['lr']:g} constant, weight decay 0.01, float32, one CPU thread; estimate every "
        f"{b['eval_interval']} steps on {b['eval_iters']} batches per split; then the loss over the **whole "
        f"validation split** (last 10 %, non-overlapping {b['block_size']}-character windows), the number in "
        f"the table. Seeds: {', '.join(map(str, b['seeds']))}. This is ~"
        f"{b['max_iters'] * b['batch_size'] * b['block_size'] / (5000 * 16 * 512) * 100:.0f} % of the Table 1 "
        "protocol's training tokens (5,000 x 16 x 512): losses are far from converged and differences are "
        "early-training differences. s/step is training time only, measured on a shared 2-core machine (other "
        "jobs ran beside these runs), so time ratios are approximate.",
        "",
        "| arm | group | change | params | whole-val loss (mean) | seeds (min–max) | Δ vs baseline | s/step | "
        "time vs baseline | wall s/run |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in doc["arms"]:
        rng = r["whole_val_loss_range"]
        seeds = f"{r['n_seeds']}: {rng[0]:.4f}–{rng[1]:.4f}" if rng else "–"
        lines.append(f"| {r['arm']} | {r['group']} | {r['what']} | {_f(r['params'], '{:,}')} | "
                     f"{_f(r['whole_val_loss'])} | {seeds} | {_f(r.get('delta_vs_baseline'), '{:+.4f}')} | "
                     f"{_f(r['s_per_step'], '{:.3f}')} | {_f(r.get('time_vs_baseline'), '{:.2f}x')} | "
                     f"{_f(r['wall_time_s'], '{:.0f}')} |")
    cost = doc.get("expander_cost")
    if cost:
        lengths = sorted({c["T"] for c in cost})
        lines += ["", "Expander cost beyond the training window: forward + backward of the paper's LMN, batch 1, "
                  "one thread, best of 3, microseconds per token:", "",
                  "| k | " + " | ".join(f"T {T:,}" for T in lengths) + " |",
                  "| --- | " + " | ".join("---:" for _ in lengths) + " |"]
        for k in sorted({c["expand"] for c in cost}):
            row = {c["T"]: c["us_per_token"] for c in cost if c["expand"] == k}
            lines.append(f"| {k} | " + " | ".join(f"{row[T]:.1f}" for T in lengths) + " |")
    missing = [r["arm"] for r in doc["arms"] if r["n_seeds"] < len(b["seeds"])]
    if missing:
        lines += ["", f"Arms with fewer finished seeds than planned: {', '.join(missing)}."]
    lines += ["", "![ablations](ablations.png)", ""]
    return "\n".join(lines)


def render_plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["arms"] if r["n_seeds"]]
    if not rows:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.38 * len(rows) + 1.5), sharey=True)
    ys = range(len(rows))
    ax1.barh(ys, [r["whole_val_loss"] for r in rows], color="#9ecae1")
    for y, r in zip(ys, rows):
        ax1.plot([x["whole_val_loss"] for x in r["runs"] if x["finished"]], [y] * r["n_seeds"], "k.", ms=5)
    lo = min(x["whole_val_loss"] for r in rows for x in r["runs"] if x["finished"])
    hi = max(x["whole_val_loss"] for r in rows for x in r["runs"] if x["finished"])
    ax1.set_xlim(lo - 0.02, hi + 0.02)
    ax1.set_yticks(list(ys), [r["arm"] for r in rows])
    ax1.invert_yaxis()
    ax1.set_xlabel("whole validation loss (nats/char); dots: seeds")
    ax2.barh(ys, [r["s_per_step"] for r in rows], color="#fdae6b")
    ax2.set_xlabel("training s/step (1 CPU thread)")
    b = doc["budget"]
    fig.suptitle(f"LMN ablations, Tiny Shakespeare, {b['max_iters']} steps x {b['batch_size']} x {b['block_size']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(doc: dict, out: Path, notes_path: str | None = None) -> None:
    write_json(out.with_suffix(".json"), doc, indent=2)
    md = render_markdown(doc)
    if notes_path and Path(notes_path).is_file():
        md += "\n" + Path(notes_path).read_text().rstrip() + "\n"
    write_text(out.with_suffix(".md"), md)
    render_plot(doc, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--eval-iters", type=int, default=10)
    p.add_argument("--seeds", default="1337,1338", help="comma-separated")
    p.add_argument("--arms", default="all", help="comma-separated arm names, or all: " + ", ".join(a[0] for a in ARMS))
    p.add_argument("--order", choices=["arm", "seed"], default="seed",
                   help="seed: every arm with the first seed, then every arm with the next (default)")
    p.add_argument("--data", default="tinyshakespeare")
    p.add_argument("--runs-dir", default="runs/ablations")
    p.add_argument("--out", default="docs/results/ablations", help="path stem of the .json/.md/.png")
    p.add_argument("--report-only", action="store_true", help="render from the run directories; train nothing")
    p.add_argument("--cost-lengths", default="",
                   help="comma-separated lengths at which to time the expander (k 0/1/2), e.g. 256,1024,4096; "
                        "kept in <out>.cost.json and shown in the report")
    p.add_argument("--notes", default=None, help="markdown appended to the rendered page (the reading)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    names = [a[0] for a in ARMS]
    arms = names if args.arms == "all" else args.arms.split(",")
    unknown = sorted(set(arms) - set(names))
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    cost_path = Path(args.out).with_suffix(".cost.json")
    if args.cost_lengths and not args.report_only:
        write_json(cost_path, expander_cost([int(t) for t in args.cost_lengths.split(",")]), indent=2)

    def report():
        doc = collect(args, arms, seeds)
        if cost_path.is_file():
            doc["expander_cost"] = json.loads(cost_path.read_text())
        write_report(doc, Path(args.out), args.notes)

    if not args.report_only:
        plan = ([(a, s) for s in seeds for a in arms] if args.order == "seed" else [(a, s) for a in arms for s in seeds])
        for arm, seed in plan:
            run_arm(arm_config(arm, seed, args))
            report()  # partial results after every run
    report()
    print(f"wrote {args.out}.json/.md/.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
