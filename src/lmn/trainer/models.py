"""The trainer's view of a model: a registered kind (:mod:`lmn.kinds`) and its config dict.

Every function takes the kind as its registered name or as the :class:`~lmn.kinds.ModelKind`
itself; a caller that makes several calls looks the kind up once (``get_kind(name)``) and
passes the record.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kinds import ModelKind, get_kind


def _kind(kind: str | ModelKind) -> ModelKind:
    return kind if isinstance(kind, ModelKind) else get_kind(kind)


def resolve_model_config(kind: str | ModelKind, overrides: dict, vocab_size: int, size: str = "paper") -> dict:
    """Full config dict of model ``kind``: its defaults, its named ``size``, then
    ``overrides``, then the task's ``vocab_size``. Validated by the kind's config class."""
    if "vocab_size" in overrides and overrides["vocab_size"] != vocab_size:
        raise ValueError(
            f"vocab_size is set by the task ({vocab_size} symbols), not by the model config "
            f"(got {overrides['vocab_size']})"
        )
    kind = _kind(kind)
    return kind.normalize({**size_overrides(kind, size), **overrides, "vocab_size": vocab_size})


def check_model_config(kind: str | ModelKind, overrides: dict, size: str = "paper") -> None:
    """Raise ValueError for a bad size or option before the task's data is read."""
    kind = _kind(kind)
    kind.normalize({**size_overrides(kind, size), "vocab_size": 1, **overrides})


def size_overrides(kind: str | ModelKind, size: str) -> dict:
    """The config fields of ``kind``'s named size (``paper``: none)."""
    kind = _kind(kind)
    if size not in kind.sizes:
        raise ValueError(f"model {kind.name!r} has no size {size!r}; choose from {', '.join(kind.sizes)}")
    return dict(kind.sizes[size])


def check_requirements(kind: str | ModelKind) -> None:
    """Every package a run of ``kind`` needs is installed (checked before anything is
    written or trained): safetensors (and numpy) for the checkpoints, and the kind's own (e.g.
    transformers for the baselines)."""
    import importlib.util

    kind = _kind(kind)
    needed = ("safetensors", "numpy", *kind.requires)  # safetensors writes through numpy
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"training model {kind.name!r} needs {', '.join(missing)}, which is not installed; "
                         f"install it with: pip install 'torch-lmn[train]'")


def normalize_model_config(kind: str | ModelKind, model_config: dict) -> dict:
    """``model_config`` completed with the current defaults of the kind's config class, so
    configs saved before a field was added still compare equal."""
    return _kind(kind).normalize(model_config)


def check_positions(kind: str | ModelKind, model_config: dict, seq_len: int) -> None:
    """A task's sequences must fit the model's position limit (e.g. GPT-2's table)."""
    kind = _kind(kind)
    limit = kind.max_positions(model_config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"block_size {seq_len} exceeds the {kind.name} model's {limit} positions "
                         f"(raise its limit with --model-opt, e.g. n_positions={seq_len})")


def build_model(kind: str | ModelKind, model_config: dict) -> nn.Module:
    """A freshly initialised model; seed the global RNG first for a reproducible init."""
    return _kind(kind).build(model_config)


def enable_gradient_checkpointing(kind: str | ModelKind, model: nn.Module) -> None:
    kind = _kind(kind)
    if kind.enable_checkpointing is None:
        raise ValueError(f"gradient_checkpointing is not supported for model {kind.name!r}")
    kind.enable_checkpointing(model)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def versions(kind: str | ModelKind) -> dict:
    """Versions of lmn, torch and the packages the kind requires, for the run's records."""
    import importlib

    from .. import __version__

    out = {"lmn": __version__, "torch": torch.__version__}
    for package in _kind(kind).requires:
        out[package] = importlib.import_module(package).__version__
    return out
