"""ETTh1 forecasting: LMN against a Transformer encoder, Mamba-2 and DLinear at one
budget (issue 11).

    python -m research.forecast --horizons 96 --steps 400 --batch-size 32 \\
        --runs-dir runs/etth1 --out docs/results/domains --notes docs/results/domains_notes.md

Every model trains through the shared trainer on the ``etth1`` task (:mod:`lmn.tasks.etth1`:
the standard split, train-only scaling, window 336) with the same steps, batch, learning
rate and evaluation; the number reported is the MSE / MAE over every test window after the
last step (no early stopping, no learning-rate schedule). The JSON holds each run's budget
read back from its own config.json and the published figures it is shown beside; the
markdown and the plot are rendered from the JSON (plus ``--notes``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmn.atomic import save_figure, write_json, write_text
from lmn.kinds import get_kind
from lmn.trainer import TrainConfig
from lmn.trainer.loop import PROVENANCE
from research.arms import command_line, read_run, run_arm

# arm -> (kind, model_config overrides): every sequence model at its ``paper`` size
ARMS: dict[str, tuple[str, dict]] = {
    "lmn-ts": ("lmn-ts", {}),
    "transformer-ts": ("transformer-ts", {}),
    "mamba2-ts": ("mamba2-ts", {}),
    "dlinear": ("dlinear", {}),
    "dlinear-revin": ("dlinear", {"revin": True}),
}
TITLES = {"lmn-ts": "LMN (Linear(7,d) in, last-position readout, RevIN)",
          "transformer-ts": "Transformer encoder (same adapter)",
          "mamba2-ts": "Mamba-2 (same adapter)",
          "dlinear": "DLinear (ours, no RevIN, as published)",
          "dlinear-revin": "DLinear + RevIN (ours)"}

# Published ETTh1 multivariate test MSE / MAE (standardised), by horizon. DLinear: Zeng et al.,
# "Are Transformers Effective for Time Series Forecasting?", AAAI 2023, Table 2 (look-back 336).
# PatchTST: Nie et al., "A Time Series is Worth 64 Words", ICLR 2023, Table 3 (PatchTST/42:
# look-back 336; PatchTST/64: look-back 512). Read from a LaTeX table that reproduces both
# ("results borrowed from DLinear and PatchTST"), found with the project's search tool.
PUBLISHED = {
    "DLinear (Zeng et al. 2023), L 336": {96: (0.375, 0.399), 192: (0.405, 0.416), 336: (0.439, 0.443),
                                           720: (0.472, 0.490)},
    "PatchTST/42 (Nie et al. 2023), L 336": {96: (0.375, 0.399), 192: (0.414, 0.421), 336: (0.431, 0.436),
                                              720: (0.449, 0.466)},
    "PatchTST/64 (Nie et al. 2023), L 512": {96: (0.370, 0.400), 192: (0.413, 0.429), 336: (0.422, 0.440),
                                              720: (0.447, 0.468)},
}
PUBLISHED_SETTINGS = (
    "published runs train to convergence with early stopping on the validation split. DLinear's ETTh1 script "
    "(cure-lab/LTSF-Linear, scripts/EXP-LongForecasting/DLinear/etth1.sh, run_longExp.py defaults): batch 8, "
    "Adam lr 1e-4 halved every epoch, up to 10 epochs (~10K steps), patience 3, model `individual=False`, no RevIN. "
    "PatchTST's (yuqinie98/PatchTST, PatchTST_supervised/scripts/PatchTST/etth1.sh): channel-independent patches "
    "of 16 (stride 8), d 16, 3 layers, 4 heads, d_ff 128, dropout 0.3, RevIN, batch 128, lr 1e-4, up to 100 "
    "epochs. Both reference loaders drop the test set's last partial batch (`drop_last=True`); ours scores every "
    "window")
BUDGET_FIELDS = ("max_iters", "batch_size", "block_size", "lr", "weight_decay", "eval_interval", "eval_iters", "dtype",
                 "task", "task_options")


def budget(args) -> dict:
    return {"max_iters": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "eval_interval": args.eval_interval, "eval_iters": args.eval_iters}


def arm_config(arm: str, horizon: int, seed: int, args) -> TrainConfig:
    kind, overrides = ARMS[arm]
    model_config = dict(overrides)
    if "input_len" in get_kind(kind).config_class().to_dict():  # DLinear's maps are sized by the window
        model_config["input_len"] = args.window
    task_options = {"window": args.window, "horizon": horizon}
    if args.csv:
        task_options["csv"] = args.csv
    return TrainConfig(model=kind, model_config=model_config, task="etth1", task_options=task_options,
                       block_size=args.window, seed=seed, out_dir=str(Path(args.runs_dir) / f"{arm}-h{horizon}-s{seed}"),
                       ckpt_interval=args.steps, log_interval=10, **budget(args))


def collect(args, arms, horizons, seeds) -> dict:
    rows = []
    for horizon in horizons:
        for arm in arms:
            for seed in seeds:
                cfg = arm_config(arm, horizon, seed, args)
                run = read_run(Path(cfg.out_dir))
                if run is None:
                    continue
                train, final = run["config"]["train"], run["final"] or {}
                rows.append({
                    "arm": arm, "kind": cfg.model, "title": TITLES[arm], "horizon": horizon, "seed": seed,
                    "run_dir": cfg.out_dir, "finished": run["final"] is not None,
                    **{k: final.get(k) for k in PROVENANCE},
                    "budget": {k: train[k] for k in BUDGET_FIELDS if k != "task_options"},
                    "task_options": {k: v for k, v in train["task_options"].items() if k != "csv"},
                    "model_config": train["model_config"], "params": run["config"]["params"],
                    "test_mse": final.get("whole_test_mse"), "test_mae": final.get("whole_test_mae"),
                    "test_windows": final.get("whole_test_windows"),
                    "val_mse_estimate": final.get("final_val_loss"), "train_mse_estimate": final.get("final_train_loss"),
                    "wall_time_s": final.get("wall_time_s"), "train_time_s": final.get("train_time_s"),
                    "s_per_step": final["train_time_s"] / final["step"] if final.get("step") else None,
                    "curve": [{"step": e["step"], "train_mse": e["train_loss"], "val_mse": e["val_loss"]}
                              for e in run["evals"]],
                    "command": command_line(cfg),
                })
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in rows}
    return {"what": "ETTh1 multivariate forecasting, one budget for every model (issue 11)",
            "protocol": {"split_rows": {"train": [0, 8640], "val": [8640 - args.window, 11520],
                                        "test": [11520 - args.window, 14400]},
                         "scaling": "per-channel mean/std (ddof 0) of the training rows", "window": args.window,
                         "channels": 7, "metrics": "MSE and MAE over every test window, step and channel "
                                                   "(standardised scale)"},
            "budget": {**budget(args), "seeds": seeds, "horizons": horizons}, "equal_budgets": len(budgets) <= 1,
            "runs": rows,
            "published": {name: {str(h): {"mse": v[0], "mae": v[1]} for h, v in table.items()}
                          for name, table in PUBLISHED.items()},
            "published_settings": PUBLISHED_SETTINGS}


def _f(x, fmt="{:.3f}"):
    return "–" if x is None else fmt.format(x)


def render_markdown(doc: dict, notes: str = "") -> str:
    b = doc["budget"]
    lines = [
        "# LMN beyond one corpus (issue 11)",
        "",
        "## Time series: ETTh1, multivariate",
        "",
        f"Protocol (Informer / DLinear / PatchTST): rows [0, 8640) train, [{8640 - doc['protocol']['window']}, "
        f"11520) validation, [{11520 - doc['protocol']['window']}, 14400) test; per-channel standardisation fitted "
        f"on the training rows; input window {doc['protocol']['window']}; all 7 channels in and out; "
        "MSE / MAE on the standardised test set, every test window (`lmn.tasks.etth1`).",
        "",
        f"Budget, the same for every model (equal from each run's config.json: {doc['equal_budgets']}): "
        f"{b['max_iters']} AdamW steps of batch {b['batch_size']}, lr {b['lr']:g} constant, weight decay 0.01, "
        f"float32, one CPU thread; no early stopping: the test numbers are after the last step. "
        f"Estimates every {b['eval_interval']} steps on {b['eval_iters']} random batches per split.",
        "",
        "| model | H | params | test MSE | test MAE | val MSE (estimate) | s/step | wall s | seed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(doc["runs"], key=lambda r: (r["horizon"], r["test_mse"] if r["test_mse"] is not None else 9)):
        lines.append(f"| {r['title']} | {r['horizon']} | {r['params']:,} | {_f(r['test_mse'])} | {_f(r['test_mae'])} | "
                     f"{_f(r['val_mse_estimate'])} | {_f(r['s_per_step'], '{:.3f}')} | {_f(r['wall_time_s'], '{:.0f}')} | "
                     f"{r['seed']}{'' if r['finished'] else ' (unfinished)'} |")
    by_arm: dict = {}
    for r in doc["runs"]:
        if r["finished"]:
            by_arm.setdefault((r["horizon"], r["arm"]), []).append(r)
    if any(len(v) > 1 for v in by_arm.values()):
        lines += ["", "Mean over the finished seeds (each seed's value in brackets):", "",
                  "| model | H | seeds | test MSE | test MAE |", "| --- | ---: | ---: | --- | --- |"]
        for (h, arm), runs in sorted(by_arm.items(), key=lambda kv: (kv[0][0], sum(r["test_mse"] for r in kv[1]) / len(kv[1]))):
            mse = [r["test_mse"] for r in runs]
            mae = [r["test_mae"] for r in runs]
            lines.append(f"| {runs[0]['title']} | {h} | {len(runs)} | {sum(mse) / len(mse):.3f} "
                         f"({', '.join(f'{v:.3f}' for v in mse)}) | {sum(mae) / len(mae):.3f} "
                         f"({', '.join(f'{v:.3f}' for v in mae)}) |")
    lines += ["", "Published (same split, scaling and metrics; " + doc["published_settings"] + "):", "",
              "| model | H | test MSE | test MAE |", "| --- | ---: | ---: | ---: |"]
    for name, table in doc["published"].items():
        for h, v in table.items():
            if int(h) in b["horizons"]:
                lines.append(f"| {name} | {h} | {v['mse']:.3f} | {v['mae']:.3f} |")
    lines += ["", "![ETTh1 curves](domains.png)", "", "Commands (each run, exactly):", "", "```"]
    lines += [r["command"] for r in doc["runs"]]
    lines += ["```", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    return "\n".join(lines)


def render_plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in doc["runs"] if r["curve"]]
    if not runs:
        return
    horizons = sorted({r["horizon"] for r in runs})
    fig, axes = plt.subplots(1, len(horizons), figsize=(6 * len(horizons), 4), squeeze=False)
    for ax, h in zip(axes[0], horizons):
        for r in (r for r in runs if r["horizon"] == h):
            steps = [c["step"] for c in r["curve"]]
            ax.plot(steps, [c["val_mse"] for c in r["curve"]], marker=".", label=f"{r['arm']} s{r['seed']} (test {_f(r['test_mse'])})")
        for name, table in doc["published"].items():
            if str(h) in table and name.startswith("DLinear"):
                ax.axhline(table[str(h)]["mse"], color="gray", ls=":", lw=1, label="DLinear, published test MSE")
        ax.set_title(f"ETTh1, H {h}: validation MSE (estimate on {doc['budget']['eval_iters']} batches)")
        ax.set_xlabel("step")
        ax.set_ylabel("MSE (standardised)")
        ax.set_ylim(top=min(2.0, ax.get_ylim()[1]))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(doc: dict, out: Path, notes_path: str | None) -> None:
    notes = Path(notes_path).read_text() if notes_path and Path(notes_path).is_file() else ""
    write_json(out.with_suffix(".json"), doc, indent=2)
    write_text(out.with_suffix(".md"), render_markdown(doc, notes))
    render_plot(doc, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.forecast", description=__doc__.split("\n\n")[0])
    p.add_argument("--horizons", default="96", help="comma-separated (96,192,336,720)")
    p.add_argument("--models", default=",".join(ARMS), help="comma-separated: " + ", ".join(ARMS))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--eval-iters", type=int, default=10)
    p.add_argument("--window", type=int, default=336)
    p.add_argument("--seeds", default="1337")
    p.add_argument("--csv", default=None, help="path of ETTh1.csv (default: $LMN_DATA_DIR/ETTh1.csv)")
    p.add_argument("--runs-dir", default="runs/etth1")
    p.add_argument("--out", default="docs/results/domains", help="path stem of the .json/.md/.png")
    p.add_argument("--notes", default=None, help="markdown appended to the rendered page (the reading)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    horizons = [int(h) for h in args.horizons.split(",")]
    arms = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if not args.report_only:
        for horizon in horizons:
            for seed in seeds:
                for arm in arms:
                    run_arm(arm_config(arm, horizon, seed, args))
                    write_report(collect(args, arms, horizons, seeds), Path(args.out), args.notes)
    write_report(collect(args, arms, horizons, seeds), Path(args.out), args.notes)
    print(f"wrote {args.out}.json/.md/.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
