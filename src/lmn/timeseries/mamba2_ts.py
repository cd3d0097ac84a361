"""``mamba2-ts``: transformers' Mamba-2 on continuous inputs (see :mod:`lmn.timeseries`).

``Mamba2Model`` (random init, nothing downloaded) is fed ``inputs_embeds`` = ``Linear(C, d)``
of each step; its final RMSNorm output at the last position is read out as in ``lmn-ts``,
inside the same instance normalisation. Its token table is built with one row (unused;
d parameters).

Sizes: ``paper`` = the ``mamba2`` kind's (d 48, 4 layers, state 16, head_dim 8, SSD chunk
32): 67,120 backbone parameters (LMN's blocks: 67,264); ``tiny`` d 16, 2 layers; ``large``
d 416, 8 layers, head_dim 64. Speed: the pure-PyTorch SSD scan (see
:mod:`lmn.baselines.mamba2`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..baselines._common import check_heads, import_transformers
from ..kinds.base import BenchSpec, ModelKind
from .common import NoDecoder, SequenceForecaster, TSConfigMixin


@dataclass
class Mamba2TSConfig(TSConfigMixin):
    vocab_size: int = 672
    n_channels: int = 7
    revin: bool = True
    hidden_size: int = 48
    num_hidden_layers: int = 4
    state_size: int = 16
    expand: int = 2
    head_dim: int = 8
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 32

    def __post_init__(self) -> None:
        self._check_adapter()
        self._check_positive_ints("hidden_size", "num_hidden_layers", "state_size", "expand", "head_dim",
                                  "n_groups", "conv_kernel", "chunk_size")
        check_heads(self.expand, self.hidden_size, self.head_dim, self.n_groups)


class Mamba2Backbone(nn.Module):
    def __init__(self, config: Mamba2TSConfig):
        super().__init__()
        hf = import_transformers("mamba2-ts")
        self.hf = hf.Mamba2Model(hf.Mamba2Config(
            vocab_size=1, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            state_size=config.state_size, expand=config.expand, head_dim=config.head_dim,
            num_heads=config.expand * config.hidden_size // config.head_dim, n_groups=config.n_groups,
            conv_kernel=config.conv_kernel, chunk_size=config.chunk_size, bos_token_id=0, eos_token_id=0,
            pad_token_id=0))

    def forward(self, h: Tensor) -> Tensor:
        return self.hf(inputs_embeds=h, use_cache=False).last_hidden_state


class Mamba2Forecaster(SequenceForecaster):
    """``forward(x (B, L, C)) -> (B, H, C)``."""

    config_class = Mamba2TSConfig

    def __init__(self, config: Mamba2TSConfig):
        super().__init__(config, config.hidden_size)

    def make_backbone(self, config: Mamba2TSConfig) -> nn.Module:
        return Mamba2Backbone(config)


KINDS = {"mamba2-ts": ModelKind(
    name="mamba2-ts",
    title="Mamba-2 (series)",
    config_class=Mamba2TSConfig,
    model_class=Mamba2Forecaster,
    decoder=NoDecoder,
    sizes={"paper": {}, "tiny": {"hidden_size": 16, "num_hidden_layers": 2},
           "large": {"hidden_size": 416, "num_hidden_layers": 8, "head_dim": 64}},
    uses=frozenset({"train"}),
    requires=("transformers",),
    bench=BenchSpec(describe={"train": "transformers' Mamba2Model on inputs_embeds, last-position readout"}),
)}
