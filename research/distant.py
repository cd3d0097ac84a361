"""Is context older than a cut-off used? Replace it with random tokens and score the same text.

For ``n_blocks`` target blocks of ``block`` tokens spread over a run's validation split,
the model reads the ``context`` tokens before the block and then the block; a second pass
replaces every context token more than ``keep`` positions before the block's first target
by a token drawn uniformly from the vocabulary (a fixed generator, so every model sees the
same replacement). The loss on the block's targets is compared: a model that uses the
distant context gets worse when it is randomised (Δ > 0); a model that cannot reach it
(for instance a tree capped at ``max_level``) gives Δ = 0 exactly, and the largest logit
change says whether *anything* moved (issue 21, item 3).

    python -m research.distant docs/results/runs/lmn-s1337 docs/results/runs/lmn-s1338 \\
        --max-level none,9 --out docs/results/memory/distant-table1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


@torch.no_grad()
def randomised_context(model, ids: torch.Tensor, context: int, keep: int, block: int, n_blocks: int,
                       vocab: int, seed: int = 0) -> dict:
    """Per block: the loss on its targets with the true context and with the context older
    than ``keep`` randomised; their difference and the largest logit change."""
    starts = torch.linspace(context + 1, len(ids) - block - 1, n_blocks).long().tolist()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for s in starts:
        window = ids[s - context : s + block + 1].clone()[None]
        noisy = window.clone()
        cut = context - keep  # positions 0 .. cut-1 are older than `keep` before the first target
        noisy[0, :cut] = torch.randint(0, vocab, (cut,), generator=gen)
        a, b = model(window[:, :-1]).float(), model(noisy[:, :-1]).float()
        tgt = window[0, context + 1 :]
        la = F.cross_entropy(a[0, context:], tgt).item()
        lb = F.cross_entropy(b[0, context:], tgt).item()
        rows.append({"start": s, "loss": la, "loss_randomised": lb, "delta": lb - la,
                     "max_logit_change": (a[0, context:] - b[0, context:]).abs().max().item()})
    deltas = [r["delta"] for r in rows]
    return {"context": context, "keep": keep, "block": block, "n_blocks": n_blocks, "seed": seed,
            "loss": statistics.fmean(r["loss"] for r in rows),
            "loss_randomised": statistics.fmean(r["loss_randomised"] for r in rows),
            "delta_mean": statistics.fmean(deltas), "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            "max_logit_change": max(r["max_logit_change"] for r in rows), "blocks": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.distant", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="trained run directories (character corpora)")
    p.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    p.add_argument("--context", type=int, default=8192, help="tokens before each scored block")
    p.add_argument("--keep", type=int, default=2048, help="the nearest tokens left as they are")
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--max-level", default="none", help="comma-separated caps for LMN runs: none, or a level")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if not 0 < a.keep < a.context:
        p.error(f"--keep must lie in (0, --context), got {a.keep} and {a.context}")
    torch.set_num_threads(a.threads)

    from lmn.records import header
    from lmn.trainer import load_run
    from research.context import _val_ids

    caps = [None if c.strip().lower() == "none" else int(c) for c in a.max_level.split(",")]
    command = "python -m research.distant " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = header("distant-context", command, a.threads, [], vars(a))
    doc["results"] = []
    for run in a.runs:
        model, tokenizer, run_doc = load_run(run)
        model.eval()
        ids = _val_ids(run_doc, tokenizer)
        for cap in caps if run_doc["train"]["model"] == "lmn" else [None]:
            m = model.with_max_level(cap).eval() if cap is not None else model
            r = randomised_context(m, ids, a.context, a.keep, a.block, a.blocks, model.config.vocab_size)
            r.update(run=run, model=run_doc["train"]["model"], max_level=cap)
            doc["results"].append(r)
            print(f"{run} max_level {cap}: loss {r['loss']:.4f} -> {r['loss_randomised']:.4f} "
                  f"(Δ {r['delta_mean']:+.4f} ± {r['delta_std']:.4f}), largest logit change {r['max_logit_change']:.3g}",
                  flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(doc))
    return 0


def render(doc: dict) -> str:
    s = doc["settings"]
    lines = ["# Is context older than %d tokens used?" % s["keep"], "",
             f"Command: `{doc['command']}`", "",
             f"Commit {doc['git']['commit'][:10]}{' (dirty tree)' if doc['git'].get('dirty') else ''}; "
             f"{s['blocks']} validation blocks of {s['block']} tokens, each after {s['context']} tokens of context; "
             f"the context older than {s['keep']} tokens before the block is replaced by uniform random tokens "
             "(one fixed generator). Δ = loss with it randomised − loss with the true text: > 0 means the distant "
             "text was used; exactly 0 with a largest logit change of 0 means it cannot be reached.", "",
             "| run | max_level | loss | randomised | Δ (mean ± std over blocks) | largest logit change |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {Path(r['run']).name} | {r['max_level'] if r['max_level'] is not None else 'none'} | "
                     f"{r['loss']:.4f} | {r['loss_randomised']:.4f} | {r['delta_mean']:+.4f} ± {r['delta_std']:.4f} | "
                     f"{r['max_logit_change']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
