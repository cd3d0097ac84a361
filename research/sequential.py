"""Fine-tuning in sequential mode (the paper's "next checks"): does a trained LMN learn to
use distant context when its streaming state is carried across consecutive windows?

From a trained run, two fine-tunings with the same data budget, optimizer and seed:

* ``random``: the Table 1 protocol continued: ``batch`` windows of ``block`` characters at
  random offsets of the training split, every window from an empty state;
* ``sequential``: the training split cut into ``batch`` streams read in order, one window
  per stream per step, each window continuing the previous window's state (detached:
  truncated backpropagation through one window). Streams restart, with an empty state,
  when they reach their end, so the model reads contexts up to ``len(train)/batch`` tokens;
* ``mixed``: the two alternate, step by step (the sequential steps continue each other's
  state), so that the model keeps seeing windows that start a stream;
* ``long``: random windows from an empty state, as ``random``, but every other step reads
  longer ones: a length ``block * 2**j`` drawn uniformly from ``2 * block .. --max-window``
  with the batch shrunk to keep ``batch * block`` tokens per step (the same tokens, and
  full backpropagation through every window). The tree then builds and reads, in
  training, the levels that a long stream adds (up to ``log2(--max-window)``).

With ``--from-scratch`` the arms train a freshly initialised model of the run's
configuration (seeded ``--seed``) instead of fine-tuning the trained one: the same
training modes from step 0, the ``random`` arm then being the Table 1 protocol itself
(there is no ``none`` arm). ``--stream-windows N`` restarts each sequential stream after
``N`` windows at a fresh offset, so that windows starting from an empty state come ``N``
times as often (contexts up to ``N`` windows long).

Both are then measured the same way: the standard estimate (random validation windows
from an empty state) and the same-tokens context curve of :mod:`research.context`. The
``random`` arm is the control: it separates what carrying the state does from what more
training does.

    python -m research.sequential docs/results/runs/lmn-s1337 --steps 400 \\
        --out docs/results/probes/sequential
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from research.context import CONTEXTS, plot_curves, rerender, same_tokens_curve


MODES = ("random", "sequential", "mixed", "long")


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


class Streams:
    """``batch`` streams over ``ids``; window ``s`` of every stream, in order.

    By default (``restart=0``) the split is cut into ``batch`` equal streams read from
    start to end, so each restarts (with an empty state) once per pass. With ``restart=N``
    every stream restarts after ``N`` windows instead, at a fresh offset drawn from
    ``seed`` (one per stream and pass): contexts of up to ``N`` windows, and fresh starts
    ``N`` times as often as windows are read."""

    def __init__(self, ids: torch.Tensor, batch: int, block: int, restart: int = 0, seed: int = 0):
        self.length = (len(ids) - 1) // batch // block * block  # whole windows per stream
        self.ids, self.batch, self.block = ids, batch, block
        self.windows = self.length // block
        if restart < 0:
            raise ValueError(f"restart must be >= 0 windows, got {restart}")
        if restart and restart * block + 1 > len(ids):
            raise ValueError(f"restart {restart} windows of {block} need {restart * block + 1} tokens; "
                             f"the split has {len(ids)}")
        self.restart, self.seed = restart, seed

    def window(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(x, y, fresh)``: the ``step``-th windows and whether the streams restart here."""
        if self.restart:
            w = step % self.restart
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step // self.restart)
            starts = torch.randint(0, len(self.ids) - self.restart * self.block, (self.batch,), generator=gen)
        else:
            w = step % self.windows
            starts = torch.arange(self.batch) * self.length
        rows = (starts + w * self.block)[:, None] + torch.arange(self.block + 1)
        chunk = self.ids[rows]
        return chunk[:, :-1], chunk[:, 1:], w == 0


def long_lengths(block: int, batch: int, max_window: int) -> list[tuple[int, int]]:
    """``(length, batch)`` of the long windows of the ``long`` mode: ``block * 2**j`` for
    ``j >= 1`` up to ``max_window``, each with ``batch * block // length`` windows (the same
    tokens per step as ``batch`` windows of ``block``)."""
    out, length = [], 2 * block
    while length <= max_window:
        if batch * block % length:
            raise ValueError(f"--max-window {max_window}: {batch} x {block} tokens per step do not split into "
                             f"windows of {length}; give a max window of at most {batch * block}")
        out.append((length, batch * block // length))
        length *= 2
    if not out:
        raise ValueError(f"--max-window must be at least 2 x --block = {2 * block}, got {max_window}")
    return out


def fine_tune(model, train_ids, mode: str, steps: int, batch: int, block: int, lr: float, seed: int,
              log_every: int = 10, restart: int = 0, max_window: int = 0) -> list[dict]:
    """Fine-tune ``model`` in place; returns the training-loss log. The optimizer is the
    trainer's (:func:`lmn.trainer.optim.make_optimizer`: AdamW, weight decay 0.01 on every
    parameter, constant ``lr``); the loop is this study's own (research/README.md)."""
    from lmn.trainer import TrainConfig
    from lmn.trainer.optim import make_optimizer

    lengths = long_lengths(block, batch, max_window) if mode == "long" else []
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, TrainConfig(model="lmn", lr=lr, weight_decay=0.01, decay="all"))
    streams = Streams(train_ids, batch, block, restart=restart, seed=seed)
    model.train()
    state, log, t0 = None, [], time.perf_counter()
    seq_step = 0
    for step in range(steps):
        if mode == "sequential" or (mode == "mixed" and step % 2 == 1):
            x, y, fresh = streams.window(seq_step)
            seq_step += 1
            if fresh or state is None:
                state = model.init_state(batch)
            logits, state = model(x, state=state)
            state = state.detach()
        else:
            n, length = batch, block
            if mode == "long" and step % 2 == 1:
                length, n = lengths[int(torch.randint(0, len(lengths), (1,), generator=gen))]
            starts = torch.randint(0, len(train_ids) - length - 1, (n,), generator=gen)
            rows = starts[:, None] + torch.arange(length + 1)
            chunk = train_ids[rows]
            x, y = chunk[:, :-1], chunk[:, 1:]
            logits = model(x)
        loss = _loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0:
            log.append({"step": step + 1, "loss": loss.item(), "elapsed_s": time.perf_counter() - t0})
    model.eval()
    return log


def save_arm(model, run: str, run_doc: dict, dest: Path, steps: int) -> Path:
    """Write ``model`` as a run directory that :func:`lmn.trainer.load_run` reads: the source
    run's config and tokenizer, and the arm's weights (a single-checkpoint run)."""
    import shutil

    from safetensors.torch import save_model

    from lmn.atomic import atomic_path
    from lmn.trainer.rundir import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, weights_metadata

    dest.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, TOKENIZER_FILE):
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(Path(run) / name, tmp)
    train = run_doc["train"]
    with atomic_path(dest / MODEL_FILE) as tmp:
        save_model(model, str(tmp), metadata=weights_metadata(train["model"], train["model_config"], steps))
    return dest


@torch.no_grad()
def estimate(model, ids: torch.Tensor, block: int, batches: int, batch: int, seed: int) -> float:
    """Mean loss over random windows, each from an empty state (the Table 1 estimate)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        starts = torch.randint(0, len(ids) - block - 1, (batch,), generator=gen)
        chunk = ids[starts[:, None] + torch.arange(block + 1)]
        total += _loss(model(chunk[:, :-1]), chunk[:, 1:]).item()
    return total / batches


def main(argv=None) -> int:
    from lmn.atomic import write_json, write_text
    from lmn.records import header
    from lmn.data import encode_splits, load_corpus
    from lmn.trainer import load_run

    p = argparse.ArgumentParser(prog="python -m research.sequential", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="a trained LMN run directory")
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    p.add_argument("--render", action="store_true", help="only re-render OUT.md/OUT.png from OUT.json (with --notes)")
    p.add_argument("--notes", help="markdown file appended to the report")
    p.add_argument("--modes", default="random,sequential")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--blocks", type=int, default=16, help="scored blocks of the context curve")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stream-windows", type=int, default=0,
                   help="sequential windows: restart each stream (empty state, fresh random offset) after this "
                        "many windows (0: read each of the batch's equal streams to its end)")
    p.add_argument("--max-window", type=int, default=8192,
                   help="mode long: the longest window (block * 2**j; at most batch * block tokens)")
    p.add_argument("--save-dir",
                   help="keep each arm's weights as a loadable run directory SAVE_DIR/<mode>-s<seed> (for the "
                        "other probes: context, levels)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train a fresh model of the run's configuration (seed --seed) instead of fine-tuning it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.render:
        rerender(out, args.notes, render, _plot)
        return 0
    if not args.run:
        p.error("give the run directory (or --render)")
    contexts = [int(c) for c in args.contexts.split(",")]
    command = "python -m research.sequential " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = header("probe-sequential", command, args.threads, ["cpu"], {k: v for k, v in vars(args).items()})
    doc["arms"] = []
    if args.stream_windows < 0:
        p.error(f"--stream-windows must be >= 0, got {args.stream_windows}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(MODES)}")
    if "long" in modes:
        try:
            long_lengths(args.block, args.batch, args.max_window)
        except ValueError as e:
            p.error(str(e))
    arms = ([] if args.from_scratch else ["none"]) + modes
    if args.save_dir:  # checked before any training: a saved arm is never overwritten
        taken = [str(Path(args.save_dir) / f"{m}-s{args.seed}") for m in arms
                 if (Path(args.save_dir) / f"{m}-s{args.seed}").exists()]
        if taken:
            p.error(f"--save-dir: {', '.join(taken)} already exist(s); remove them or give another --save-dir")
    for mode in arms:
        model, tokenizer, run_doc = load_run(args.run)
        if run_doc["train"]["model"] != "lmn":
            raise SystemExit(f"error: {args.run} is not an LMN run")
        if args.from_scratch:
            from lmn.trainer.models import build_model

            torch.manual_seed(args.seed)
            model = build_model(run_doc["train"]["model"], run_doc["train"]["model_config"])
        _, text = load_corpus(run_doc["train"]["data"])
        train_ids, val_ids = encode_splits(tokenizer, text, run_doc["train"]["train_frac"])
        print(f"arm {mode} ...", flush=True)
        t0 = time.perf_counter()
        log = [] if mode == "none" else fine_tune(model, train_ids, mode, args.steps, args.batch, args.block,
                                                  args.lr, args.seed, restart=args.stream_windows,
                                                  max_window=args.max_window)
        arm = {"mode": mode, "steps": 0 if mode == "none" else args.steps, "train_log": log,
               "fine_tune_s": time.perf_counter() - t0,
               "val_estimate": estimate(model, val_ids, args.block, args.eval_batches, args.batch, args.seed),
               "context": same_tokens_curve(model, val_ids, contexts, args.block, args.blocks, None)}
        if args.save_dir:
            arm["saved"] = str(save_arm(model, args.run, run_doc, Path(args.save_dir) / f"{mode}-s{args.seed}",
                                        arm["steps"]))
        doc["arms"].append(arm)
        write_json(out.with_suffix(".json"), doc)
    write_text(out.with_suffix(".md"), render(doc))
    _plot(doc, out.with_suffix(".png"))
    print(render(doc))
    return 0


def render(doc: dict) -> str:
    ctx = doc["settings"]["contexts"].split(",") if isinstance(doc["settings"]["contexts"], str) else \
        doc["settings"]["contexts"]
    ctx = [str(c) for c in ctx]
    s = doc["settings"]
    title = "Training from scratch in sequential mode" if s.get("from_scratch") else "Fine-tuning in sequential mode"
    lines = [f"# {title}", "", f"Command: `{doc['command']}`  ",
             f"Commit {doc['git']['commit']}{' (dirty tree)' if doc['git']['dirty'] else ''}; "
             f"{doc['machine']['cpu_model']}, {doc['machine']['threads']} thread(s). "
             f"{'Trained from scratch in the configuration of' if s.get('from_scratch') else 'From'} `{s['run']}`: "
             f"{s['steps']} steps of {s['batch']} x {s['block']} characters, AdamW lr {s['lr']}, seed {s['seed']}"
             + (f"; sequential streams restart every {s['stream_windows']} windows ({s['stream_windows'] * s['block']:,} "
                "characters) at fresh offsets" if s.get("stream_windows") else "") + ".", "",
             f"| arm | val estimate ({s['eval_batches']} random windows) | " + " | ".join(f"P={c}" for c in ctx) + " |",
             "|---|---:|" + "---:|" * len(ctx)]
    for arm in doc["arms"]:
        name = {"none": "trained run, as committed", "random": "+ random windows (control)",
                "sequential": "+ sequential mode", "mixed": "+ mixed (random and sequential alternate)",
                "long": "+ long windows every other step"}.get(arm["mode"], arm["mode"])
        if s.get("from_scratch"):
            name = {"random": "random windows (the Table 1 protocol)", "sequential": "sequential mode",
                    "mixed": "mixed (random and sequential alternate)",
                    "long": f"long windows every other step (to {s.get('max_window', '?')})"}[arm["mode"]]
        cells = [f"{arm['context']['loss'][c]:.4f}" for c in ctx]
        lines.append(f"| {name} | {arm['val_estimate']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "P: characters of context before the same scored validation blocks (loss in nats on the "
              f"blocks only; {doc['arms'][0]['context']['n_blocks']} blocks of {doc['arms'][0]['context']['block']})."]
    if doc.get("notes"):
        lines += ["", doc["notes"].strip()]
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: Path) -> None:
    title = ("Trained from scratch: sequential / mixed vs random windows" if doc["settings"].get("from_scratch")
             else "Fine-tuned in sequential mode vs random windows")
    plot_curves([(arm["mode"], arm["context"]["loss"]) for arm in doc["arms"]], path, title)


if __name__ == "__main__":
    raise SystemExit(main())
