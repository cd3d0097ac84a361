"""All GPU measurements of issue 13 in one prepared run (a lent GPU, ~15 device-minutes).

    PYTHONPATH=src python3 -m research.gpu_session all --out $OUT --budget 420 --parts env,parity,train,...

(from the repository root; until the move to ``research/`` it was ``lmn.bench.gpu_session``).

Each part runs in its own process with a timeout and appends one JSON line per
measurement to ``OUT/results.jsonl`` (a part that dies leaves what it wrote), so a
killed or crashed part costs only itself. Parts, in order of priority:

* ``env``: card, driver, versions, commit (``LMN_COMMIT``).
* ``parity``: the fused Triton path against the PyTorch path (logits and every
  parameter's gradient) and against :func:`lmn.reference_forward` (logits) on CUDA in
  float32, for strides 2, 3, 4, both read rules, lengths around powers of the stride and
  across the PyTorch path's chunk boundaries; bf16 autocast differences are reported.
* ``train``: forward + cross-entropy + backward (no optimizer), CUDA-event timed, for HF
  GPT-2 with SDPA (no dropout), LMN's PyTorch path and LMN's fused path, float32 and bf16
  autocast; ``paper`` 16 x 512 and ``large512`` (LMN d 512, 8 layers, 8 heads, 2 banks vs
  GPT-2 n_embd 512, 8 layers, 8 heads, inner 3072: matched parameters) at 2K / 8K / 32K.
* ``decode``: per-token step at context 32K, batch 1 and 64 (LMN.step vs GPT-2's
  DynamicCache).
* ``profile``: the top CUDA kernels of one LMN fused step (large512, 8K, bf16).
* ``compile``: ``torch.compile`` of LMN's PyTorch path (default mode, and
  ``reduce-overhead`` = CUDA graphs) and of the fused path.
* ``long``: the large512 size, 1 x 256K, bf16: LMN fused vs GPT-2 (one timed step each).
* ``ddp``: one real training step through DDP and FSDP2 on one GPU against the
  one-process step (``examples/parallel_step_check.py`` under ``torchrun``; issue 12).
* ``nanogpt``: nanoGPT's Shakespeare-char setting (``lmn train --preset nanogpt-lmn`` and
  ``nanogpt-gpt2``, ~10.7M parameters each; item 4), each for at most ``--nanogpt-s``
  seconds; the run directories (metrics.jsonl, config.json, final.json) are copied to
  ``OUT/nanogpt/`` without checkpoints. Needs ``LMN_DATA_DIR`` (or ``--data``) to hold
  tinyshakespeare.txt. Checkpoints every 250 steps, so an unfinished run resumes.

``decode`` also times ``lmn-graph`` (the step captured as a CUDA graph, :mod:`lmn.graphs`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARTS = ("env", "parity", "train", "decode", "profile", "compile", "long")  # in order of priority
TIMEOUTS = {"env": 30, "parity": 90, "train": 240, "decode": 120, "profile": 40, "compile": 170, "long": 90,
            "train2": 150, "compile2": 200, "ddp": 90, "nanogpt": 600}

# "large512" is this study's own size, not the registry's "large" (lmn.bench.models: LMN d 256):
# d 512 with GPT-2 matched to it. The records of docs/results/gpu/ made before the move to
# research/ call it "large".
LMN_SIZES = {"paper": {}, "large512": {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_banks": 2},
             "tiny": {"d_model": 16, "n_layers": 2, "n_heads": 2}}
GPT2_SIZES = {"paper": {}, "large512": {"n_embd": 512, "n_layer": 8, "n_head": 8, "n_inner": 3072},
              "tiny": {"n_embd": 16, "n_layer": 2, "n_head": 2, "n_inner": 64}}


# ---------------------------------------------------------------------- helpers
def emit(out: str, record: dict) -> None:
    record = {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    line = json.dumps(record)
    print(line, flush=True)
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write(line + "\n")


def build(kind: str, size: str, T: int, device):
    """``(model, n_params)``: LMN variants (``lmn``, ``lmn-fused``) or ``gpt2``."""
    import torch

    torch.manual_seed(0)
    if kind.startswith("lmn"):
        from lmn import LMN, LMNConfig

        model = LMN(LMNConfig(**LMN_SIZES[size]))
        model.fused_kernels = kind.startswith("lmn-fused")
    else:
        from lmn.kinds import get_kind

        spec = get_kind("gpt2")
        model = spec.build({**GPT2_SIZES[size], "n_positions": max(T, 512)})
    n = sum(p.numel() for p in model.parameters())
    if kind == "gpt2":
        n -= (max(T, 512) - 512) * model.config.n_embd  # position table counted at 512 rows
    return model.to(device), n


def time_steps(step, device, warmup: int, repeats: int, budget_s: float) -> dict:
    import torch

    from lmn.bench.common import StepTimer, summarize, sync

    for _ in range(warmup):
        step()
    sync(device)
    timer = StepTimer(device)
    t0 = time.perf_counter()
    n = 0
    while n < repeats and (n == 0 or time.perf_counter() - t0 < budget_s):
        with timer:
            step()
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return summarize(timer.seconds())


# ---------------------------------------------------------------------- parts
def part_env(args) -> None:
    import platform

    import torch

    rec = {"part": "env", "commit": os.environ.get("LMN_COMMIT", "unknown"), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device}
    try:
        import triton

        rec["triton"] = triton.__version__
    except ImportError:
        rec["triton"] = None
    try:
        import transformers

        rec["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec.update(card=p.name, sms=p.multi_processor_count, memory_bytes=p.total_memory,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        try:
            rec["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception as e:  # noqa: BLE001
            rec["nvidia_smi"] = repr(e)
    emit(args.out, rec)


def part_parity(args) -> None:
    import torch

    from lmn import LMN, LMNConfig, reference_forward

    device = torch.device(args.device)
    cases = [(2, "latest", 2, 0), (2, "digits", 1, 0), (3, "latest", 2, 0), (3, "digits", 1, 1), (4, "digits", 2, 0),
             (4, "latest", 1, 2)]
    for k, read, nb, expand in cases:
        torch.manual_seed(k)
        cfg = LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, ff_mult=2, n_banks=nb, expand=expand,
                        stride=k, read=read, chunk_size=64)
        model = LMN(cfg).to(device)
        with torch.no_grad():  # well-conditioned weights, every parameter non-trivial (as tests/core/test_parity)
            for name, p in model.named_parameters():
                if "memory" in name and p.dim() >= 2:
                    p.normal_(0.0, 0.8 / (p[0].numel() if "summarizer.weight" not in name else p.shape[1]) ** 0.5)
                elif "norm" in name:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif p.dim() == 1:
                    p.copy_(0.1 * torch.randn_like(p))
        lengths = sorted({n for m in (1, 2, 3, 4, 5, 6) for n in (k**m - 1, k**m, k**m + 1) if 1 <= n <= 300})
        lengths += [1000, 4097 if k == 2 else 3 * 4**5 + 5]
        ref_lengths = {max(n for n in lengths if n <= 300), k**3, k**3 + 1}
        if args.size == "tiny":  # (a functional check of this script, e.g. under the interpreter)
            lengths = [n for n in lengths if n <= 2 * k**2]
        worst = {"logits_vs_pytorch": 0.0, "grads_vs_pytorch": 0.0, "logits_vs_reference": 0.0}
        params = list(model.parameters())
        for T in lengths:
            idx = torch.randint(0, 11, (2, T), device=device)
            outs = []
            for fused in (False, True):
                model.fused_kernels = fused
                logits = model(idx)
                w = torch.linspace(-1, 1, logits.shape[-1], device=device)
                grads = torch.autograd.grad((logits * w).sum(), params, allow_unused=True)
                outs.append((logits.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
            (a, ga), (b, gb) = outs
            worst["logits_vs_pytorch"] = max(worst["logits_vs_pytorch"], (a - b).abs().max().item())
            g_abs = max((x - y).abs().max().item() for x, y in zip(ga, gb))
            g_rel = g_abs / max(max(y.abs().max().item() for y in gb), 1e-30)  # relative to the largest gradient
            worst["grads_vs_pytorch"] = max(worst["grads_vs_pytorch"], g_abs)
            worst["grads_vs_pytorch_rel"] = max(worst.get("grads_vs_pytorch_rel", 0.0), g_rel)
            worst["grad_abs_max"] = max(worst.get("grad_abs_max", 0.0), max(y.abs().max().item() for y in gb))
            if T <= 300:
                worst["grads_vs_pytorch_T<=300"] = max(worst.get("grads_vs_pytorch_T<=300", 0.0), g_abs)
            if T in ref_lengths:
                with torch.no_grad():
                    import copy  # the reference on the CPU: the plainest code, wherever it runs

                    ref = reference_forward(copy.deepcopy(model).cpu(), idx.cpu()).to(device)
                worst["logits_vs_reference"] = max(worst["logits_vs_reference"], (b - ref).abs().max().item())
        # bf16 autocast: fused vs PyTorch path (both in bf16: a difference of rounding, reported)
        idx = torch.randint(0, 11, (2, 1000 if args.size != "tiny" else 20), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model.fused_kernels = False
            a = model(idx).float()
            model.fused_kernels = True
            b = model(idx).float()
        emit(args.out, {"part": "parity", "stride": k, "read": read, "n_banks": nb, "expand": expand,
                        "lengths": lengths, "dtype": "float32", **worst,
                        "pass_1e-5": all(worst[key] <= 1e-5 for key in ("logits_vs_pytorch", "logits_vs_reference",
                                                                          "grads_vs_pytorch_rel", "grads_vs_pytorch_T<=300")),
                        "bf16_autocast_logits_fused_vs_pytorch": (a - b).abs().max().item()})


def _graphed_forward(model, idx, bf16: bool):
    """``idx -> logits`` with everything after the token embedding captured as CUDA graphs
    (forward and backward, ``torch.cuda.make_graphed_callables``): one replay per pass
    instead of thousands of kernel launches. The embedding and the input checks (which
    read the ids on the host) stay outside the graphs."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    lmn = hasattr(model, "blocks")

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, h):
            if lmn:
                for block in model.blocks:
                    h, _ = block(h, chunk=model._chunk)
                return model.head(model.ln_f(h))
            return model.hf(inputs_embeds=h, use_cache=False).logits

    emb = model.tok_emb if lmn else model.hf.get_input_embeddings()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        sample = F.embedding(idx, emb.weight).detach().requires_grad_()
        graphed = torch.cuda.make_graphed_callables(Body(), (sample,), allow_unused_input=True)

    def forward(ids):
        return graphed(F.embedding(ids, emb.weight))

    return forward


def _train_point(args, size, kind, B, T, dtype, compile_mode=None) -> dict:
    import torch
    import torch.nn.functional as F

    device = torch.device(args.device)
    rec = {"part": "train", "size": size, "model": kind, "batch": B, "length": T, "dtype": dtype,
           "compile": compile_mode}
    graphs = kind.endswith("+graphs")
    try:
        torch.cuda.empty_cache() if device.type == "cuda" else None
        model, n = build(kind.split("+")[0], size, T, device)
        model.train()
        rec["params"] = n
        fwd = model
        gen = torch.Generator().manual_seed(1)
        V = 65
        idx = torch.randint(V, (B, T), generator=gen).to(device)
        tgt = torch.randint(V, (B, T), generator=gen).to(device)
        params = list(model.parameters())
        if compile_mode:
            fwd = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
        if graphs:
            t0 = time.perf_counter()
            fwd = _graphed_forward(model, idx, dtype == "bf16")
            rec["capture_s"] = time.perf_counter() - t0

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16", cache_enabled=not graphs):
                logits = fwd(idx)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())
            loss.backward()
            for p in params:
                p.grad = None
            return loss

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        step()  # first step: kernel compilation / torch.compile
        if device.type == "cuda":
            torch.cuda.synchronize()
        rec["first_step_s"] = time.perf_counter() - t0
        rec["time"] = time_steps(step, device, warmup=1, repeats=args.repeats, budget_s=args.point_budget)
        rec["ms"] = rec["time"]["median_s"] * 1e3
        if device.type == "cuda":
            rec["peak_growth_bytes"] = torch.cuda.max_memory_allocated() - base
        rec["status"] = "ok"
        del model, fwd
    except torch.cuda.OutOfMemoryError as e:
        rec.update(status="oom", error=str(e)[:300])
    except Exception as e:  # noqa: BLE001
        rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:500]}", tb=traceback.format_exc()[-1500:])
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def _train_grid(size_arg: str):
    if size_arg == "tiny":
        return [("tiny", 2, 64, "fp32")]
    grid = [("paper", 16, 512, "fp32"), ("paper", 16, 512, "bf16")]
    for T, B in ((2048, 8), (8192, 2), (32768, 1)):
        grid += [("large512", B, T, "bf16"), ("large512", B, T, "fp32")]
    return grid


def part_train(args) -> None:
    for size, B, T, dtype in _train_grid(args.size):
        for kind in ("gpt2", "lmn-fused", "lmn"):
            emit(args.out, _train_point(args, size, kind, B, T, dtype))


def part_train2(args) -> None:
    """The fused path again (after a kernel change) and with CUDA graphs, GPT-2 in the same run."""
    kinds = ("gpt2", "lmn-fused", "lmn-fused+graphs", "gpt2+graphs")
    for size, B, T, dtype in _train_grid(args.size):
        for kind in kinds if size != "large512" or T <= 8192 else kinds[:2]:
            emit(args.out, _train_point(args, size, kind, B, T, dtype))


def part_compile2(args) -> None:
    grid = [("paper", 16, 512, "fp32", "lmn", "reduce-overhead"), ("paper", 16, 512, "fp32", "lmn-fused", "default")]
    for size, B, T, dtype, kind, mode in grid:
        emit(args.out, _train_point(args, size, kind, B, T, dtype, compile_mode=mode))


def part_compile(args) -> None:
    grid = [("paper", 16, 512, "fp32", "lmn", "default"), ("paper", 16, 512, "fp32", "lmn", "reduce-overhead"),
            ("paper", 16, 512, "fp32", "lmn-fused", "default"), ("paper", 16, 512, "bf16", "lmn", "default"),
            ("large512", 2, 8192, "bf16", "lmn", "default"), ("large512", 2, 8192, "bf16", "lmn-fused", "default")]
    if args.size == "tiny":
        grid = [("tiny", 2, 64, "fp32", "lmn", "default")]
    for size, B, T, dtype, kind, mode in grid:
        emit(args.out, _train_point(args, size, kind, B, T, dtype, compile_mode=mode))


def part_long(args) -> None:
    T = 262144 if args.size != "tiny" else 128
    size = "large512" if args.size != "tiny" else "tiny"
    saved = args.repeats
    args.repeats = 1
    for kind in ("lmn-fused", "gpt2"):
        emit(args.out, _train_point(args, size, kind, 1, T, "bf16"))
    args.repeats = saved


def part_decode(args) -> None:
    import torch

    from lmn.bench.common import StepTimer, summarize
    from lmn.bench.models import make_decoder

    device = torch.device(args.device)
    P = 32768 if args.size != "tiny" else 100
    size = "paper" if args.size != "tiny" else "tiny"
    for B in (1, 64):
        for kind in ("lmn", "lmn-graph", "gpt2"):
            if kind == "lmn-graph" and device.type != "cuda":
                continue  # CUDA graphs
            rec = {"part": "decode", "size": size, "model": kind, "batch": B, "position": P, "dtype": "fp32"}
            try:
                model, n = build(kind, size, P + 64, device)
                model.eval()
                rec["params"] = n
                dec = make_decoder(kind, model, 4096)
                gen = torch.Generator().manual_seed(2)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    done = 0
                    while done < P:
                        c = min(4096, P - done)
                        dec.prefill(torch.randint(65, (B, c), generator=gen).to(device))
                        done += c
                    torch.cuda.synchronize() if device.type == "cuda" else None
                    rec["prefill_s"] = time.perf_counter() - t0
                    toks = torch.randint(65, (30, B), generator=gen).to(device)
                    for i in range(5):
                        dec.step(toks[i])
                    timer = StepTimer(device)
                    for i in range(5, 30):
                        with timer:
                            dec.step(toks[i])
                    rec["latency"] = summarize(timer.seconds())
                    rec["ms"] = rec["latency"]["median_s"] * 1e3
                    rec["state_bytes"] = dec.state_bytes()
                rec["status"] = "ok"
                del model, dec
            except Exception as e:  # noqa: BLE001
                rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:500]}")
            finally:
                torch.cuda.empty_cache() if device.type == "cuda" else None
            emit(args.out, rec)


def part_profile(args) -> None:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    size, B, T = ("large512", 2, 8192) if args.size != "tiny" else ("tiny", 2, 64)
    for kind in ("lmn-fused", "lmn") if not args.fused_only else ("lmn-fused",):
        model, _ = build(kind, size, T, device)
        idx = torch.randint(65, (B, T), device=device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(idx).flatten(0, 1).float(), idx.flatten())
            loss.backward()
            model.zero_grad(set_to_none=True)

        step()
        step()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step()
            torch.cuda.synchronize() if device.type == "cuda" else None
        events = prof.key_averages()
        own = lambda e: getattr(e, "self_device_time_total", 0)  # noqa: E731  (kernels: their own time)
        kernels = [e for e in events if own(e) > 0]
        rows = [{"name": e.key[:100], "count": e.count, "device_ms": own(e) / 1e3}
                for e in sorted(kernels, key=own, reverse=True)[:20]]
        emit(args.out, {"part": "profile", "size": size, "model": kind, "batch": B, "length": T, "dtype": "bf16",
                        "top_kernels": rows, "kernel_launches": sum(e.count for e in kernels),
                        "device_ms_total": sum(own(e) for e in kernels) / 1e3})
        del model


def part_ddp(args) -> None:
    """One DDP and one FSDP2 step on this device against the one-process step."""
    script = os.path.join(REPO, "examples", "parallel_step_check.py")
    out = os.path.join(args.out, "parallel_step.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", script,
           "--device", args.device, "--out", out]
    rc = subprocess.run(cmd).returncode
    rec = {"part": "ddp", "status": "ok" if rc == 0 else f"exit {rc}"}
    if os.path.isfile(out):
        with open(out) as f:
            rec["result"] = json.loads(f.read())
    emit(args.out, rec)


def part_nanogpt(args) -> None:
    """nanoGPT's Shakespeare-char run for LMN and GPT-2, each for at most ``--nanogpt-s``."""
    import shutil

    runs = os.path.join(args.out, "..", "nanogpt-runs") if args.runs_dir is None else args.runs_dir
    for name in ("lmn", "gpt2"):
        run_dir = os.path.join(runs, f"nanogpt-{name}")
        cmd = [sys.executable, "-m", "lmn.cli", "train", "--preset", f"nanogpt-{name}", "--out", run_dir,
               "--device", args.device]
        cmd += ["--data", args.data] if args.data else []
        if os.path.isdir(run_dir):
            cmd.append("--resume")
        if args.size == "tiny":  # a functional smoke test of this part
            cmd += ["--model-size", "tiny", "--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2",
                    "--batch-size", "4", "--dtype", "float32"]
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=args.nanogpt_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        keep = os.path.join(args.out, "nanogpt", f"nanogpt-{name}")
        os.makedirs(keep, exist_ok=True)
        for fname in ("config.json", "metrics.jsonl", "final.json"):
            if os.path.isfile(os.path.join(run_dir, fname)):
                shutil.copy(os.path.join(run_dir, fname), keep)
        emit(args.out, {"part": "nanogpt", "model": name, "status": "done" if rc == 0 else f"{rc}",
                        "wall_s": round(time.perf_counter() - t0, 1), "command": " ".join(cmd[1:])})


PART_FUNCS = {"ddp": part_ddp, "nanogpt": part_nanogpt,
              "env": part_env, "parity": part_parity, "train": part_train, "decode": part_decode,
              "profile": part_profile, "compile": part_compile, "long": part_long, "train2": part_train2,
              "compile2": part_compile2}


# ---------------------------------------------------------------------- driver
def run_all(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    parts = [p for p in args.parts.split(",") if p]
    # each part runs as ``python -m research.gpu_session part NAME``: the repository root on its path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (REPO, os.environ.get("PYTHONPATH"))))}
    for name in parts:
        left = args.budget - (time.perf_counter() - start)
        if left < 15:
            emit(args.out, {"part": name, "status": "skipped", "reason": "session budget spent"})
            continue
        limit = min(TIMEOUTS[name], left)
        cmd = [sys.executable, "-m", "research.gpu_session", "part", name, "--out", args.out, "--device", args.device,
               "--size", args.size, "--repeats", str(args.repeats), "--point-budget", str(args.point_budget)]
        cmd += ["--fused-only"] if args.fused_only else []
        cmd += ["--nanogpt-s", str(args.nanogpt_s)] + (["--data", args.data] if args.data else [])
        cmd += ["--runs-dir", args.runs_dir] if args.runs_dir else []
        t0 = time.perf_counter()
        with open(os.path.join(args.out, "log.txt"), "a") as log:
            log.write(f"== {name} (limit {limit:.0f} s)\n")
            log.flush()
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit, env=env).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        emit(args.out, {"part": name, "status": "done" if rc == 0 else f"exit {rc}",
                        "wall_s": round(time.perf_counter() - t0, 1)})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.gpu_session", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("all", "part"))
    p.add_argument("name", nargs="?", help="the part (mode 'part')")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="full", help="full, or tiny (a functional smoke test of this script)")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all parts together")
    p.add_argument("--repeats", type=int, default=5, help="timed training steps per point (at most)")
    p.add_argument("--point-budget", type=float, default=3.0, help="seconds of timed steps per point")
    p.add_argument("--fused-only", action="store_true", help="profile: the fused path only")
    p.add_argument("--nanogpt-s", type=float, default=290.0, help="nanogpt: seconds per model at most")
    p.add_argument("--data", default=None, help="nanogpt: path of tinyshakespeare.txt (default: $LMN_DATA_DIR)")
    p.add_argument("--runs-dir", default=None,
                   help="nanogpt: where the run directories go (default OUT/../nanogpt-runs)")
    args = p.parse_args(argv)
    if args.mode == "all":
        return run_all(args)
    os.makedirs(args.out, exist_ok=True)
    PART_FUNCS[args.name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
