"""``lmn bench train``: time and peak memory of one training step vs sequence length.

The sweep keeps the tokens per batch fixed (batch = max(1, tokens // T)); the special
shapes -- 16 x 512 (the paper's batch), 1 x 32K and 1 x 256K (LMN only) -- are added and
marked. Each point runs in a fresh process (:mod:`lmn.bench._train_point`); a model stops
after its first point that times out, runs out of memory or fails.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import device_label, format_count, header, run_point, write_json
from .models import model_table
from .report import write_outputs

FULL_LENGTHS = "512,2K,8K,32K"
QUICK_LENGTHS = "32,128"


@dataclass
class TrainSettings:
    sizes: list[str]
    models: list[str]
    lengths: list[int]
    tokens_per_batch: int
    special: list[tuple[int, int, list[str] | None]]
    repeats: int
    warmup: int
    threads: int
    devices: list[str]
    timeout: float
    mem_limit_bytes: int
    seed: int
    quick: bool
    mmap_threshold_bytes: int = 0  # 0: glibc's dynamic default


def plan(cfg: TrainSettings) -> list[dict]:
    """The points to measure for one (device, size), in the order they run: by length, then
    batch, then model; each ``{"model", "batch", "length", "sweep", "special"}``."""
    points: dict[tuple, dict] = {}
    for T in cfg.lengths:
        for m in cfg.models:
            points[(m, max(1, cfg.tokens_per_batch // T), T)] = {"sweep": True, "special": False}
    for B, T, models in cfg.special:
        for m in cfg.models if models is None else [m for m in models if m in cfg.models]:
            points.setdefault((m, B, T), {"sweep": False, "special": False})["special"] = True
    order = sorted(points, key=lambda k: (k[2], k[1], cfg.models.index(k[0])))
    return [{"model": m, "batch": B, "length": T, **points[(m, B, T)]} for m, B, T in order]


def run_train(cfg: TrainSettings, out_dir: Path, name: str = "train", command: str = "",
              plots: bool = True) -> dict:
    """Measure every point, write ``<name>.json``, ``<name>.md`` and the plot; return the doc."""
    settings = asdict(cfg)
    settings["special"] = [[B, T, None if m is None else list(m)] for B, T, m in cfg.special]
    doc = header("train", command, cfg.threads, cfg.devices, settings)
    doc["points"] = points = []
    json_path = out_dir / f"{name}.json"
    for device in cfg.devices:
        label = device_label(device)
        for size in cfg.sizes:
            stopped: dict[str, str] = {}  # model -> why it stopped
            for p in plan(cfg):
                point = {"device": label, "size": size, **p}
                if p["model"] in stopped:
                    point.update(status="skipped", reason=f"stopped: {stopped[p['model']]}")
                else:
                    args = ["--size", size, "--model", p["model"], "--batch", str(p["batch"]),
                            "--length", str(p["length"]), "--repeats", str(cfg.repeats), "--warmup", str(cfg.warmup),
                            "--budget", str(cfg.timeout / 2), "--threads", str(cfg.threads), "--device", device,
                            "--seed", str(cfg.seed), "--mem-limit", str(cfg.mem_limit_bytes),
                            "--mmap-threshold", str(cfg.mmap_threshold_bytes)]
                    result = run_point("lmn.bench._train_point", args, cfg.timeout, cfg.threads)
                    result.pop("device", None)
                    point.update(result)
                    if point["status"] != "ok":
                        what = {"timeout": "timed out", "oom": "out of memory"}.get(point["status"], "failed")
                        stopped[p["model"]] = f"{what} at {p['batch']} × {format_count(p['length'])}"
                points.append(point)
                _say(_progress(point))
                write_json(json_path, doc)
    doc["models"] = model_table(cfg.sizes, cfg.models, points, cfg.seed)
    write_json(json_path, doc)
    write_outputs(doc, out_dir, name, plots)
    return doc


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(p: dict) -> str:
    where = f"train {p['device']} {p['size']} {p['model']} {p['batch']}x{format_count(p['length'])}"
    if p["status"] != "ok":
        return f"{where}: {p['status']} ({p['reason']})"
    t = p["time"]
    return (f"{where}: {t['median_s']:.3f} s/step [{t['min_s']:.3f}-{t['max_s']:.3f}] n={t['n']}, "
            f"peak memory +{p['peak_growth_bytes'] / 2**20:.0f} MiB")
