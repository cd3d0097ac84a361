"""Which tree levels does a trained LMN read? The attention mass per level, per layer and
head, averaged over validation windows (issue "what the memory remembers", item 7).

For every position the single-vector attention spreads probability over the token itself
(level "self") and the memory slots of each level; this sums the probability per level
and averages it over the positions of ``n_windows`` validation windows of the length the
model was trained on (positions that cannot read a level yet count zero mass for it, so
the columns show what the trained model actually does on its training distribution).

    python -m research.levels docs/results/runs/lmn-s1337 --out docs/results/probes/levels

With ``--stream N`` it reads instead one stream of the first ``N`` validation characters,
longer than the training windows (item 4: why does the loss rise past them?), and reports
per layer: the size of each level's nodes (RMS) and how much they differ from one another
(the spread of a level's nodes about their mean, relative to their RMS: near 0, every node
of the level is nearly the same vector and says little about its block), and, per bucket of
stream positions, the attention mass on the token and level 1, on the other levels seen in
training, and on the levels the training windows never had.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _layers(model, idx: torch.Tensor):
    """Per block, for ``idx (B, T)``: its tree levels, the slots' attention probabilities
    ``(B, T, H, S)``, which slots each position reads ``(T, S)`` and each slot's level
    ``(S,)`` (-1: the token itself) -- the attention of the parallel form, materialised."""
    from lmn.materialized import gather_slots, slot_specs

    cfg = model.config
    B, T = idx.shape
    H, dh = cfg.n_heads, cfg.d_head
    h = model._embed(idx, 0)
    for block in model.blocks:
        x = block.norm1(h)
        levels = block.memory.build(x)
        slots, present = gather_slots(x, levels, cfg.tree)  # (B, T, S, d), (T, S)
        slot_level = torch.tensor(slot_specs(cfg.tree, levels)[0])
        attn = block.attn
        q = attn.q(slots).view(B, T, slots.shape[2], H, dh)
        k = attn.k(x).view(B, T, H, dh) * attn.scale
        scores = torch.einsum("btshe,bthe->bths", q, k).masked_fill(~present[:, None, :], float("-inf"))
        yield levels, torch.softmax(scores, dim=-1), present, slot_level
        h, _ = block(h)


def _by_level(probs: torch.Tensor, slot_level: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Sum the slot axis of ``probs (..., S)`` per level: ``(..., L+1)`` and the levels."""
    names = sorted(set(slot_level.tolist()))
    return torch.stack([probs[..., slot_level == lv].sum(-1) for lv in names], dim=-1), names


@torch.no_grad()
def level_mass(model, idx: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """``mass (n_layers, H, n_levels + 1)`` averaged over every position of ``idx (B, T)``,
    the level of each column (-1: the token itself), and the fraction of positions that
    can read each level ``(n_levels + 1,)``."""
    per_layer = []
    for _, probs, present, slot_level in _layers(model, idx):
        mass, names = _by_level(probs, slot_level)  # (B, T, H, L+1)
        per_layer.append(mass.mean(dim=(0, 1)))
        readable = torch.stack([present[:, slot_level == lv].any(1).float().mean() for lv in names])
    return torch.stack(per_layer), names, readable


@torch.no_grad()
def stream_profile(model, idx: torch.Tensor) -> dict:
    """For one stream ``idx (1, N)``: per layer, each level's node RMS and relative spread
    (None for a level of one node), and the attention mass per position and level (mean
    over heads), ``(n_layers, N, L+1)``."""
    rms, spread, mass = [], [], []
    for levels, probs, _, slot_level in _layers(model, idx):
        rms.append([lv.pow(2).mean().sqrt().item() for lv in levels])
        spread.append([((lv - lv.mean(2, keepdim=True)).pow(2).mean() / lv.pow(2).mean()).sqrt().item()
                       if lv.shape[2] > 1 else None for lv in levels])
        m, names = _by_level(probs.mean(dim=(0, 2)), slot_level)  # (N, L+1)
        mass.append(m)
    return {"levels": names, "rms": rms, "spread": spread, "mass": torch.stack(mass)}


STREAM_BUCKETS = ((1, 512), (513, 4096), (4097, 32768), (32769, 1 << 40))


def _stream_report(model, ids, n: int, T: int) -> tuple[dict, list[str]]:
    """Run :func:`stream_profile` on the first ``n`` ids and tabulate it (``T``: the
    longest training window)."""
    from lmn.tree import Tree

    prof = stream_profile(model, ids[:n][None])
    trained = Tree.of(model.config).n_levels_in(T)  # levels a T-token window builds
    names, mass = prof["levels"], prof["mass"]
    groups = {"token + L1": [i for i, lv in enumerate(names) if lv in (-1, 1)],
              f"L2-L{trained}": [i for i, lv in enumerate(names) if 2 <= lv <= trained],
              f"L{trained + 1}+ (never in training)": [i for i, lv in enumerate(names) if lv > trained]}
    buckets = []
    for lo, hi in STREAM_BUCKETS:
        if lo > n:
            break
        hi = min(hi, n)
        m = mass[:, lo - 1 : hi]  # (layers, positions, levels)
        buckets.append({"positions": [lo, hi],
                        "groups": {g: m[..., cols].sum(-1).mean(1).tolist() for g, cols in groups.items()}})
    data = {"stream": n, "train_window": T, "levels": names, "rms": prof["rms"], "spread": prof["spread"],
            "buckets": buckets}
    L = len(prof["rms"][0])
    lines = ["", f"## One stream of {n:,} validation characters (trained on windows of {T}: levels 1-{trained})", "",
             "Node RMS per level (mean over a level's nodes and banks):", "",
             "| layer | " + " | ".join(f"L{i}" for i in range(1, L + 1)) + " |", "|---:|" + "---:|" * L]
    lines += [f"| {l} | " + " | ".join(f"{v:.3f}" for v in r) + " |" for l, r in enumerate(prof["rms"])]
    lines += ["", "Spread of a level's nodes about their mean, relative to their RMS (0: all nodes the same vector):",
              "", "| layer | " + " | ".join(f"L{i}" for i in range(1, L + 1)) + " |", "|---:|" + "---:|" * L]
    lines += [f"| {l} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in r) + " |"
              for l, r in enumerate(prof["spread"])]
    lines += ["", "Attention mass by stream position (mean over positions and heads):", "",
              "| positions | layer | " + " | ".join(groups) + " |", "|---|---:|" + "---:|" * len(groups)]
    for b in buckets:
        for l in range(mass.shape[0]):
            lines.append(f"| {b['positions'][0]}-{b['positions'][1]} | {l} | "
                         + " | ".join(f"{b['groups'][g][l]:.3f}" for g in groups) + " |")
    return data, lines


def main(argv=None) -> int:
    from lmn.atomic import write_json, write_text
    from lmn.records import header
    from research.context import _val_ids
    from lmn.trainer import load_run

    p = argparse.ArgumentParser(prog="python -m research.levels", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained LMN run directory")
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    p.add_argument("--windows", type=int, default=64, help="validation windows (evenly spaced)")
    p.add_argument("--stream", type=int, default=0,
                   help="also profile one stream of this many validation characters (node sizes, spread, mass by "
                        "position; 0: no)")
    p.add_argument("--train-window", type=int, default=0,
                   help="--stream: the longest window the model was trained on, which splits the levels into seen "
                        "and never seen (default: the run's block_size)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.train_window < 0 or args.train_window == 1:
        p.error(f"--train-window must be >= 2 characters (or 0: the run's block_size), got {args.train_window}")
    if args.stream < 0:
        p.error(f"--stream must be >= 0 characters, got {args.stream}")
    torch.set_num_threads(args.threads)
    model, tokenizer, doc_run = load_run(args.run)
    if doc_run["train"]["model"] != "lmn":
        raise SystemExit(f"error: {args.run} is a {doc_run['train']['model']} run; the level probe reads an LMN's tree")
    T = doc_run["train"]["block_size"]
    ids = _val_ids(doc_run, tokenizer)
    starts = torch.linspace(0, len(ids) - T, args.windows).long()
    idx = torch.stack([ids[s : s + T] for s in starts.tolist()])
    mass, names, readable = level_mass(model, idx)
    if args.stream > len(ids):
        raise SystemExit(f"error: --stream {args.stream} is longer than the validation split ({len(ids)} characters)")
    stream, stream_lines = (_stream_report(model, ids, args.stream, args.train_window or T)
                            if args.stream else (None, []))
    command = "python -m research.levels " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = header("probe-levels", command, args.threads, ["cpu"], {"windows": args.windows, "window": T})
    doc.update(run=args.run, levels=names, mass=mass.tolist(), readable_fraction=readable.tolist())
    if stream is not None:
        doc["stream"] = stream
    out = Path(args.out)
    write_json(out.with_suffix(".json"), doc)
    label = lambda lv: "self" if lv < 0 else f"L{lv}"  # noqa: E731
    lines = [f"# Attention mass per tree level: {Path(args.run).name}", "",
             f"Command: `{command}`  ", f"Commit {doc['git']['commit']}{' (dirty tree)' if doc['git']['dirty'] else ''}; "
             f"{args.windows} validation windows of {T} characters; mean over every position.", "",
             "| layer | head | " + " | ".join(label(lv) for lv in names) + " |", "|---:|---:|" + "---:|" * len(names)]
    for l in range(mass.shape[0]):
        for hd in range(mass.shape[1]):
            lines.append(f"| {l} | {hd} | " + " | ".join(f"{v:.3f}" for v in mass[l, hd].tolist()) + " |")
    lines += ["", "Mean over heads, per layer:", "", "| layer | " + " | ".join(label(lv) for lv in names) + " |",
              "|---:|" + "---:|" * len(names)]
    for l in range(mass.shape[0]):
        lines.append(f"| {l} | " + " | ".join(f"{v:.3f}" for v in mass[l].mean(0).tolist()) + " |")
    lines += ["", "The same per position that can read the level (mean over heads; a level-i slot exists "
              "from position 2^i - 1 of a window):", "",
              "| layer | " + " | ".join(label(lv) for lv in names) + " |", "|---:|" + "---:|" * len(names),
              "| readable by | " + " | ".join(f"{v:.1%}" for v in readable.tolist()) + " |"]
    for l in range(mass.shape[0]):
        cond = (mass[l].mean(0) / readable.clamp(min=1e-9)).tolist()
        lines.append(f"| {l} | " + " | ".join(f"{v:.3f}" for v in cond) + " |")
    lines += stream_lines
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    _plot(mass, names, out.with_suffix(".png"), Path(args.run).name)
    print("\n".join(lines))
    return 0


def _plot(mass, names, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, _ = mass.shape
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 0.5 + 0.35 * L * H))
    im = ax.imshow(mass.reshape(L * H, -1).numpy(), aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(names)), ["self" if lv < 0 else f"L{lv}" for lv in names])
    ax.set_yticks(range(L * H), [f"layer {l} head {h}" for l in range(L) for h in range(H)], fontsize=7)
    ax.set_title(f"attention mass per tree level: {title}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    from lmn.atomic import save_figure

    save_figure(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
