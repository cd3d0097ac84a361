"""Same-run speed ratio of the streaming step against another checkout of lmn.

Issue 20 (one block contract) asked that ``LMN.step`` and the native step keep their speed
within 5 % of the commit before the change. This runner times both steps of this tree and of
a BASE tree (a ``src`` folder of another checkout, e.g. a ``git worktree`` at the earlier
commit), in fresh single-threaded processes that alternate BASE and this tree round by
round, and writes the per-round figures, their medians and minima and the ratios::

    git worktree add /tmp/base 38e978d
    python -m research.step_speed --base /tmp/base/src --rounds 8 --steps 2000 \\
        --out docs/results/step_speed.json

Each process builds the model from seed 0 (``paper``: d 32, 2 layers, 2 heads; ``large``:
d 256, 4 layers, 4 heads; vocabulary 65), prefills 256 tokens, warms up 50 steps, then times
``--steps`` single-token steps (batch 1, ``torch.no_grad``) of ``LMN.step`` and of
``lmn.native.NativeStepper``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, sys, time, torch
torch.set_num_threads(1)
from lmn import LMN, LMNConfig
from lmn.native import NativeStepper
size, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
if size == "paper":
    cfg = LMNConfig(vocab_size=65, d_model=32, n_layers=2, n_heads=2)
else:
    cfg = LMNConfig(vocab_size=65, d_model=256, n_layers=4, n_heads=4)
m = LMN(cfg).eval()
idx = torch.randint(0, 65, (1, 256))
toks = torch.randint(0, 65, (steps, 1))
out = {"lmn_file": __import__("lmn").__file__}
with torch.no_grad():
    _, st = m.prefill(idx)
    for i in range(50):
        m.step(toks[i % steps], st)
    _, st = m.prefill(idx)
    t0 = time.perf_counter()
    for i in range(steps):
        m.step(toks[i], st)
    out["lmn_step_us"] = (time.perf_counter() - t0) / steps * 1e6
    ns = NativeStepper(m)
    _, st = m.prefill(idx)
    ns.load_state(st)
    for i in range(50):
        ns.step(toks[i % steps])
    ns.load_state(st)
    t0 = time.perf_counter()
    for i in range(steps):
        ns.step(toks[i])
    out["native_step_us"] = (time.perf_counter() - t0) / steps * 1e6
print(json.dumps(out))
'''


def _child(src: str, size: str, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, size, str(steps)], capture_output=True, text=True, env=env,
                          cwd="/")
    if proc.returncode:
        raise SystemExit(f"step_speed: the timing process for {src} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.step_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the src folder of the checkout to compare with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="docs/results/step_speed.json")
    args = ap.parse_args(argv)
    from lmn.atomic import write_json, write_text
    from lmn.records import header

    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"base": args.base, "this": here}
    runs: dict = {}
    for size in ("paper", "large"):
        for r in range(args.rounds):
            order = ("base", "this") if r % 2 == 0 else ("this", "base")
            for name in order:
                res = _child(trees[name], size, args.steps)
                for key in ("lmn_step_us", "native_step_us"):
                    runs.setdefault(f"{size}.{key}", {}).setdefault(name, []).append(round(res[key], 2))
    summary = {}
    for key, by in runs.items():
        b, t = by["base"], by["this"]
        summary[key] = {"base_median": statistics.median(b), "this_median": statistics.median(t),
                        "ratio_of_medians": round(statistics.median(t) / statistics.median(b), 4),
                        "base_min": min(b), "this_min": min(t), "ratio_of_minima": round(min(t) / min(b), 4),
                        "base_runs": b, "this_runs": t}
    command = "python -m research.step_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = header("step_speed", command, 1, ["cpu"], vars(args))
    doc["base_tree"] = args.base
    doc["results"] = summary
    out = Path(args.out)
    write_json(out, doc, indent=1)
    lines = [f"# Streaming-step speed: this tree against {args.base}", "",
             f"Command: `{command}` (commit {doc['git']['commit'][:12]}{' dirty' if doc['git']['dirty'] else ''}, "
             f"{doc['machine'].get('cpu_model')}, 1 thread). Per-token microseconds, batch 1.", "",
             "| step | base median | this median | ratio | base min | this min | ratio of minima |",
             "|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        lines.append(f"| {key} | {s['base_median']} | {s['this_median']} | {s['ratio_of_medians']} | "
                     f"{s['base_min']} | {s['this_min']} | {s['ratio_of_minima']} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
