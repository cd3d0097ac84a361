"""``lmn bench decode``: per-token decode latency, state bytes and peak RSS vs context P.

For every (device, size, model, P), in that order, one fresh process
(:mod:`lmn.bench._decode_point`) builds the model, reaches context P and times single-token
steps. A model stops at its first point that times out or fails; points whose predicted
state or cache (a kind's ``state_bytes``, e.g. GPT-2's KV cache) would exceed
``--max-cache`` are recorded as skipped without running.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lmn.kinds import get_kind

from .common import device_label, format_bytes, format_count, header, run_point, write_json
from .models import model_config, model_table
from .report import write_outputs

FULL_POSITIONS = "256,1K,4K,16K,32K,128K,1M"
QUICK_POSITIONS = "16,100"


@dataclass
class DecodeSettings:
    sizes: list[str]
    models: list[str]
    positions: list[int]
    repeats: int
    warmup: int
    chunk: int
    threads: int
    devices: list[str]
    timeout: float
    lmn_timeout: float
    max_cache_bytes: int
    mem_limit_bytes: int
    seed: int
    quick: bool


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_decode(cfg: DecodeSettings, out_dir: Path, name: str = "decode", command: str = "",
               plots: bool = True) -> dict:
    """Measure every point, write ``<name>.json``, ``<name>.md`` and the plots; return the doc."""
    doc = header("decode", command, cfg.threads, cfg.devices, asdict(cfg))
    doc["points"] = points = []
    json_path = out_dir / f"{name}.json"
    for device in cfg.devices:
        label = device_label(device)
        for size in cfg.sizes:
            for kind in cfg.models:
                stopped = None  # (status, position) of this model's first failure
                for P in cfg.positions:
                    point = {"device": label, "size": size, "model": kind, "position": P}
                    if stopped is not None:
                        point.update(status="skipped", reason=f"stopped: {stopped[0]} at P = {format_count(stopped[1])}")
                    else:
                        point.update(_measure(cfg, device, size, kind, P))
                        if point["status"] not in ("ok", "skipped"):
                            stopped = ({"timeout": "timed out", "oom": "out of memory"}.get(point["status"], "failed"), P)
                    points.append(point)
                    _say(_progress(point))
                    write_json(json_path, doc)  # partial results survive an interrupted sweep
    doc["models"] = model_table(cfg.sizes, cfg.models, points, cfg.seed)
    write_json(json_path, doc)
    write_outputs(doc, out_dir, name, plots)
    return doc


def _measure(cfg: DecodeSettings, device: str, size: str, kind: str, P: int) -> dict:
    """One point's record: measured in a fresh process, or skipped where the kind says it
    cannot run (CPU-only on a GPU) or its predicted state exceeds ``--max-cache``."""
    spec = get_kind(kind)
    out = {}
    if spec.state_bytes is not None:
        out["estimated_cache_bytes"] = est = spec.state_bytes(model_config(size, kind, P), P)
        if cfg.max_cache_bytes and est > cfg.max_cache_bytes:
            what = spec.bench.describe.get("state", f"{kind}'s state")
            return {**out, "status": "skipped", "reason": f"{what} would be {format_bytes(est)} "
                    f"> --max-cache {format_bytes(cfg.max_cache_bytes)}"}
    if spec.bench.cpu_only and not device.startswith("cpu"):
        return {**out, "status": "skipped", "reason": f"{kind} runs on the CPU only"}
    timeout = cfg.lmn_timeout if spec.bench.long_decode else cfg.timeout
    args = ["--size", size, "--model", kind, "--position", str(P), "--repeats", str(cfg.repeats),
            "--warmup", str(cfg.warmup), "--chunk", str(cfg.chunk), "--threads", str(cfg.threads),
            "--device", device, "--seed", str(cfg.seed), "--mem-limit", str(cfg.mem_limit_bytes)]
    result = run_point("lmn.bench._decode_point", args, timeout, cfg.threads)
    result.pop("device", None)
    return {**out, **result}


def _progress(p: dict) -> str:
    where = f"decode {p['device']} {p['size']} {p['model']} P={format_count(p['position'])}"
    if p["status"] != "ok":
        return f"{where}: {p['status']} ({p['reason']})"
    lat = p["latency"]
    return (f"{where}: {lat['median_s'] * 1e3:.3f} ms/token [{lat['min_s'] * 1e3:.3f}-{lat['max_s'] * 1e3:.3f}], "
            f"state {format_bytes(p['state_bytes'])}, peak RSS {format_bytes(p['peak_rss_bytes'])}, "
            f"prefill {p['prefill_s']:.1f} s")
