"""GPT-2 baseline: ``transformers.GPT2LMHeadModel`` at the paper's size, random init.

With the defaults (n_embd 32, 4 layers, 4 heads, inner 128, 512 positions, tied LM head)
it has 69,344 parameters for a 65-symbol vocabulary. The paper's Table 1 reports 71,105
for its hand-written GPT; the difference is that model's details (e.g. an untied head
would add 65 * 32 = 2,080), not a different size class.

Dropout is 0 everywhere, as in the paper's protocol -- and because with attention
dropout SDPA leaves its fused CPU kernel for a path several times slower.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel

from ._common import ConfigMixin, check_idx


@dataclass
class GPT2BaselineConfig(ConfigMixin):
    """Size of the GPT-2 baseline (HF field names)."""

    vocab_size: int = 65
    n_embd: int = 32
    n_layer: int = 4
    n_head: int = 4
    n_inner: int = 128
    n_positions: int = 512

    def __post_init__(self) -> None:
        self._check_positive_ints("vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def to_hf(self) -> GPT2Config:
        return GPT2Config(
            vocab_size=self.vocab_size,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_inner=self.n_inner,
            n_positions=self.n_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            # GPT-2's 50256 would lie outside a character vocabulary; the ids are unused.
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="sdpa",
        )


class GPT2Baseline(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``; ``T <= n_positions``."""

    def __init__(self, config: GPT2BaselineConfig):
        super().__init__()
        if not isinstance(config, GPT2BaselineConfig):
            raise TypeError(f"GPT2Baseline expects a GPT2BaselineConfig, got {type(config).__name__}")
        self.config = config
        self.hf = GPT2LMHeadModel(config.to_hf())  # random init, HF's GPT-2 scheme

    def num_parameters(self) -> int:
        # parameters() yields a tied weight once, so the head is not counted twice.
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor) -> Tensor:
        check_idx(idx, self.config.vocab_size, self.config.n_positions)
        return self.hf(input_ids=idx, use_cache=False).logits
