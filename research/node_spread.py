"""How distinct are a tree level's nodes? Per-level relative spread for each summarizer.

For one stream of text, per layer and tree level, the spread of the level's nodes about
their mean relative to their RMS (as ``research/levels.py --stream`` reports it: near 0,
every node of the level is the same vector whatever its text; near 1, nodes differ as much
as they are large), and the nodes' RMS. Models are built from configurations at their
initialisation (a seed; the summarizers of issue 21 beside the paper's) and, optionally,
read from trained run directories.

    python -m research.node_spread --corpus ../shared/data/tinyshakespeare.txt --chars 8192 \\
        --config paper: --config residual:summarizer=residual --config gated:summarizer=gated \\
        --config normed:node_norm=true --out docs/results/memory/node-spread
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return text


@torch.no_grad()
def spread_profile(model, idx: torch.Tensor) -> dict:
    """Per layer: each level's relative spread (None for a level of one node) and RMS."""
    rms, spread = [], []
    h = model._embed(idx, 0)
    for block in model.blocks:
        levels = block.memory.build(block.norm1(h))
        rms.append([lv.pow(2).mean().sqrt().item() for lv in levels])
        spread.append([((lv - lv.mean(2, keepdim=True)).pow(2).mean() / lv.pow(2).mean()).sqrt().item()
                       if lv.shape[2] > 1 else None for lv in levels])
        h, _ = block(h)
    return {"rms": rms, "spread": spread}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.node_spread", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="a text file; its last --chars characters are the stream")
    p.add_argument("--chars", type=int, default=8192)
    p.add_argument("--config", action="append", default=[], metavar="NAME:K=V,...",
                   help="a model at initialisation: paper size, these LMNConfig fields changed (repeatable)")
    p.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="a trained run (repeatable)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from lmn import LMN, LMNConfig
    from lmn.data import CharTokenizer
    from lmn.records import header

    text = Path(a.corpus).read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    stream = torch.as_tensor(tok.encode(text[-a.chars:]))[None]
    command = "python -m research.node_spread " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = header("node-spread", command, 1, [], vars(a))
    doc["models"] = []
    for spec in a.config:
        name, _, opts = spec.partition(":")
        fields = dict((k, _value(v)) for k, v in (o.split("=", 1) for o in opts.split(",") if o))
        torch.manual_seed(a.seed)
        model = LMN(LMNConfig(vocab_size=tok.vocab_size, **fields)).eval()
        doc["models"].append({"name": name, "source": "init", "seed": a.seed, "fields": fields,
                              **spread_profile(model, stream)})
    for spec in a.run:
        from lmn.trainer import load_run

        name, _, run = spec.partition("=")
        model, run_tok, _ = load_run(run)
        ids = torch.as_tensor(run_tok.encode(text[-a.chars:]))[None]
        doc["models"].append({"name": name, "source": run, **spread_profile(model.eval(), ids)})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(doc, out.with_suffix(".png").name))
    plot(doc, out.with_suffix(".png"))
    return 0


def render(doc: dict, png: str) -> str:
    lines = ["# Per-level node spread by summarizer", "", f"Command: `{doc['command']}`", "",
             f"Commit {doc['git']['commit'][:10]}{' (dirty tree)' if doc['git'].get('dirty') else ''}. Relative spread "
             "of each level's nodes (layer 1 / layer 4) on one stream: std about the level's mean over its RMS.", ""]
    n_levels = max(len(m["spread"][0]) for m in doc["models"])
    head = ["model", "source"] + [f"L{i + 1}" for i in range(n_levels)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in doc["models"]:
        cells = []
        for i in range(n_levels):
            a = m["spread"][0][i] if i < len(m["spread"][0]) else None
            b = m["spread"][-1][i] if i < len(m["spread"][-1]) else None
            cells.append("" if a is None else f"{a:.2f} / {b:.2f}")
        lines.append("| " + " | ".join([m["name"], "init" if m["source"] == "init" else Path(m["source"]).name, *cells]) + " |")
    lines += ["", f"![{png}]({png})", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, layer, title in ((axes[0], 0, "layer 1"), (axes[1], -1, "last layer")):
        for m in doc["models"]:
            ys = m["spread"][layer]
            xs = [i + 1 for i, y in enumerate(ys) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], marker="o", label=f"{m['name']} ({'init' if m['source'] == 'init' else 'trained'})")
        ax.set_yscale("log")
        ax.set_xlabel("tree level")
        ax.set_title(title)
    axes[0].set_ylabel("relative spread of the level's nodes")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
