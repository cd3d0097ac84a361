"""Which tree levels does a trained LMN read? The attention mass per level, per layer and
head, averaged over validation windows (issue "what the memory remembers", item 7).

For every position the single-vector attention spreads probability over the token itself
(level "self") and the memory slots of each level; this sums the probability per level
and averages it over the positions of ``n_windows`` validation windows of the length the
model was trained on (positions that cannot read a level yet count zero mass for it, so
the columns show what the trained model actually does on its training distribution).

    python -m lmn.probes.levels docs/results/runs/lmn-s1337 --out docs/results/probes/levels
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


@torch.no_grad()
def level_mass(model, idx: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """``mass (n_layers, H, n_levels + 1)`` averaged over every position of ``idx (B, T)``,
    the level of each column (-1: the token itself), and the fraction of positions that
    can read each level ``(n_levels + 1,)``."""
    from ..bench.materialized import gather_slots, slot_specs

    cfg = model.config
    tree = cfg.tree
    B, T = idx.shape
    H, dh = cfg.n_heads, cfg.d_head
    h = model._embed(idx, 0)
    per_layer, names = [], None
    for block in model.blocks:
        x = block.norm1(h)
        levels = block.memory.build(x)
        slots, present = gather_slots(x, levels, tree)  # (B, T, S, d), (T, S)
        slot_level = torch.tensor(slot_specs(tree, levels)[0])
        S = slots.shape[2]
        attn = block.attn
        q = attn.q(slots).view(B, T, S, H, dh)
        k = attn.k(x).view(B, T, H, dh) * attn.scale
        scores = torch.einsum("btshe,bthe->bths", q, k).masked_fill(~present[:, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # (B, T, H, S)
        names = sorted(set(slot_level.tolist()))
        mass = torch.stack([probs[..., slot_level == lv].sum(-1) for lv in names], dim=-1)  # (B, T, H, L+1)
        per_layer.append(mass.mean(dim=(0, 1)))
        readable = torch.stack([present[:, slot_level == lv].any(1).float().mean() for lv in names])
        h, _ = block(h)
    return torch.stack(per_layer), names, readable


def main(argv=None) -> int:
    from ..bench.common import header, write_json, write_text
    from ..probes.context import _val_ids
    from ..trainer import load_run

    p = argparse.ArgumentParser(prog="python -m lmn.probes.levels", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained LMN run directory")
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    p.add_argument("--windows", type=int, default=64, help="validation windows (evenly spaced)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, doc_run = load_run(args.run)
    if doc_run["train"]["model"] != "lmn":
        raise SystemExit(f"error: {args.run} is a {doc_run['train']['model']} run; the level probe reads an LMN's tree")
    T = doc_run["train"]["block_size"]
    ids = _val_ids(doc_run, tokenizer)
    starts = torch.linspace(0, len(ids) - T, args.windows).long()
    idx = torch.stack([ids[s : s + T] for s in starts.tolist()])
    mass, names, readable = level_mass(model, idx)
    command = "python -m lmn.probes.levels " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = header("probe-levels", command, args.threads, ["cpu"], {"windows": args.windows, "window": T})
    doc.update(run=args.run, levels=names, mass=mass.tolist(), readable_fraction=readable.tolist())
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
