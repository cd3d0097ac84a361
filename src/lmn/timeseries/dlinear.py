"""``dlinear``: the DLinear baseline (Zeng et al. 2023, "Are Transformers Effective for
Time Series Forecasting?", AAAI), as in its reference code with ``individual=False``.

Each channel's input window (L steps) is split by a moving average (kernel 25, the series
padded by repeating its first and last values) into a trend and a remainder; one
``Linear(L, H)`` maps the trend and one the remainder to the horizon, and the two are
added. The same two maps serve every channel. No instance normalisation by default (as
DLinear; ``revin=true`` adds the adapter's). Parameters: ``2 * (L * H + H)``: 64,704 at
L 336, H 96.

Sizes: DLinear has no width; every size is the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kinds.base import BenchSpec, ModelKind
from .common import InstanceNorm, NoDecoder, TSConfigMixin, check_series


@dataclass
class DLinearConfig(TSConfigMixin):
    vocab_size: int = 672
    n_channels: int = 7
    revin: bool = False
    input_len: int = 336
    kernel: int = 25

    def __post_init__(self) -> None:
        self._check_adapter()
        self._check_positive_ints("input_len", "kernel")
        if self.kernel % 2 == 0:
            raise ValueError(f"DLinearConfig.kernel must be odd, got {self.kernel}")


def moving_average(x: Tensor, kernel: int) -> Tensor:
    """Trend of ``x (B, L, C)``: mean over ``kernel`` steps centred on each step, the
    series padded with (kernel - 1) / 2 copies of its first and last values (DLinear's
    ``moving_avg``)."""
    pad = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return F.avg_pool1d(padded.transpose(1, 2), kernel, stride=1).transpose(1, 2)


class DLinear(nn.Module):
    """``forward(x (B, L, C)) -> (B, H, C)``."""

    def __init__(self, config: DLinearConfig):
        super().__init__()
        if not isinstance(config, DLinearConfig):
            raise TypeError(f"DLinear expects a DLinearConfig, got {type(config).__name__}")
        self.config = config
        self.seasonal = nn.Linear(config.input_len, config.horizon)
        self.trend = nn.Linear(config.input_len, config.horizon)

    def forward(self, x: Tensor) -> Tensor:
        check_series(x, self.config.n_channels, self.config.input_len)
        norm = InstanceNorm(x) if self.config.revin else None
        if norm is not None:
            x = norm.apply(x)
        trend = moving_average(x, self.config.kernel)
        seasonal = x - trend
        y = (self.seasonal(seasonal.transpose(1, 2)) + self.trend(trend.transpose(1, 2))).transpose(1, 2)
        return norm.undo(y) if norm is not None else y


KINDS = {"dlinear": ModelKind(
    name="dlinear",
    title="DLinear",
    config_class=DLinearConfig,
    model_class=DLinear,
    decoder=NoDecoder,
    sizes={"paper": {}, "tiny": {}, "large": {}},
    uses=frozenset({"train"}),
    bench=BenchSpec(describe={"train": "DLinear (decomposition + two shared linear maps window -> horizon)"}),
)}
