"""What the baseline wrappers share: config (de)serialisation and input checks."""

from __future__ import annotations

from dataclasses import asdict, fields

import torch
from torch import Tensor


class ConfigMixin:
    """``to_dict``/``from_dict`` for a dataclass config; unknown fields are an error."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**data)

    def _check_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be an integer >= 1, got {value!r}")


def check_idx(idx: Tensor, vocab_size: int, max_len: int | None = None) -> None:
    """``idx`` must be ``(B, T)`` integer ids in ``[0, vocab_size)``, ``T <= max_len``."""
    if not isinstance(idx, Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, time) tensor of token ids, got {shape}")
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    if idx.numel() == 0:
        raise ValueError(f"idx is empty (shape {tuple(idx.shape)})")
    if max_len is not None and idx.shape[1] > max_len:
        raise ValueError(f"sequence length {idx.shape[1]} exceeds the model's {max_len} positions")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"idx contains token id {lo if lo < 0 else hi}, outside [0, {vocab_size})")
