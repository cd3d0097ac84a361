"""Streaming decode of LMN's memory mechanisms beside the paper's tree: per-token latency
of ``LMN.step`` and the state's bytes at context positions P (issue 21, item 4: the
recommended LMN keeps its O(log n) state and its speed class).

Each configuration is the paper-size LMN (random weights; speed does not depend on them)
with some ``LMNConfig`` fields changed. For every P: a prefill of P tokens, ``warmup``
untimed steps, then ``steps`` timed steps, in rounds that alternate the configurations (so a
drift of the machine hits every one alike); the median over rounds of the mean step time
is reported, with the state's bytes after P tokens (``LMNState.nbytes``).

    python -m research.memory_decode --config paper: --config gated:summarizer=gated \\
        --positions 64,1024,8192 --out docs/results/memory/decode
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from research.node_spread import _value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.memory_decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", required=True, metavar="NAME:K=V,...")
    p.add_argument("--positions", default="64,1024,8192")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from lmn import LMN, LMNConfig
    from lmn.records import header

    positions = [int(x) for x in a.positions.split(",")]
    models = {}
    for spec in a.config:
        name, _, opts = spec.partition(":")
        fields = dict((k, _value(v)) for k, v in (o.split("=", 1) for o in opts.split(",") if o))
        torch.manual_seed(0)
        models[name] = (fields, LMN(LMNConfig(**fields)).eval())
    command = "python -m research.memory_decode " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = header("memory-decode", command, a.threads, [], vars(a))
    gen = torch.Generator().manual_seed(0)
    prompts = {P: torch.randint(0, 65, (1, P), generator=gen) for P in positions}
    times = {(n, P): [] for n in models for P in positions}
    nbytes = {}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for P in positions:
                for name, (_, model) in models.items():
                    _, state = model.prefill(prompts[P])
                    nbytes[(name, P)] = state.nbytes
                    tok = prompts[P][:, -1]
                    for _ in range(a.warmup):
                        _, state = model.step(tok, state)
                    t0 = time.perf_counter()
                    for _ in range(a.steps):
                        _, state = model.step(tok, state)
                    times[(name, P)].append((time.perf_counter() - t0) / a.steps)
    doc["results"] = [{"name": n, "fields": models[n][0], "params": models[n][1].num_parameters(), "position": P,
                       "ms_per_token": 1e3 * statistics.median(times[(n, P)]),
                       "ms_per_token_rounds": [1e3 * t for t in times[(n, P)]], "state_bytes": nbytes[(n, P)]}
                      for n in models for P in positions]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# Streaming decode of the memory mechanisms (`LMN.step`)", "", f"Command: `{command}`", "",
             f"Commit {doc['git']['commit'][:10]}{' (dirty tree)' if doc['git'].get('dirty') else ''}; "
             f"{a.threads} thread(s); {doc['machine'].get('cpu_model')}; median over {a.rounds} alternating rounds of "
             f"{a.steps} steps after {a.warmup} warm-up steps, batch 1, float32.", "",
             "| model | params | " + " | ".join(f"P = {P}: ms/token, state" for P in positions) + " |",
             "|---|---:|" + "---:|" * len(positions)]
    for n in models:
        rows = {r["position"]: r for r in doc["results"] if r["name"] == n}
        cells = [f"{rows[P]['ms_per_token']:.3f}, {rows[P]['state_bytes'] / 1024:.1f} KiB" for P in positions]
        lines.append(f"| `{n}` | {models[n][1].num_parameters():,} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
