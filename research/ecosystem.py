"""The ecosystem's standard tools on an LMN, measured (issue 23): ``lmn train --compile``
against the eager training step, and dynamic int8 quantization against float32.

* ``speed``: ``lmn train --preset paper-lmn`` twice in fresh processes, eager and with
  ``--compile`` (``torch.compile`` of the training step's model, default backend: inductor,
  C++ on a CPU), ``--warmup + --steps`` optimizer steps each at ``--threads`` threads. The
  figure is the training tokens per second over the ``--steps`` steps after the warm-up
  (from the runs' own ``metrics.jsonl``: the step time alone, no evaluation), and the
  wall time of each whole run (the compiled one includes its compilation). The machine's
  load average before and after each run is recorded: other processes share it.
* ``quant``: a trained run (``--run``) in float32 and after
  ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``, on the
  first ``--windows`` windows of the validation split: the loss of each, the largest
  logit difference, how often the next-character argmax agrees, and the int8 model's
  streaming step against its own parallel form on one window.

::

    python -m research.ecosystem --out docs/results/compile --threads 1 --warmup 20 --steps 100 \\
        --rounds 2 --run docs/results/runs/lmn-s1337
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _train_run(out: Path, threads: int, iters: int, compiled: bool) -> dict:
    cmd = [sys.executable, "-m", "lmn.cli", "train", "--preset", "paper-lmn", "--out", str(out), "--max-iters",
           str(iters), "--log-interval", "10", "--eval-interval", str(10 * iters), "--eval-iters", "1",
           "--ckpt-interval", str(10 * iters), "--no-whole-val", "--threads", str(threads)]
    if compiled:
        cmd.append("--compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    load_before = _load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"ecosystem: {' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-3:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 1), "load_before": load_before, "load_after": _load(),
            "train": [r for r in records if r["type"] == "train"]}


def _summary(run: dict, warmup: int) -> dict:
    windows = [r for r in run["train"] if r["step"] > warmup]  # 10 steps each
    tokens_per_step = 16 * 512  # the preset's batch and block
    seconds = sum(10 * tokens_per_step / r["tokens_per_s"] for r in windows)
    return {"tokens_per_s": round(len(windows) * 10 * tokens_per_step / seconds, 1), "steps_timed": 10 * len(windows),
            "first_window_tokens_per_s": round(run["train"][0]["tokens_per_s"], 1), "wall_s": run["wall_s"],
            "load_before": run["load_before"], "load_after": run["load_after"], "command": run["command"],
            "losses": {r["step"]: round(r["loss"], 6) for r in run["train"]}}


def speed(args) -> dict:
    """``--rounds`` rounds of an eager and a compiled run, the order alternating round by round."""
    iters = args.warmup + args.steps
    rounds = {"eager": [], "compile": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in (("eager", "compile") if r % 2 == 0 else ("compile", "eager")):
                run = _train_run(Path(tmp) / f"{name}-{r}", args.threads, iters, name == "compile")
                rounds[name].append(_summary(run, args.warmup))
    result = {name: {"tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in runs), 1), "rounds": runs}
              for name, runs in rounds.items()}
    result["speedup"] = round(result["compile"]["tokens_per_s"] / result["eager"]["tokens_per_s"], 3)
    a, b = rounds["eager"][0]["losses"], rounds["compile"][0]["losses"]
    result["max_loss_diff"] = max(abs(a[s] - b[s]) for s in sorted(set(a) & set(b)))
    return result


def quant(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from lmn.trainer import load_run

    torch.set_num_threads(args.threads)
    model, tokenizer, doc = load_run(args.run)
    cfg = doc["train"]
    from lmn.data import encode_splits
    from lmn.data.corpus import resolve_corpus

    text = resolve_corpus(cfg["data"], download=False).read_text(encoding="utf-8")  # the corpus the run names
    _, val = encode_splits(tokenizer, text, cfg["train_frac"])  # the run's validation ids, any tokenizer
    T = cfg["block_size"]
    ids = val[: args.windows * T + 1].long()
    x, y = ids[:-1].view(args.windows, T), ids[1:].view(args.windows, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ref, got = model(x), q(x)
        loss = lambda logits: F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()  # noqa: E731
        state = q.init_state(1)
        steps = torch.stack([q.step(x[:1, t], state)[0] for t in range(T)], dim=1)
        state = model.init_state(1)
        steps32 = torch.stack([model.step(x[:1, t], state)[0] for t in range(T)], dim=1)
    diff = lambda a, b: (a.double() - b.double()).abs().max().item()  # noqa: E731
    return {"run": str(args.run), "windows": args.windows, "block_size": T, "tokens": x.numel(),
            "quantized_modules": sorted({type(m).__module__ + "." + type(m).__name__ for m in q.modules()
                                         if type(m).__module__.startswith("torch.ao")}),
            "loss_fp32": round(loss(ref), 5), "loss_int8": round(loss(got), 5),
            "loss_diff": round(loss(got) - loss(ref), 5),
            "max_abs_logit_diff": round(diff(got, ref), 5), "max_abs_logit_fp32": round(ref.abs().max().item(), 3),
            "argmax_agreement": round((got.argmax(-1) == ref.argmax(-1)).double().mean().item(), 5),
            "int8_step_vs_int8_parallel": round(diff(steps, got[:1]), 5),
            "fp32_step_vs_fp32_parallel": diff(steps32, ref[:1]),
            "int8_step_vs_fp32": round(diff(steps, ref[:1]), 5)}


def _markdown(doc: dict) -> str:
    s, qd, st = doc["speed"], doc["quant"], doc["settings"]
    git = doc["git"]
    load = max(max(r["load_before"][0], r["load_after"][0]) for n in ("eager", "compile") for r in s[n]["rounds"])
    lines = [
        "# `torch.compile` and dynamic int8 quantization of an LMN", "",
        f"Command: `{doc['command']}` (commit {git['commit'][:12]}{' dirty' if git['dirty'] else ''}, "
        f"{doc['machine'].get('cpu_model')}, {st['threads']} thread(s), torch {doc['machine'].get('torch')}). "
        "Record: `compile.json` beside this page; the runner: `research/ecosystem.py`.", "",
        "## `lmn train --compile` against the eager step (paper preset)", "",
        f"`lmn train --preset paper-lmn` (LMN d 32, 4 layers, batch 16 x 512 tokens), {st['warmup']} warm-up steps "
        f"then {st['steps']} timed steps, {st['rounds']} rounds alternating the order, each run in a fresh process with OMP_NUM_THREADS={st['threads']}. "
        "Tokens per second of the step alone (the runs' `metrics.jsonl`); wall time of the whole run, the "
        "compiled one including its compilation.", "",
        "| step | round | tokens/s (timed steps) | first 10 steps, tokens/s | whole run wall s | "
        "load average before / after |",
        "|---|---|---|---|---|---|"]
    for name in ("eager", "compile"):
        for i, r in enumerate(s[name]["rounds"]):
            lines.append(f"| {name} | {i + 1} | {r['tokens_per_s']:,} | {r['first_window_tokens_per_s']:,} | "
                         f"{r['wall_s']} | {r['load_before'][0]} / {r['load_after'][0]} |")
    lines += ["", f"Medians: eager {s['eager']['tokens_per_s']:,}, compiled {s['compile']['tokens_per_s']:,} tokens/s; "
              f"compiled / eager: **{s['speedup']}x**. Largest difference of the logged training losses "
              f"(every 10 steps) between the first eager and the first compiled run: {s['max_loss_diff']:.2g}.",
              "The first compiled run includes inductor's compilation; a later one finds its kernels in "
              "inductor's on-disk cache (its first 10 steps are faster). "
              + ("On this CPU the compiled step is slower than the eager one. Not profiled; a likely reason is that "
                 "the parallel form's work is large matmuls and reductions over (B, H, d_head, T) tensors that eager "
                 "already runs as single ATen kernels, which inductor's generated C++ does not beat at one thread. "
                 if s["speedup"] < 1 else "") + "Where `--compile` pays is for the user to measure on their device.",
              "Taken under load: other engineers' tests shared the machine's 2 cores (1-minute load average "
              f"up to {load})." if load > 0.5 else "The machine was otherwise idle (load average below 0.5).", "",
              "## Dynamic int8 quantization (`torch.ao.quantization.quantize_dynamic`)", "",
              f"`{qd['run']}` (the paper model, trained), every `nn.Linear` (attention q/k/v/o, feed-forward, head) "
              f"int8; the tree's summarizer is not an `nn.Linear` and stays float32. First {qd['windows']} "
              f"validation windows of {qd['block_size']} characters ({qd['tokens']:,} tokens).", "",
              "| measure | value |", "|---|---|",
              f"| loss, float32 | {qd['loss_fp32']} nats |", f"| loss, int8 | {qd['loss_int8']} nats |",
              f"| loss difference (int8 - float32) | {qd['loss_diff']:+} nats |",
              f"| largest logit difference | {qd['max_abs_logit_diff']} (largest float32 logit {qd['max_abs_logit_fp32']}) |",
              f"| next-character argmax agrees | {qd['argmax_agreement']:.2%} of positions |",
              f"| int8 step vs int8 parallel form (one window) | {qd['int8_step_vs_int8_parallel']} |",
              f"| float32 step vs float32 parallel form | {qd['fp32_step_vs_fp32_parallel']:.2g} |", "",
              "The int8 forms do not agree to float32 rounding, by design of dynamic quantization: each call "
              "quantizes its input with a range of its own, so a token quantized with the other tokens of its "
              "window (parallel form) and alone (streaming step) is rounded differently. That difference is of the "
              "size of the quantization error itself. On a randomly initialised model both stay within 0.1 of the "
              "largest float32 logit (tests/runtime/test_ecosystem.py); on this trained model single logits move "
              f"further ({qd['max_abs_logit_diff']} of {qd['max_abs_logit_fp32']}: d_model 32 leaves few channels to "
              f"average the rounding over), while the loss moves by {qd['loss_diff']:+} nats. Every eager form runs: "
              "parallel, prefill, step, `generate`.", ""]
    if "step_speed" in doc:  # research.step_speed's record, merged in (--step-speed)
        sp = doc["step_speed"]
        lines += ["## `LMN.step` speed with the module-call paths", "",
                  f"Every fast path now checks that a linear is a plain `nn.Linear` before reading its weights "
                  f"(estimated by timing the checks alone: about 2 microseconds a token in all). `{sp['command']}` (commit {sp['git']['commit'][:12]}"
                  f"{' dirty' if sp['git']['dirty'] else ''}; BASE: the tree before these changes), per-token "
                  "microseconds, batch 1, one thread, taken under load; the native step's code did not change, so "
                  "its ratios show the noise.", "",
                  "| step | base median | this median | ratio | base min | this min | ratio of minima |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in sp["results"].items():
            lines.append(f"| {key} | {r['base_median']:.1f} | {r['this_median']:.1f} | {r['ratio_of_medians']} | "
                         f"{r['base_min']:.1f} | {r['this_min']:.1f} | {r['ratio_of_minima']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.ecosystem", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/compile", help="writes OUT.json and OUT.md")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20, help="steps before the timed ones (a multiple of 10)")
    ap.add_argument("--steps", type=int, default=100, help="timed steps (a multiple of 10)")
    ap.add_argument("--rounds", type=int, default=2, help="eager and compiled runs each, alternating")
    ap.add_argument("--run", default="docs/results/runs/lmn-s1337", help="trained run for the quantization part")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--step-speed", help="a research.step_speed JSON record to report beside (its own command)")
    ap.add_argument("--render", help="only write OUT.md again from this ecosystem JSON record")
    args = ap.parse_args(argv)
    if args.warmup % 10 or args.steps % 10 or args.steps <= 0:
        ap.error("--warmup and --steps are multiples of 10 (the runs log every 10 steps)")
    from lmn.atomic import write_json, write_text
    from lmn.records import header

    out = Path(args.out)
    if args.render:
        doc = json.loads(Path(args.render).read_text(encoding="utf-8"))
        if args.step_speed:
            doc["step_speed"] = json.loads(Path(args.step_speed).read_text(encoding="utf-8"))
        write_json(out.with_suffix(".json"), doc, indent=1)
        write_text(out.with_suffix(".md"), _markdown(doc))
        return 0
    command = "python -m research.ecosystem " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = header("ecosystem", command, args.threads, ["cpu"], vars(args))
    doc["quant"] = quant(args)
    doc["speed"] = speed(args)
    if args.step_speed:
        doc["step_speed"] = json.loads(Path(args.step_speed).read_text(encoding="utf-8"))
    write_json(out.with_suffix(".json"), doc, indent=1)
    write_text(out.with_suffix(".md"), _markdown(doc))
    print(_markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
