"""The model registry: every model kind the trainer, ``lmn bench``, ``lmn generate`` and
the results code know, each defined in one file.

    >>> from lmn.kinds import get_kind, kind_names
    >>> kind = get_kind("gpt2")             # imports lmn.baselines.gpt2 (not transformers)
    >>> model = kind.build({"vocab_size": 65})

Adding a kind: write one file that defines the config dataclass, the module and
``KINDS = {name: ModelKind(...)}`` (see :class:`lmn.kinds.base.ModelKind` and
``lmn/baselines/rwkv.py`` for a short example; what only ``lmn bench`` reads goes in its
``bench=BenchSpec(...)``), then add its line to ``REGISTRY`` below.
A kind file may register bench variants of its model too (``lmn-native``, ``lmn-ckpt``).
"""

from __future__ import annotations

import importlib

from .base import BENCHES, BenchSpec, Decoder, ModelKind

# name -> the module whose KINDS dict defines it. Modules are imported on first use.
REGISTRY: dict[str, str] = {
    "lmn": "lmn.kinds.lmn",
    "lmn-native": "lmn.kinds.lmn",
    "lmn-ckpt": "lmn.kinds.lmn",
    "lmn-materialized": "lmn.kinds.lmn",
    "lmn-onnx": "lmn.kinds.lmn_runtimes",
    "lmn-graph": "lmn.kinds.lmn_runtimes",
    "gpt2": "lmn.baselines.gpt2",
    "mamba": "lmn.baselines.mamba",
    "mamba2": "lmn.baselines.mamba2",
    "rwkv": "lmn.baselines.rwkv",
    "loglinear-mamba2": "lmn.baselines.loglinear_mamba2",
    "s4d": "lmn.baselines.s4d",
    # forecasting kinds (values in, forecast out; lmn.timeseries), for regression tasks such as etth1
    "lmn-ts": "lmn.timeseries.lmn_ts",
    "transformer-ts": "lmn.timeseries.transformer_ts",
    "mamba2-ts": "lmn.timeseries.mamba2_ts",
    "dlinear": "lmn.timeseries.dlinear",
}


def get_kind(name: str) -> ModelKind:
    """The registered kind ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).KINDS[name]


def kind_names(use: str | None = None) -> tuple[str, ...]:
    """Registered kind names, in registration order; only those usable for ``use`` (one of
    ``train``, ``decode``, ``bench-train``) when given."""
    if use is not None and use not in BENCHES:
        raise ValueError(f"use must be one of {', '.join(BENCHES)}, got {use!r}")
    return tuple(n for n in REGISTRY if use is None or use in get_kind(n).uses)


def kind_or_none(name: str) -> ModelKind | None:
    """The kind ``name`` if registered (rendering old result files never fails on a name)."""
    return get_kind(name) if name in REGISTRY else None


__all__ = ["BENCHES", "BenchSpec", "Decoder", "ModelKind", "REGISTRY", "get_kind", "kind_names", "kind_or_none"]
