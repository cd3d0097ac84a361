"""Mamba-2 peer: ``transformers.Mamba2ForCausalLM``, random init (nothing downloaded).

Sizes (parameters for a 65-symbol vocabulary, tied head, 1 group, conv 4, expand 2):

* ``paper`` (the defaults): d 48, 4 layers, state 16, head_dim 8 (12 heads): 70,192
  (LMN 71,489; GPT-2 69,344; Mamba 71,016);
* ``large`` (bench): d 416, 8 layers, head_dim 64 (13 heads): 8,528,760 (LMN 8,449,089).

Speed on CPU: without the ``mamba-ssm`` / ``causal-conv1d`` kernels transformers runs the
chunked SSD scan in plain PyTorch (it logs that it falls back). Its cost within a chunk
grows with the square of ``chunk_size``, so the default here is 32, not HF's 256 (the
same recurrence, summed in another order): measured on one core, a 16 x 512 training step
takes ~0.6-1.0 s at chunk 32, ~1 s at 64, ~2.2 s at 128 and ~5 s at 256 (LMN: ~0.3 s).
A decoded token costs ~1 ms. The decode state (conv + SSM state) is constant in the
context length.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..kinds.base import BenchSpec, ModelKind, hf_checkpointing
from ._common import ConfigMixin, HFDecoder, HFModel, check_heads, import_transformers


@dataclass
class Mamba2BaselineConfig(ConfigMixin):
    """Size of the Mamba-2 peer (HF field names; ``num_heads = expand * hidden_size / head_dim``)."""

    vocab_size: int = 65
    hidden_size: int = 48
    num_hidden_layers: int = 4
    state_size: int = 16
    expand: int = 2
    head_dim: int = 8
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 32  # SSD chunk: 32 trains ~8x faster than HF's 256 on CPU (see above)

    def __post_init__(self) -> None:
        self._check_positive_ints("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand",
                                  "head_dim", "n_groups", "conv_kernel", "chunk_size")
        check_heads(self.expand, self.hidden_size, self.head_dim, self.n_groups)

    def to_hf(self):
        return import_transformers("mamba2").Mamba2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            state_size=self.state_size,
            expand=self.expand,
            head_dim=self.head_dim,
            num_heads=self.expand * self.hidden_size // self.head_dim,
            n_groups=self.n_groups,
            conv_kernel=self.conv_kernel,
            chunk_size=self.chunk_size,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )


class Mamba2Baseline(HFModel):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``."""

    config_class = Mamba2BaselineConfig

    def make_hf(self, config: Mamba2BaselineConfig) -> nn.Module:
        return import_transformers("mamba2").Mamba2ForCausalLM(config.to_hf())


KINDS = {"mamba2": ModelKind(
    name="mamba2",
    title="Mamba-2",
    config_class=Mamba2BaselineConfig,
    model_class=Mamba2Baseline,
    decoder=HFDecoder,
    sizes={"paper": {}, "large": {"hidden_size": 416, "num_hidden_layers": 8, "head_dim": 64},
           "tiny": {"hidden_size": 16, "num_hidden_layers": 2}},
    enable_checkpointing=hf_checkpointing,
    requires=("transformers",),
    bench=BenchSpec(describe={"decode": "through transformers' Mamba-2 cache",
                              "bench-train": "transformers' Mamba-2 (PyTorch SSD scan)",
                              "state": "Mamba-2's conv + SSM state"}),
    preset={},  # the paper's full protocol: ~1 s per step on one core, like GPT-2
)}
