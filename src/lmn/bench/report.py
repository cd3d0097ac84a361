"""Markdown tables and PNG plots, computed from a result JSON alone.

``render_markdown(doc)`` is a pure function of the JSON document, so a table can always
be checked against (and regenerated from) its JSON: ``lmn bench report DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmn.atomic import save_figure
from lmn.kinds import kind_or_none

from .common import format_bytes, format_count, format_seconds, write_text


# ----------------------------------------------------------------------------- shared
def _preamble(doc: dict, title: str) -> list[str]:
    m, git = doc["machine"], doc["git"]
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    cuda = f"; GPU {m['cuda']['device_name']} (CUDA {m['cuda']['version']})" if m.get("cuda") else ""
    mem = f", {format_bytes(m['memory_bytes'])} RAM" if m.get("memory_bytes") else ""
    return [
        f"# {title}",
        "",
        "Rendered from the JSON file of the same name (`lmn bench report` redoes it; do not edit by hand).",
        "",
        f"- command: `{doc['command']}`",
        f"- run: {doc['timestamp']}, commit {commit}",
        *(
            f"- points merged in from a later run on the same machine: `{extra['command']}` ({extra['timestamp']})"
            for extra in doc.get("merged", [])
        ),
        f"- machine: {m['cpu_model']}, {m['cpu_usable']} of {m['cpu_count']} cores usable{mem}{cuda}; {m['platform']}",
        f"- software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers'] or '-'}",
        f"- threads: {m['threads']}; devices: {', '.join(m['devices'])}",
        "",
    ]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _spread(stats: dict) -> str:
    return f"{format_seconds(stats['median_s'])} [{format_seconds(stats['min_s'])} – {format_seconds(stats['max_s'])}]"


def _status_cell(point: dict) -> str:
    return {"skipped": "skipped", "timeout": "timed out", "failed": "failed", "oom": "out of memory"}.get(
        point["status"], point["status"])


def _groups(points: list[dict]) -> list[tuple[str, str]]:
    """(device, size) pairs in first-seen order."""
    return list(dict.fromkeys((p["device"], p["size"]) for p in points))


def _ratio(a, b) -> str:
    return f"{a / b:.3g}" if a is not None and b else "-"


def _models(doc: dict) -> list[str]:
    return list(dict.fromkeys(p["model"] for p in doc["points"]))


def _described(models: list[str], what: str) -> str:
    """``"`lmn` ...; `gpt2` ..."``: each registered kind's own phrase for ``what``."""
    parts = []
    for m in models:
        kind = kind_or_none(m)
        phrase = kind.bench.describe.get(what) if kind is not None else None
        parts.append(f"`{m}` {phrase}" if phrase else f"`{m}`")
    return "; ".join(parts)


def _compared(models: list[str]) -> list[tuple[str, str]]:
    """``(model, reference)`` pairs for ratio columns: each kind's ``compare_to``, when both
    are in the table."""
    pairs = []
    for m in models:
        kind = kind_or_none(m)
        if kind is not None and kind.bench.compare_to in models:
            pairs.append((m, kind.bench.compare_to))
    return pairs


def _title(m: str) -> str:
    kind = kind_or_none(m)
    return kind.title if kind is not None else m


# ----------------------------------------------------------------------------- decode
def render_decode(doc: dict) -> str:
    s = doc["settings"]
    models = _models(doc)
    states = ", ".join(kind.bench.describe["state"] for kind in map(kind_or_none, models)
                       if kind is not None and "state" in kind.bench.describe)
    lines = _preamble(doc, "Decode: per-token latency and memory vs context")
    lines += [
        f"Latency: one decode step (one token, batch 1) after reaching context P by a chunked "
        f"prefill of random ids; median of {s['repeats']} timed steps [min – max] after {s['warmup']} "
        f"warm-up steps. State: {states or 'the decode state'}, at P. Peak RSS: high-water mark of the "
        f"measuring process (a fresh process per point; includes Python, torch and, for the baselines, "
        f"transformers). K = 1024, M = 1024². Models: {_described(models, 'decode')}.",
        "",
        f"Limits: {s['timeout']:g} s per baseline point, {s['lmn_timeout']:g} s per LMN point; a model is "
        f"not run where its predicted state or cache would exceed {format_bytes(s['max_cache_bytes'])}; "
        f"a model stops after its first failed point.",
        "",
    ]
    for device, size in _groups(doc["points"]):
        pts = [p for p in doc["points"] if p["device"] == device and p["size"] == size]
        models = list(dict.fromkeys(p["model"] for p in pts))
        positions = sorted({p["position"] for p in pts})
        at = {(p["model"], p["position"]): p for p in pts}
        params = doc["models"][size]
        lines += [f"## {size} size, {device}", ""]
        lines += ["Parameters: " + "; ".join(f"{m} {params[m]['params']:,}" for m in models) + ".", ""]
        pairs = _compared(models)  # e.g. LMN against GPT-2's KV cache, one ratio column each

        def ok(m, P):
            p = at.get((m, P))
            return p if p is not None and p["status"] == "ok" else None

        def cell(m, P, fn):
            p = at.get((m, P))
            if p is None:
                return "-"
            return fn(p) if p["status"] == "ok" else _status_cell(p)

        for title, fn, key in (
            ("Latency per token: median [min – max]", lambda p: _spread(p["latency"]), lambda p: p["latency"]["median_s"]),
            ("State / cache bytes at P", lambda p: format_bytes(p["state_bytes"]), lambda p: p["state_bytes"]),
            ("Peak RSS of the process", lambda p: format_bytes(p["peak_rss_bytes"]), lambda p: p["peak_rss_bytes"]),
        ):
            head = ["P"] + models + [f"{m} ÷ {ref}" for m, ref in pairs]
            rows = []
            for P in positions:
                row = [format_count(P)] + [cell(m, P, fn) for m in models]
                for m, ref in pairs:
                    a, b = ok(m, P), ok(ref, P)
                    row.append(_ratio(key(a), key(b)) if a and b else "-")
                rows.append(row)
            lines += [f"### {title}", ""] + _table(head, rows)
        stopped = [p for p in pts if p["status"] != "ok"]
        if stopped:
            lines += ["Where the models stopped:", ""]
            lines += [f"- {p['model']} at P = {format_count(p['position'])}: {_status_cell(p)} — {p['reason']}"
                      for p in stopped]
            lines += [""]
    return "\n".join(lines)


def plot_decode(doc: dict, out_dir: Path, name: str) -> list[Path]:
    """``<name>_latency.png`` and ``<name>_memory.png``: one panel per (size, device)."""
    plt = _pyplot()
    groups = _groups(doc["points"])
    written = []
    for what, rows in (("latency", [("median latency per token (s)", lambda p: p["latency"]["median_s"])]),
                       ("memory", [("state / cache bytes at P", lambda p: p["state_bytes"]),
                                   ("peak RSS of the process (bytes)", lambda p: p["peak_rss_bytes"])])):
        fig, axes = plt.subplots(len(rows), len(groups), figsize=(5.5 * len(groups), 4 * len(rows)),
                                 squeeze=False)
        for c, (device, size) in enumerate(groups):
            pts = [p for p in doc["points"] if p["device"] == device and p["size"] == size]
            for r, (ylabel, fn) in enumerate(rows):
                ax = axes[r][c]
                for i, model in enumerate(dict.fromkeys(p["model"] for p in pts)):
                    good = sorted((p["position"], fn(p)) for p in pts if p["model"] == model and p["status"] == "ok")
                    if good:
                        ax.plot(*zip(*good), marker="o", color=f"C{i}", label=model)
                        if what == "latency":
                            lo = sorted((p["position"], p["latency"]["min_s"], p["latency"]["max_s"])
                                        for p in pts if p["model"] == model and p["status"] == "ok")
                            ax.fill_between([x for x, _, _ in lo], [a for _, a, _ in lo], [b for _, _, b in lo],
                                            color=f"C{i}", alpha=0.15)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("context position P (tokens)")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{size} size, {device}", fontsize="medium")
                ax.grid(alpha=0.3, which="both")
                ax.legend(fontsize="small")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{name}_{what}.png"))
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- train
def _train_label(p: dict) -> str:
    return f"{p['batch']} × {format_count(p['length'])}"


def render_train(doc: dict) -> str:
    s = doc["settings"]
    lines = _preamble(doc, "Training step: time and memory vs sequence length")
    lines += [
        f"One training step = forward + cross-entropy + backward (no optimizer), random ids, "
        f"median of {s['repeats']} timed steps [min – max] after {s['warmup']} warm-up step(s) "
        f"(fewer where a step is long: see n). Sweep: batch = max(1, {s['tokens_per_batch']:,} // T). "
        f"Peak memory growth: how far the step raised the process's high-water RSS above its level "
        f"after building the model and the batch (fresh process per point). "
        f"Models: {_described(_models(doc), 'bench-train')}. K = 1024.",
        "",
        f"Limits: {s['timeout']:g} s per point; a model stops after its first failed length.",
        "",
    ]
    if s.get("mmap_threshold_bytes"):
        lines += [
            f"Allocator: glibc's mmap threshold fixed at {format_bytes(s['mmap_threshold_bytes'])} in every "
            f"measuring process (`--malloc-mmap-threshold`): buffers at least that large are mapped and "
            f"unmapped one by one, so the heap fragments less (lower peak RSS) at the cost of page faults.",
            "",
        ]
    for device, size in _groups(doc["points"]):
        pts = [p for p in doc["points"] if p["device"] == device and p["size"] == size]
        params = doc["models"][size]
        models = list(dict.fromkeys(p["model"] for p in pts))
        lines += [f"## {size} size, {device}", ""]
        lines += ["Parameters: " + "; ".join(f"{m} {params[m]['params']:,}" for m in models) + ".", ""]
        head = ["model", "B × T", "tokens", "fwd+bwd: median [min – max]", "n", "peak memory growth",
                "peak RSS", "status"]
        if any("cuda_peak_growth_bytes" in p for p in pts):
            head.insert(6, "CUDA peak allocated growth")
        rows = []
        for p in sorted(pts, key=lambda p: (p["length"], p["batch"], models.index(p["model"]))):
            good = p["status"] == "ok"
            row = [p["model"] + (" (special)" if p.get("special") else ""), _train_label(p),
                   f"{p['batch'] * p['length']:,}",
                   _spread(p["time"]) if good else "-", str(p["time"]["n"]) if good else "-",
                   format_bytes(p["peak_growth_bytes"]) if good else "-",
                   format_bytes(p["peak_rss_bytes"]) if good else "-",
                   "ok" if good else f"{_status_cell(p)}: {p['reason']}"]
            if "CUDA peak allocated growth" in head:
                row.insert(6, format_bytes(p.get("cuda_peak_growth_bytes")) if good else "-")
            rows.append(row)
        lines += _table(head, rows)
        by = {(p["model"], p["batch"], p["length"]): p for p in pts if p["status"] == "ok"}
        shapes = sorted({(p["batch"], p["length"]) for p in pts}, key=lambda x: (x[1], x[0]))
        for m, ref in _compared(models):
            rows = []
            for b, t in shapes:
                a, g = by.get((m, b, t)), by.get((ref, b, t))
                if a and g:
                    rows.append([f"{b} × {format_count(t)}", _ratio(a["time"]["median_s"], g["time"]["median_s"]),
                                 _ratio(a["peak_growth_bytes"], g["peak_growth_bytes"])])
            if rows:
                lines += [f"{_title(m)} relative to {_title(ref)} at equal shape:", ""]
                lines += _table(["B × T", f"time {m} ÷ {ref}", f"memory growth {m} ÷ {ref}"], rows)
    return "\n".join(lines)


def plot_train(doc: dict, out_dir: Path, name: str) -> list[Path]:
    """``<name>.png``: time and peak memory growth vs T, one line per model (sweep points;
    the special shapes off the sweep are drawn as open markers)."""
    plt = _pyplot()
    groups = _groups(doc["points"])
    fig, axes = plt.subplots(2, len(groups), figsize=(5.5 * len(groups), 8), squeeze=False)
    for c, (device, size) in enumerate(groups):
        pts = [p for p in doc["points"] if p["device"] == device and p["size"] == size and p["status"] == "ok"]
        for r, (ylabel, fn) in enumerate((("fwd+bwd time per step (s)", lambda p: p["time"]["median_s"]),
                                          ("peak memory growth (bytes)", lambda p: p["peak_growth_bytes"]))):
            ax = axes[r][c]
            for i, model in enumerate(dict.fromkeys(p["model"] for p in pts)):
                mine = [p for p in pts if p["model"] == model]
                line = sorted((p["length"], fn(p)) for p in mine if p.get("sweep"))
                extra = sorted((p["length"], fn(p)) for p in mine if not p.get("sweep"))
                if line:
                    ax.plot(*zip(*line), marker="o", color=f"C{i}", label=model)
                if extra:
                    ax.plot(*zip(*extra), linestyle="none", marker="s", mfc="none", color=f"C{i}",
                            label=f"{model}, shapes off the sweep")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{size} size, {device}, {doc['settings']['tokens_per_batch']:,} tokens/batch",
                         fontsize="medium")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = _save(fig, out_dir / f"{name}.png")
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- files
RENDERERS = {"decode": (render_decode, plot_decode), "train": (render_train, plot_train)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=110)


def write_outputs(doc: dict, out_dir: Path, name: str, plots: bool = True) -> list[Path]:
    """``<name>.md`` and the plots of ``doc`` (its JSON is written by the driver)."""
    render, plot = RENDERERS[doc["bench"]]
    md = out_dir / f"{name}.md"
    write_text(md, render(doc))
    written = [md]
    if plots and doc["points"]:
        written += plot(doc, out_dir, name)
    return written


def report(paths: list[str], plots: bool = True) -> list[Path]:
    """Re-render the markdown (and plots) of result JSONs: files, or directories of them."""
    written = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no result JSON in {path}")
        for f in files:
            doc = json.loads(f.read_text())
            if doc.get("bench") not in RENDERERS:
                continue
            written += write_outputs(doc, f.parent, f.stem, plots)
    return written
