"""``transformer-ts``: a Transformer encoder of LMN's size on continuous inputs (see
:mod:`lmn.timeseries`).

torch's ``nn.TransformerEncoderLayer`` (pre-norm, GELU, dropout 0, bidirectional attention
over the whole input window as in the Informer / PatchTST encoders), sinusoidal positions
added to ``Linear(C, d)`` of each step, a final LayerNorm, and the same last-position
readout and instance normalisation as ``lmn-ts``.

Sizes: ``paper`` d 36, 4 layers, 4 heads, feed-forward 144: 64,152 backbone parameters
(LMN's blocks: 67,264); ``tiny`` d 16, 2 layers; ``large`` d 256, 8 layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..kinds.base import BenchSpec, ModelKind
from ..model import sinusoidal_encoding
from .common import NoDecoder, SequenceForecaster, TSConfigMixin


@dataclass
class TransformerTSConfig(TSConfigMixin):
    vocab_size: int = 672
    n_channels: int = 7
    revin: bool = True
    d_model: int = 36
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 144

    def __post_init__(self) -> None:
        self._check_adapter()
        self._check_positive_ints("d_model", "n_layers", "n_heads", "d_ff")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


class TransformerBackbone(nn.Module):
    def __init__(self, config: TransformerTSConfig):
        super().__init__()
        self.d_model = config.d_model
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.d_ff, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, h: Tensor) -> Tensor:
        h = h + sinusoidal_encoding(torch.arange(h.shape[1], device=h.device), self.d_model, h.dtype)
        return self.norm(self.encoder(h))


class TransformerForecaster(SequenceForecaster):
    """``forward(x (B, L, C)) -> (B, H, C)``."""

    config_class = TransformerTSConfig

    def __init__(self, config: TransformerTSConfig):
        super().__init__(config, config.d_model)

    def make_backbone(self, config: TransformerTSConfig) -> nn.Module:
        return TransformerBackbone(config)


KINDS = {"transformer-ts": ModelKind(
    name="transformer-ts",
    title="Transformer encoder (series)",
    config_class=TransformerTSConfig,
    model_class=TransformerForecaster,
    decoder=NoDecoder,
    sizes={"paper": {}, "tiny": {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 64},
           "large": {"d_model": 256, "n_layers": 8, "n_heads": 8, "d_ff": 1024}},
    uses=frozenset({"train"}),
    bench=BenchSpec(describe={
        "train": "pre-norm Transformer encoder, Linear(C, d) input embedding, last-position readout"}),
)}
