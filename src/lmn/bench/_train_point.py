"""One training-step measurement in a fresh process; prints one JSON line.

    python -m lmn.bench._train_point --model lmn --batch 1 --length 32768

A step is forward + cross-entropy + backward on random ids (no optimizer: its cost does
not depend on T). Reports the median / min / max of the timed steps and how far the step
raised the process's peak RSS above its level after building the model and the batch
(on a GPU also the growth of ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import sys
import time


def measure(args) -> dict:
    import torch
    import torch.nn.functional as F

    from .common import StepTimer, device_label, peak_rss_bytes, summarize, sync
    from lmn.kinds import get_kind

    from .models import build_model

    if args.mmap_threshold:
        from .common import set_malloc_mmap_threshold

        set_malloc_mmap_threshold(args.mmap_threshold)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    B, T = args.batch, args.length
    torch.manual_seed(args.seed)
    model, info = build_model(args.size, args.model, n_positions=T)
    model = model.to(device).train()
    V = info["config"]["vocab_size"]
    gen = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randint(V, (B, T), generator=gen).to(device)
    targets = torch.randint(V, (B, T), generator=gen).to(device)

    bench_forward = get_kind(args.model).bench.bench_forward

    def forward():
        return bench_forward(model, idx)

    def train_step():
        loss = F.cross_entropy(forward().flatten(0, 1), targets.flatten())
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return loss

    sync(device)
    rss_before = peak_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        alloc_before = torch.cuda.memory_allocated()

    timer = StepTimer(device)
    t0 = time.perf_counter()
    last = 0.0
    for _ in range(args.warmup):
        s = time.perf_counter()
        train_step()
        sync(device)
        last = time.perf_counter() - s
    timed = 0
    while timed < args.repeats:
        # a long step: stop once one more would overrun the budget (at least one is timed)
        if timed >= 1 and time.perf_counter() - t0 + last > args.budget:
            break
        s = time.perf_counter()
        with timer:
            loss = train_step()
        sync(device)
        last = time.perf_counter() - s
        timed += 1
    times = timer.seconds()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")

    peak = peak_rss_bytes()
    result = {
        "status": "ok",
        "size": args.size,
        "model": args.model,
        "batch": B,
        "length": T,
        "device": device_label(args.device),
        "params": info["params"],
        "params_total": info["params_total"],
        "config": info["config"],
        "time": summarize(times),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": peak - rss_before,
    }
    if cuda:
        result["cuda_peak_growth_bytes"] = torch.cuda.max_memory_allocated() - alloc_before
        result["peak_growth_bytes"] = result["cuda_peak_growth_bytes"]  # the device's memory is what fills up
        result["peak_rss_growth_bytes"] = peak - rss_before
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmn.bench._train_point", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="paper", help="paper or large")
    p.add_argument("--model", required=True, help="a registered kind usable by bench train (lmn, lmn-ckpt, gpt2, ...)")
    p.add_argument("--batch", type=int, required=True, help="sequences per batch B")
    p.add_argument("--length", type=int, required=True, help="sequence length T")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (at most)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--budget", type=float, default=float("inf"), help="seconds after which no further "
                   "timed step is started (one always is)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the random ids")
    p.add_argument("--mem-limit", type=int, default=0, help="RLIMIT_AS in bytes on CPU (0: none)")
    p.add_argument("--mmap-threshold", type=int, default=0, help="fix glibc's mmap threshold at this many "
                   "bytes (0: glibc's default, dynamic)")
    args = p.parse_args(argv)
    if args.batch < 1 or args.length < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch, --length and --repeats must be >= 1, --warmup >= 0")
    from .common import child_main

    return child_main(measure, args)

if __name__ == "__main__":
    sys.exit(main())
