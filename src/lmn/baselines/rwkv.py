"""RWKV peer: ``transformers.RwkvForCausalLM`` (RWKV-4), random init (nothing downloaded).

Sizes (parameters for a 65-symbol vocabulary, tied head, attention width d, feed-forward
4d):

* ``paper`` (the defaults): d 36, 4 layers: 71,460 (LMN 71,489; GPT-2 69,344);
* ``large`` (bench): d 284, 8 layers: 8,432,812 (LMN 8,449,089).

``rescale_every`` is 0: transformers would otherwise halve some weights in place whenever
the model is put in eval mode (an fp16 overflow guard), which would make evaluation touch
the trained weights.

Speed on CPU: without the CUDA kernel the WKV recurrence is a Python loop over time
steps, yet a 16 x 512 training step takes only ~0.75 s on one core (LMN: ~0.3 s; GPT-2
~0.7 s) and a decoded token ~0.7 ms, so ``paper-rwkv`` runs the paper's full protocol.
Its decode state (five d-vectors per layer) is constant in the context length.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..kinds.base import BenchSpec, ModelKind, hf_checkpointing
from ._common import ConfigMixin, HFDecoder, HFModel, import_transformers


@dataclass
class RwkvBaselineConfig(ConfigMixin):
    """Size of the RWKV peer (HF field names; attention width = hidden_size, FFN 4x)."""

    vocab_size: int = 65
    hidden_size: int = 36
    num_hidden_layers: int = 4

    def __post_init__(self) -> None:
        self._check_positive_ints("vocab_size", "hidden_size", "num_hidden_layers")
        if self.num_hidden_layers < 2:  # transformers' init spreads its decay rates over layers 0 .. L-1
            raise ValueError(f"RwkvBaselineConfig.num_hidden_layers must be >= 2, got {self.num_hidden_layers}")

    def to_hf(self):
        return import_transformers("rwkv").RwkvConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            rescale_every=0,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        )


class RwkvBaseline(HFModel):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``."""

    config_class = RwkvBaselineConfig

    def make_hf(self, config: RwkvBaselineConfig) -> nn.Module:
        return import_transformers("rwkv").RwkvForCausalLM(config.to_hf())


def _state_bytes(config: dict, positions: int) -> int:
    """Five float32 vectors of width d per layer (batch 1), whatever the context."""
    return 5 * config["hidden_size"] * config["num_hidden_layers"] * 4


KINDS = {"rwkv": ModelKind(
    name="rwkv",
    title="RWKV",
    config_class=RwkvBaselineConfig,
    model_class=RwkvBaseline,
    decoder=HFDecoder,
    sizes={"paper": {}, "large": {"hidden_size": 284, "num_hidden_layers": 8},
           "tiny": {"hidden_size": 16, "num_hidden_layers": 2}},
    state_bytes=_state_bytes,
    enable_checkpointing=hf_checkpointing,
    requires=("transformers",),
    bench=BenchSpec(describe={"decode": "through transformers' RWKV state",
                              "bench-train": "transformers' RWKV-4 (WKV loop over time on CPU)",
                              "state": "RWKV's per-layer state"}),
    preset={},  # the paper's full protocol (~0.75 s per step on one core)
)}
