"""The benchmarked models, read from the model registry (:mod:`lmn.kinds`).

Each registered kind brings its own sizes (``paper`` = the Table 1 budget, ``large`` =
about LMN's 8.4M parameters at depth 8; the counts are in each kind's file), its decode
adapter, and its ``bench`` record (:class:`lmn.kinds.BenchSpec`: how a config reaches a
context, the parameters reported, how bench's training step calls it); nothing here names a kind.

A decoder reaches context P by feeding random ids chunk by chunk (so that no P-token
tensor ever exists), then decodes one token at a time (see
:class:`lmn.kinds.base.Decoder`).
"""

from __future__ import annotations

from lmn.kinds import get_kind, kind_names

SIZES = ("paper", "large")
# The default sweeps (the published figures); any registered kind can be named with --models.
DECODE_DEFAULT = ("lmn", "lmn-native", "gpt2", "mamba")
TRAIN_DEFAULT = ("lmn", "lmn-ckpt", "lmn-materialized", "gpt2")


def decode_models() -> tuple[str, ...]:
    return kind_names("decode")


def train_models() -> tuple[str, ...]:
    return kind_names("bench-train")


def model_config(size: str, kind: str, n_positions: int | None = None) -> dict:
    """The config fields of ``kind`` at ``size`` (as recorded in the result JSON)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    spec = get_kind(kind)
    return spec.bench.with_positions(spec.size_config(size), n_positions)


def build_model(size: str, kind: str, n_positions: int | None = None):
    """``(module, info)``: the model (random init from the current torch seed) and
    ``{"params", "params_total", "config"}``."""
    spec = get_kind(kind)
    cfg = model_config(size, kind, n_positions)
    model = spec.build(cfg)
    if spec.bench.prepare is not None:
        model = spec.bench.prepare(model)
    total = sum(p.numel() for p in model.parameters())
    return model, {"params": spec.bench.reported_params(model, model.config), "params_total": total, "config": cfg}


def model_table(sizes: list[str], kinds: list[str], points: list[dict], seed: int = 0) -> dict:
    """``{size: {kind: {"params", "config"}}}`` for a result JSON: the parameter count from
    the first measured point of each model (its process built it), else by building it
    here; the config as counted in ``params``."""
    table: dict = {}
    for size in sizes:
        table[size] = {}
        for kind in kinds:
            done = next((p for p in points if p["size"] == size and p["model"] == kind and p["status"] == "ok"), None)
            if done is None:
                import torch

                torch.manual_seed(seed)
                _, done = build_model(size, kind)
            table[size][kind] = {"params": done["params"], "config": model_config(size, kind)}
    return table


def make_decoder(kind: str, model, max_chunk: int = 1024):
    """The kind's decode adapter around ``model``."""
    return get_kind(kind).decoder(model, max_chunk)
