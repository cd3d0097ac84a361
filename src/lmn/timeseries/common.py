"""What the forecasting kinds share: the config fields of the adapter, instance
normalisation, and the module around a sequence backbone (embedding in, last-position
readout out)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..baselines._common import ConfigMixin
from ..kinds.base import Decoder


class TSConfigMixin(ConfigMixin):
    """``to_dict``/``from_dict`` (unknown fields are an error; from the baselines' mixin) and
    the adapter's checks.

    Subclasses are dataclasses with at least ``vocab_size`` (H * C, set by the task),
    ``n_channels`` (C) and ``revin`` (instance normalisation on/off).
    """

    def _check_adapter(self) -> None:
        self._check_positive_ints("vocab_size", "n_channels")
        if not isinstance(self.revin, bool):
            raise ValueError(f"{type(self).__name__}.revin must be true or false, got {self.revin!r}")

    @property
    def horizon(self) -> int:
        """H; checked when a model is built (the trainer validates options with a placeholder
        ``vocab_size`` before the task has set it)."""
        if self.vocab_size % self.n_channels:
            raise ValueError(f"{type(self).__name__}.vocab_size ({self.vocab_size}) must be horizon * n_channels "
                             f"(n_channels {self.n_channels}); the task sets it")
        return self.vocab_size // self.n_channels


def check_series(x: Tensor, n_channels: int, length: int | None = None) -> None:
    """``x`` must be a float ``(B, L, C)`` tensor with C = ``n_channels`` (and L = ``length``)."""
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        what = f"{x.dim()}-D {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"a forecasting model takes a float (batch, time, channels) tensor, got {what}")
    if x.shape[-1] != n_channels:
        raise ValueError(f"x has {x.shape[-1]} channels, the model {n_channels}")
    if length is not None and x.shape[1] != length:
        raise ValueError(f"x has {x.shape[1]} time steps, the model's input window is {length}")


class InstanceNorm:
    """RevIN without affine parameters (Kim et al. 2022): statistics of each window and
    channel over time; ``undo`` maps a forecast back to the window's scale."""

    EPS = 1e-5

    def __init__(self, x: Tensor):
        self.mean = x.mean(dim=1, keepdim=True).detach()
        self.std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.EPS).detach()

    def apply(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def undo(self, y: Tensor) -> Tensor:
        return y * self.std + self.mean


class SequenceForecaster(nn.Module):
    """``Linear(C, d)`` embedding -> ``backbone(h (B, L, d)) -> (B, L, d)`` -> last
    position -> ``Linear(d, H * C)`` -> ``(B, H, C)``, inside optional instance normalisation.
    Subclasses build ``self.backbone`` (a callable on hidden states) in ``make_backbone``."""

    config_class: type = None

    def __init__(self, config, d_model: int):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        config.horizon  # noqa: B018 -- checks vocab_size = H * C
        self.embed = nn.Linear(config.n_channels, d_model)
        self.backbone = self.make_backbone(config)
        self.head = nn.Linear(d_model, config.vocab_size)

    def make_backbone(self, config) -> nn.Module:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        check_series(x, self.config.n_channels)
        norm = InstanceNorm(x) if self.config.revin else None
        if norm is not None:
            x = norm.apply(x)
        h = self.backbone(self.embed(x))  # (B, L, d)
        y = self.head(h[:, -1]).view(x.shape[0], self.config.horizon, self.config.n_channels)
        return norm.undo(y) if norm is not None else y


class NoDecoder(Decoder):
    """The forecasting kinds are not token decoders (``lmn bench decode`` does not list them)."""

    def __init__(self, model, max_chunk: int = 1024):
        raise ValueError("forecasting models take values, not tokens: they have no token decoder")

