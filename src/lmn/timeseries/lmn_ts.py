"""``lmn-ts``: LMN blocks on continuous inputs (see :mod:`lmn.timeseries`).

The token table of :class:`lmn.LMN` becomes ``Linear(C, d)`` on each time step's C values;
the blocks (:class:`lmn.model.LMNBlock`: logarithmic memory, single-vector attention,
feed-forward) and the final LayerNorm are LMN's own, unchanged; positions are implicit
(``pos_encoding="none"``) as in the paper's model unless configured otherwise. The forecast
of all H steps is read from the last position's hidden state (``Linear(d, H * C)``), inside
instance normalisation (``revin``).

Sizes: ``paper`` = the Table 1 LMN's blocks (d 32, 4 layers, 4 heads, 2 banks: 67,264
backbone parameters; with 7 channels and horizon 96 the model has 89,696 in all, of
which the readout is 22,176); ``tiny`` d 16, 2 layers; ``large`` d 256, 8 layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import LMNConfig
from ..kinds.base import BenchSpec, ModelKind
from ..model import LMNBlock, sinusoidal_encoding
from .common import NoDecoder, SequenceForecaster, TSConfigMixin

BACKBONE_FIELDS = ("d_model", "n_layers", "n_heads", "n_banks", "summarizer", "expand", "ff_mult", "pos_encoding",
                   "norm_eps", "chunk_size", "stride", "read", "max_level", "pinned")


@dataclass
class LMNTSConfig(TSConfigMixin):
    """Adapter fields, then :class:`lmn.config.LMNConfig`'s (same names and meaning)."""

    vocab_size: int = 672  # H * C: horizon 96 x 7 channels (set by the task)
    n_channels: int = 7
    revin: bool = True
    d_model: int = 32
    n_layers: int = 4
    n_heads: int = 4
    n_banks: int = 2
    summarizer: str = "linear"
    expand: int = 0
    ff_mult: int = 4
    pos_encoding: str = "none"
    norm_eps: float | None = None
    chunk_size: int = 4096
    stride: int = 2
    read: str = "latest"
    max_level: int | None = None
    pinned: int = 0

    def __post_init__(self) -> None:
        self._check_adapter()
        self.lmn_config()  # LMNConfig validates the backbone fields

    def lmn_config(self) -> LMNConfig:
        return LMNConfig(vocab_size=1, **{k: getattr(self, k) for k in BACKBONE_FIELDS})


class LMNBackbone(nn.Module):
    """LMN's blocks and final norm on hidden states ``(B, L, d)`` (no token table, no head)."""

    def __init__(self, config: LMNConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(LMNBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps if config.norm_eps is not None else 1e-5)

    def forward(self, h: Tensor) -> Tensor:
        if self.config.pos_encoding == "sinusoidal":
            h = h + sinusoidal_encoding(torch.arange(h.shape[1], device=h.device), self.config.d_model, h.dtype)
        chunk = self.config.tree.chunk(self.config.chunk_size)
        for block in self.blocks:
            h, _ = block(h, chunk=chunk)
        return self.ln_f(h)


class LMNForecaster(SequenceForecaster):
    """``forward(x (B, L, C)) -> (B, H, C)``."""

    config_class = LMNTSConfig

    def __init__(self, config: LMNTSConfig):
        super().__init__(config, config.d_model)

    def make_backbone(self, config: LMNTSConfig) -> nn.Module:
        return LMNBackbone(config.lmn_config())


KINDS = {"lmn-ts": ModelKind(
    name="lmn-ts",
    title="LMN (series)",
    config_class=LMNTSConfig,
    model_class=LMNForecaster,
    decoder=NoDecoder,
    sizes={"paper": {}, "tiny": {"d_model": 16, "n_layers": 2, "n_heads": 2},
           "large": {"d_model": 256, "n_layers": 8, "n_heads": 8}},
    uses=frozenset({"train"}),
    bench=BenchSpec(describe={"train": "LMN blocks, Linear(C, d) input embedding, last-position readout"}),
)}
