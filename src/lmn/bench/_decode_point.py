"""One decode measurement in a fresh process; prints one JSON line.

    python -m lmn.bench._decode_point --size paper --model lmn --position 1048576

Builds the model (fixed seed), reaches context P by feeding random ids in chunks, then
times ``warmup + repeats`` single-token decode steps and reports the median / min / max /
mean of the timed ones, the state's bytes at P, and the process's peak RSS (plus, on a
GPU, ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import sys
import time


def measure(args) -> dict:
    import torch

    from .common import StepTimer, device_label, peak_rss_bytes, summarize, sync
    from .models import build_model, make_decoder

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    P = args.position
    torch.manual_seed(args.seed)
    model, info = build_model(args.size, args.model, n_positions=P + args.warmup + args.repeats + 1)
    model = model.to(device).eval()
    decoder = make_decoder(args.model, model, args.chunk)
    gen = torch.Generator().manual_seed(args.seed + 1)  # ids drawn on the CPU: same on every device
    tokens = torch.randint(model.config.vocab_size, (args.warmup + args.repeats, 1), generator=gen).to(device)
    rss_before = peak_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    with torch.no_grad():
        t0 = time.perf_counter()
        done = 0
        while done < P:  # a P-token prompt never exists as one tensor
            n = min(args.chunk, P - done)
            decoder.prefill(torch.randint(model.config.vocab_size, (1, n), generator=gen).to(device))
            done += n
        sync(device)
        prefill_s = time.perf_counter() - t0
        state_bytes = decoder.state_bytes()  # at context P, before any decode step

        timer = StepTimer(device)
        for i in range(args.warmup):
            decoder.step(tokens[i])
        sync(device)
        for i in range(args.warmup, args.warmup + args.repeats):
            with timer:
                logits = decoder.step(tokens[i])
        times = timer.seconds()
        assert logits.shape[-1] == model.config.vocab_size

    result = {
        "status": "ok",
        "size": args.size,
        "model": args.model,
        "position": P,
        "device": device_label(args.device),
        "params": info["params"],
        "params_total": info["params_total"],
        "config": info["config"],
        "latency": summarize(times),
        "state_bytes": state_bytes,
        "state_bytes_end": decoder.state_bytes(),
        "prefill_s": prefill_s,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if cuda:
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmn.bench._decode_point", description=__doc__.splitlines()[0])
    p.add_argument("--size", required=True, help="paper or large")
    p.add_argument("--model", required=True, help="a registered kind usable by bench decode (lmn, gpt2, mamba, ...)")
    p.add_argument("--position", type=int, required=True, help="context length P reached before timing")
    p.add_argument("--repeats", type=int, default=20, help="timed decode steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed decode steps first")
    p.add_argument("--chunk", type=int, default=1024, help="prefill chunk (LMN: max_chunk too)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the random ids")
    p.add_argument("--mem-limit", type=int, default=0, help="RLIMIT_AS in bytes on CPU (0: none)")
    args = p.parse_args(argv)
    if args.position < 1 or args.repeats < 1 or args.warmup < 0 or args.chunk < 1:
        p.error("--position, --repeats and --chunk must be >= 1, --warmup >= 0")
    from .common import child_main

    return child_main(measure, args)

if __name__ == "__main__":
    sys.exit(main())
