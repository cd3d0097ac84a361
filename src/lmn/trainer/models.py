"""The trainer's view of a model: a registered kind (:mod:`lmn.kinds`) and its config dict."""

from __future__ import annotations

import torch
from torch import nn

from ..kinds import get_kind


def resolve_model_config(kind: str, overrides: dict, vocab_size: int, size: str = "paper") -> dict:
    """Full config dict of model ``kind``: its defaults, its named ``size``, then
    ``overrides``, then the task's ``vocab_size``. Validated by the kind's config class."""
    if "vocab_size" in overrides and overrides["vocab_size"] != vocab_size:
        raise ValueError(
            f"vocab_size is set by the task ({vocab_size} symbols), not by the model config "
            f"(got {overrides['vocab_size']})"
        )
    return normalize_model_config(kind, {**size_overrides(kind, size), **overrides, "vocab_size": vocab_size})


def check_model_config(kind: str, overrides: dict, size: str = "paper") -> None:
    """Raise ValueError for a bad size or option before the task's data is read."""
    normalize_model_config(kind, {**size_overrides(kind, size), "vocab_size": 1, **overrides})


def size_overrides(kind: str, size: str) -> dict:
    """The config fields of ``kind``'s named size (``paper``: none)."""
    sizes = get_kind(kind).sizes
    if size not in sizes:
        raise ValueError(f"model {kind!r} has no size {size!r}; choose from {', '.join(sizes)}")
    return dict(sizes[size])


def check_requirements(kind: str) -> None:
    """Every package a run of ``kind`` needs is installed (checked before anything is
    written or trained): safetensors (and numpy) for the checkpoints, and the kind's own (e.g.
    transformers for the baselines)."""
    import importlib.util

    needed = ("safetensors", "numpy", *get_kind(kind).requires)  # safetensors writes through numpy
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"training model {kind!r} needs {', '.join(missing)}, which is not installed; "
                         f"install it with: pip install 'lmn[train]'")


def normalize_model_config(kind: str, model_config: dict) -> dict:
    """``model_config`` completed with the current defaults of the kind's config class, so
    configs saved before a field was added still compare equal."""
    return get_kind(kind).normalize(model_config)


def check_positions(kind: str, model_config: dict, seq_len: int) -> None:
    """A task's sequences must fit the model's position limit (e.g. GPT-2's table)."""
    limit = get_kind(kind).max_positions(model_config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"block_size {seq_len} exceeds the {kind} model's {limit} positions "
                         f"(raise its limit with --model-opt, e.g. n_positions={seq_len})")


def build_model(kind: str, model_config: dict) -> nn.Module:
    """A freshly initialised model; seed the global RNG first for a reproducible init."""
    return get_kind(kind).build(model_config)


def enable_gradient_checkpointing(kind: str, model: nn.Module) -> None:
    switch = get_kind(kind).enable_checkpointing
    if switch is None:
        raise ValueError(f"gradient_checkpointing is not supported for model {kind!r}")
    switch(model)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def versions(kind: str) -> dict:
    """Versions of lmn, torch and the packages the kind requires, for the run's records."""
    import importlib

    from .. import __version__

    out = {"lmn": __version__, "torch": torch.__version__}
    for package in get_kind(kind).requires:
        out[package] = importlib.import_module(package).__version__
    return out
