"""Does a model use distant context? Loss on the same text with more and more before it.

Two measurements on the validation text of a character corpus, read as one long stream
(issue "what the memory remembers", item 4):

* **same tokens, growing context**: ``n_blocks`` target blocks of ``block`` characters,
  spread over the validation split; for each context length ``P`` the model reads the
  ``P`` characters before a block and then the block, and the loss is averaged over the
  block's targets only. The text scored is identical for every ``P``, so any change is
  what the extra context does (for a model trained on 512-token windows, ``P + block >
  512`` is context it never saw in training).
* **per-position loss**: non-overlapping windows of ``window`` characters from the start of
  the validation split; the loss of each position, averaged over windows, in buckets
  (1-64, 65-512, 513-4K, 4K-32K): position and text difficulty mixed, as a reader of a
  long stream would see it.

Models are trained run directories (:func:`lmn.trainer.load_run`); a model with a position
limit (GPT-2's learned table) is measured only where it reaches, and the JSON says where
it stops. LMN runs in its parallel form here (its streaming form computes the same
function, ``tests/core/test_parity.py``).

    python -m research.context docs/results/runs/lmn-s1337 docs/results/runs/mamba-s1337 \\
        --out docs/results/probes/context
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CONTEXTS = (0, 16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32256)
BUCKETS = ((1, 64), (65, 512), (513, 4096), (4097, 32768))


def _val_ids(run_doc: dict, tokenizer) -> torch.Tensor:
    from lmn.data import encode_splits, load_corpus

    train_cfg = run_doc["train"]
    _, text = load_corpus(train_cfg["data"])
    return encode_splits(tokenizer, text, train_cfg["train_frac"])[1]  # the run's validation ids, any tokenizer


@torch.no_grad()
def _target_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-position next-token losses ``(B, T-1)`` of ``ids (B, T)``."""
    logits = model(ids[:, :-1]).float()
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def same_tokens_curve(model, ids: torch.Tensor, contexts, block: int, n_blocks: int, limit: int | None) -> dict:
    """Mean loss on the same ``n_blocks`` blocks for every context length that fits."""
    first = max(contexts) + 1
    starts = torch.linspace(first, len(ids) - block - 1, n_blocks).long().tolist()
    out = {}
    for P in contexts:
        if limit is not None and P + block > limit:
            out[str(P)] = None  # beyond the model's position limit
            continue
        losses = []
        for s in starts:  # one forward per block: windows of P + block + 1 ids
            window = ids[s - P : s + block + 1][None]
            losses.append(_target_losses(model, window)[0, P:].mean().item())
        out[str(P)] = sum(losses) / len(losses)
    return {"block": block, "n_blocks": n_blocks, "block_starts": starts, "loss": out}


def per_position(model, ids: torch.Tensor, window: int, limit: int | None) -> dict:
    """Mean loss per bucket of stream positions over non-overlapping windows."""
    window = min(window, limit) if limit is not None else window
    n = (len(ids) - 1) // window
    sums = torch.zeros(window)
    for w in range(n):
        sums += _target_losses(model, ids[w * window : (w + 1) * window + 1][None])[0]
    mean = sums / n
    buckets = {}
    for lo, hi in BUCKETS:  # 1-based positions of the predicted token within the window
        buckets[f"{lo}-{hi}"] = mean[lo - 1 : hi].mean().item() if lo <= window else None
    return {"window": window, "n_windows": n, "buckets": buckets}


def _with_max_level(model, max_level: int):
    """The same trained LMN with its tree capped at ``max_level`` (same weights)."""
    return model.with_max_level(max_level).eval()


def probe_run(run_dir: str, contexts, block: int, n_blocks: int, window: int, max_level: int | None = None) -> dict:
    from lmn.kinds import get_kind
    from lmn.trainer import load_run

    model, tokenizer, doc = load_run(run_dir)
    kind = doc["train"]["model"]
    if max_level is not None:
        model = _with_max_level(model, max_level)
    limit = get_kind(kind).max_positions(doc["train"]["model_config"])
    ids = _val_ids(doc, tokenizer)
    t0 = time.perf_counter()
    result = {
        "run": str(run_dir), "model": kind, "seed": doc["train"]["seed"], "trained_block_size": doc["train"]["block_size"],
        "max_level": max_level, "label": Path(run_dir).name + (f" (max_level {max_level})" if max_level else ""),
        "position_limit": limit, "n_val_tokens": len(ids),
        "same_tokens": same_tokens_curve(model, ids, contexts, block, n_blocks, limit),
        "per_position": per_position(model, ids, window, limit),
    }
    result["seconds"] = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- report
def render_markdown(doc: dict) -> str:
    runs = doc["runs"]
    ctx = doc["settings"]["contexts"]
    lines = [
        "# Does the model use distant context?", "",
        f"Command: `{doc['command']}`  ",
        f"Commit {doc['git']['commit']}{' (dirty tree)' if doc['git']['dirty'] else ''}; "
        f"{doc['machine']['cpu_model']}, {doc['machine']['threads']} thread(s), torch {doc['machine']['torch']}.", "",
        f"## Loss (nats) on the same {runs[0]['same_tokens']['n_blocks']} validation blocks of "
        f"{runs[0]['same_tokens']['block']} characters, after P characters of context", "",
        "| run | " + " | ".join(f"P={p}" for p in ctx) + " |",
        "|---|" + "---:|" * len(ctx),
    ]
    for r in runs:
        cells = [("—" if r["same_tokens"]["loss"][str(p)] is None else f"{r['same_tokens']['loss'][str(p)]:.4f}")
                 for p in ctx]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", "— : beyond the model's position limit.", "",
              "## Loss per stream position (mean over non-overlapping windows from the start of the split)", "",
              "| run | window | " + " | ".join(f"{lo}-{hi}" for lo, hi in BUCKETS) + " |",
              "|---|---:|" + "---:|" * len(BUCKETS)]
    for r in runs:
        pp = r["per_position"]
        cells = ["—" if v is None else f"{v:.4f}" for v in pp["buckets"].values()]
        lines.append(f"| {r['label']} | {pp['window']} × {pp['n_windows']} | " + " | ".join(cells) + " |")
    if doc.get("notes"):
        lines += ["", doc["notes"].strip()]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    plot_curves([(r["label"], r["same_tokens"]["loss"]) for r in doc["runs"]], path, "Same text, more context before it")


def plot_curves(series: list[tuple[str, dict]], path: Path, title: str) -> None:
    """Loss on the same blocks against the context length P, one line per ``(label, {P: loss})``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, losses in series:
        pts = sorted((int(p), v) for p, v in losses.items() if v is not None)
        ax.plot([max(p, 1) for p, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.axvline(512, color="grey", ls=":", lw=1)
    ax.set_xlabel("characters of context before the scored block (P; 0 drawn at 1)")
    ax.set_ylabel("val loss on the same blocks (nats)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from lmn.atomic import save_figure

    save_figure(fig, path, dpi=120)
    plt.close(fig)


def rerender(out: Path, notes: str | None, render, plot_fn) -> None:
    """Re-write OUT.md and OUT.png from OUT.json (adding the ``notes`` file to it first)."""
    from lmn.atomic import write_json, write_text

    doc = json.loads(out.with_suffix(".json").read_text())
    if notes:
        doc["notes"] = Path(notes).read_text()
        write_json(out.with_suffix(".json"), doc)
    write_text(out.with_suffix(".md"), render(doc))
    plot_fn(doc, out.with_suffix(".png"))


def main(argv=None) -> int:
    from lmn.atomic import write_json, write_text
    from lmn.records import header

    p = argparse.ArgumentParser(prog="python -m research.context", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="trained run directories")
    p.add_argument("--out", required=True, help="output prefix: writes OUT.json, OUT.md and OUT.png")
    p.add_argument("--render", action="store_true",
                   help="only re-render OUT.md and OUT.png from OUT.json (with --notes), measuring nothing")
    p.add_argument("--block", type=int, default=512, help="characters per scored block")
    p.add_argument("--blocks", type=int, default=16, help="scored blocks")
    p.add_argument("--window", type=int, default=32768, help="window of the per-position measurement")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)), help="context lengths P")
    p.add_argument("--lmn-max-level", default="",
                   help="also probe every LMN run with its tree capped at these levels (comma-separated), same weights")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--notes", help="markdown file appended to the report")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    out = Path(args.out)
    if args.render:
        rerender(out, args.notes, render_markdown, plot)
        return 0
    if not args.runs:
        p.error("give at least one run directory (or --render)")
    settings = {"block": args.block, "blocks": args.blocks, "window": args.window, "contexts": contexts}
    doc = header("probe-context", "python -m research.context " + " ".join(argv if argv is not None else
                                                                             __import__("sys").argv[1:]),
                 args.threads, ["cpu"], settings)
    doc["runs"] = []
    caps = [int(c) for c in args.lmn_max_level.split(",") if c]
    for run in args.runs:
        is_lmn = json.loads((Path(run) / "config.json").read_text())["train"]["model"] == "lmn"
        for cap in [None] + (caps if is_lmn else []):
            print(f"probing {run}" + (f" with max_level {cap}" if cap else "") + " ...", flush=True)
            doc["runs"].append(probe_run(run, contexts, args.block, args.blocks, args.window, cap))
            write_json(out.with_suffix(".json"), doc)  # after every run: nothing lost on a stop
    if args.notes:
        doc["notes"] = Path(args.notes).read_text()
    write_json(out.with_suffix(".json"), doc)
    write_text(out.with_suffix(".md"), render_markdown(doc))
    plot(doc, out.with_suffix(".png"))
    print(render_markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
