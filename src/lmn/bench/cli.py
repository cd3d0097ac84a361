"""Flags of ``lmn bench decode | train | report`` (registered by :func:`lmn.cli._add_bench_parser`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .common import parse_bytes, parse_choices, parse_count, parse_counts
from .models import DECODE_DEFAULT, SIZES, TRAIN_DEFAULT, decode_models, train_models

DEFAULT_OUT = "docs/results/bench"
QUICK_TRAIN = ("lmn", "gpt2", "lmn-materialized")
QUICK_OUT = "docs/results/bench/quick"


def add_bench_subcommands(p: argparse.ArgumentParser, parser_class) -> None:
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH", parser_class=parser_class)
    sub.required = True

    d = sub.add_parser(
        "decode", help="streaming decode: latency, state bytes and peak RSS vs context P",
        description="Per-token decode latency, state/cache bytes and peak RSS at context positions P, "
        "for LMN streaming, GPT-2 with its KV cache and the recurrent baselines with theirs. Each point runs in a "
        "fresh process. Writes NAME.json, NAME.md, NAME_latency.png and NAME_memory.png to --out.",
    )
    d.add_argument("--sizes", default="paper,large", help=f"model sizes, of {', '.join(SIZES)} (default paper,large)")
    d.add_argument("--models", default=None, help=f"models, of {', '.join(decode_models())} (default: "
                   f"{','.join(DECODE_DEFAULT)}, each only where it can run here, e.g. lmn-native needs a C compiler)")
    d.add_argument("--positions", default=None, help="context positions P, K = 1024, M = 1024^2 "
                   "(default 256,1K,4K,16K,32K,128K,1M; --quick: 16,100)")
    d.add_argument("--repeats", type=int, default=None, help="timed decode steps per point (default 50; --quick: 3)")
    d.add_argument("--warmup", type=int, default=None, help="untimed decode steps first (default 10; --quick: 2)")
    d.add_argument("--chunk", type=int, default=1024, help="prefill chunk in tokens (LMN's max_chunk too; default 1024)")
    d.add_argument("--timeout", type=float, default=1200, help="seconds per baseline point, prefill "
                   "included (default 1200: GPT-2's quadratic prefill to 128K, or the large one's to 32K, "
                   "takes minutes on one core)")
    d.add_argument("--lmn-timeout", type=float, default=3600, help="seconds per LMN point, or of any kind "
                   "registered with long_decode (default 3600: "
                   "the large LMN's prefill to 1M takes ~10 minutes on one core)")
    d.add_argument("--max-cache", default="4G", help="skip points whose predicted state/cache (e.g. GPT-2's "
                   "KV cache) would exceed this "
                   "(default 4G; 0: no limit)")
    _common_flags(d, default_name="decode")
    d.set_defaults(bench_func=_cmd_decode)

    t = sub.add_parser(
        "train", help="one training step: time and peak memory vs sequence length",
        description="Forward+backward time and peak memory growth of one training step vs sequence "
        "length T at a fixed number of tokens per batch, for LMN's parallel form (also with "
        "activation checkpointing), GPT-2 (SDPA) and LMN with materialised slots; plus the shapes "
        "16 x 512, 1 x 32K and 1 x 256K (LMN only). Writes NAME.json, NAME.md and NAME.png to --out.",
    )
    t.add_argument("--sizes", default="paper", help=f"model sizes, of {', '.join(SIZES)} (default paper)")
    t.add_argument("--models", default=None, help=f"of {', '.join(train_models())} "
                   f"(default {','.join(TRAIN_DEFAULT)}; --quick: {','.join(QUICK_TRAIN)})")
    t.add_argument("--lengths", default=None, help="sequence lengths T (default 512,2K,8K,32K; --quick: 32,128)")
    t.add_argument("--tokens-per-batch", default=None, help="tokens per sweep batch: batch = max(1, "
                   "tokens // T) (default 8192, the paper's 16 x 512; --quick: 256)")
    t.add_argument("--special", default=None, help="extra shapes BxT[:model+model], comma-separated "
                   "(default 16x512,1x32K,1x256K:lmn+lmn-ckpt; --quick: 1x512:lmn; 'none' for none)")
    t.add_argument("--repeats", type=int, default=None, help="timed steps per point, at most (default 5; --quick: 2)")
    t.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; --quick: 1)")
    t.add_argument("--timeout", type=float, default=1800, help="seconds per point (default 1800); no timed "
                   "step starts after half of it")
    t.add_argument("--malloc-mmap-threshold", default="0", metavar="BYTES", help="CPU: fix glibc's mmap "
                   "threshold in each measuring process (e.g. 4M): large buffers are then mapped and unmapped "
                   "one by one instead of fragmenting the heap; lower peak RSS, more page faults "
                   "(default 0: glibc's dynamic threshold)")
    _common_flags(t, default_name="train")
    t.set_defaults(bench_func=_cmd_train)

    r = sub.add_parser("report", help="re-render the markdown tables and plots from result JSONs",
                       description="Rewrite NAME.md (and the plots) next to each result JSON, from the JSON alone.")
    r.add_argument("paths", nargs="+", metavar="PATH", help="result JSON files or directories holding them")
    r.add_argument("--no-plots", action="store_true", help="markdown only")
    r.set_defaults(bench_func=_cmd_report)


def _common_flags(p, default_name: str) -> None:
    p.add_argument("--quick", action="store_true", help="tiny smoke-test sweep, under a minute on one core "
                   "(not for figures); writes to docs/results/bench/quick unless --out is given")
    p.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--name", default=default_name, help=f"file name stem of the outputs (default {default_name})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and OMP/MKL threads) per point (default 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cpu,cuda; auto: cpu, plus cuda when a GPU "
                   "is visible (default auto)")
    p.add_argument("--mem-limit", default="16G", help="address-space limit of each CPU measuring process, "
                   "so that running out of memory is a recorded failure, not the OOM killer (default 16G; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the random ids (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _positive(value, flag: str) -> int:
    if value is None or value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")
    return value


def _out_dir(args) -> Path:
    return Path(args.out if args.out is not None else (QUICK_OUT if args.quick else DEFAULT_OUT))


def _need(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"lmn bench needs {module} for {what}, which is not installed; install it with: "
                         "pip install 'torch-lmn[bench]'")


def _check_before_measuring(args, models: list[str]) -> Path:
    """Everything that would fail after the measurements, checked before them: the output
    directory can be written, ``--name`` is a plain file name, and the packages the models
    and the plots need are installed. Returns the output directory (created)."""
    import os

    from lmn.kinds import get_kind

    name = args.name
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name or name.startswith("."):
        raise ValueError(f"--name must be a plain file name stem (no directories, no leading dot), got {name!r}; "
                         "choose where the files go with --out")
    out = _out_dir(args)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; give a directory for the result files")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write in {ancestor}; choose another --out")
    for model in models:
        for package in get_kind(model).requires:
            _need(package, f"model {model}")
    if not args.no_plots:
        _need("matplotlib", "the plots (or pass --no-plots)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _devices(args) -> list[str]:
    from .common import resolve_devices

    return resolve_devices(args.device)


def _default_decode_models() -> str:
    from lmn.kinds import get_kind

    models = []
    for name in DECODE_DEFAULT:
        why = get_kind(name).bench.unavailable()
        if why is None:
            models.append(name)
        else:
            print(f"note: {name} is left out: {why}", file=sys.stderr)
    return ",".join(models)


def _cmd_decode(args, command: str) -> int:
    from .decode import FULL_POSITIONS, QUICK_POSITIONS, DecodeSettings, run_decode

    q = args.quick
    sizes = parse_choices(args.sizes if not (q and args.sizes == "paper,large") else "paper", SIZES, "size")
    cfg = DecodeSettings(
        sizes=sizes,
        models=parse_choices(args.models or _default_decode_models(), decode_models(), "model"),
        positions=parse_counts(args.positions or (QUICK_POSITIONS if q else FULL_POSITIONS)),
        repeats=_positive(args.repeats if args.repeats is not None else (3 if q else 50), "--repeats"),
        warmup=max(0, args.warmup if args.warmup is not None else (2 if q else 10)),
        chunk=_positive(args.chunk, "--chunk"),
        threads=_positive(args.threads, "--threads"),
        devices=_devices(args),
        timeout=float(_positive(args.timeout, "--timeout")),
        lmn_timeout=float(_positive(args.lmn_timeout, "--lmn-timeout")),
        max_cache_bytes=parse_bytes(args.max_cache),
        mem_limit_bytes=parse_bytes(args.mem_limit),
        seed=args.seed,
        quick=q,
    )
    if cfg.chunk & (cfg.chunk - 1):
        raise ValueError(f"--chunk must be a power of two (LMN's prefill pieces), got {cfg.chunk}")
    out = _check_before_measuring(args, cfg.models)
    doc = run_decode(cfg, out, args.name, command, plots=not args.no_plots)
    _summary(out / f"{args.name}.json", doc)
    return 0


def _summary(path: Path, doc: dict) -> None:
    counts: dict[str, int] = {}
    for p in doc["points"]:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    print(f"{path}: {len(doc['points'])} points (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")


def _parse_special(text: str) -> list[tuple[int, int, tuple[str, ...] | None]]:
    if text.strip().lower() == "none":
        return []
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        shape, _, models = item.partition(":")
        b, x, t = shape.lower().partition("x")
        if not x:
            raise ValueError(f"--special: expected BxT[:model+model], got {item!r}")
        names = tuple(parse_choices(models.replace("+", ","), train_models(), "model")) if models else None
        out.append((parse_count(b), parse_count(t), names))
    return out


def _mmap_threshold(text: str) -> int:
    n = parse_bytes(text)
    if n < 0 or n > 32 * 1024 * 1024:
        raise ValueError(f"--malloc-mmap-threshold must be between 0 and 32M (glibc's limit), got {text!r}")
    return n


def _cmd_train(args, command: str) -> int:
    from .train import FULL_LENGTHS, QUICK_LENGTHS, TrainSettings, run_train

    q = args.quick
    default_models = ",".join(QUICK_TRAIN if q else TRAIN_DEFAULT)
    special = args.special if args.special is not None else ("1x512:lmn" if q else "16x512,1x32K,1x256K:lmn+lmn-ckpt")
    cfg = TrainSettings(
        sizes=parse_choices(args.sizes, SIZES, "size"),
        models=parse_choices(args.models or default_models, train_models(), "model"),
        lengths=parse_counts(args.lengths or (QUICK_LENGTHS if q else FULL_LENGTHS)),
        tokens_per_batch=parse_count(args.tokens_per_batch or ("256" if q else "8192")),
        special=_parse_special(special),
        repeats=_positive(args.repeats if args.repeats is not None else (2 if q else 5), "--repeats"),
        warmup=max(0, args.warmup if args.warmup is not None else 1),
        threads=_positive(args.threads, "--threads"),
        devices=_devices(args),
        timeout=float(_positive(args.timeout, "--timeout")),
        mem_limit_bytes=parse_bytes(args.mem_limit),
        seed=args.seed,
        quick=q,
        mmap_threshold_bytes=_mmap_threshold(args.malloc_mmap_threshold),
    )
    out = _check_before_measuring(args, cfg.models)
    doc = run_train(cfg, out, args.name, command, plots=not args.no_plots)
    _summary(out / f"{args.name}.json", doc)
    return 0


def _cmd_report(args, command: str) -> int:
    from .report import report

    if not args.no_plots:
        _need("matplotlib", "the plots (or pass --no-plots)")
    for path in report(args.paths, plots=not args.no_plots):
        print(path)
    return 0


def command_line(args) -> str:
    """The command as parsed, every flag spelled out (defaults included): it reruns the
    same sweep even if a default changes later."""
    skip = {"func", "bench_func", "command", "bench_command", "paths"}
    parts = ["lmn", "bench", args.bench_command]
    for key, value in vars(args).items():
        if key in skip or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def run(args) -> int:
    """Entry point of ``lmn bench``."""
    return args.bench_func(args, command_line(args))
