"""GPT-2 baseline: ``transformers.GPT2LMHeadModel`` at the paper's size, random init.

With the defaults (n_embd 32, 4 layers, 4 heads, inner 128, 512 positions, tied LM head)
it has 69,344 parameters for a 65-symbol vocabulary. The paper's Table 1 reports 71,105
for its hand-written GPT; the difference is that model's details (e.g. an untied head
would add 65 * 32 = 2,080), not a different size class. ``large`` (bench): n_embd 256,
8 layers, 8 heads, inner 1024: 6,466,304 parameters.

Dropout is 0 by default, as in the paper's protocol -- and because with attention
dropout SDPA leaves its fused CPU kernel for a path several times slower. ``dropout``
sets GPT-2's three dropout rates at once (the ``nanogpt`` presets use 0.2).

GPT-2's learned position table grows with the context bench must reach (``n_positions``
is raised to the benchmarked length); bench's ``params`` counts it at the usual 512
positions, ``params_total`` at the size actually built (+n_embd per extra position).
Decoding uses HF's ``DynamicCache``, which concatenates on every step, as ``generate()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..documents import block_causal_mask, check_doc_starts, document_positions
from ..kinds.base import BenchSpec, ModelKind, hf_checkpointing
from ._common import ConfigMixin, HFDecoder, HFModel, check_idx, import_transformers

DEFAULT_POSITIONS = 512


@dataclass
class GPT2BaselineConfig(ConfigMixin):
    """Size of the GPT-2 baseline (HF field names)."""

    vocab_size: int = 65
    n_embd: int = 32
    n_layer: int = 4
    n_head: int = 4
    n_inner: int = 128
    n_positions: int = DEFAULT_POSITIONS
    dropout: float = 0.0  # resid_pdrop, embd_pdrop and attn_pdrop (nanoGPT's single ``dropout``)

    def __post_init__(self) -> None:
        self._check_positive_ints("vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def to_hf(self):
        return import_transformers("gpt2").GPT2Config(
            vocab_size=self.vocab_size,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_inner=self.n_inner,
            n_positions=self.n_positions,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            tie_word_embeddings=True,
            # GPT-2's 50256 would lie outside a character vocabulary; the ids are unused.
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="sdpa",
        )


class GPT2Baseline(HFModel):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``; ``T <= n_positions``."""

    config_class = GPT2BaselineConfig

    def make_hf(self, config: GPT2BaselineConfig) -> nn.Module:
        return import_transformers("gpt2").GPT2LMHeadModel(config.to_hf())  # random init, HF's GPT-2 scheme

    def max_positions(self) -> int:
        return self.config.n_positions

    def forward(self, idx: Tensor, doc_starts: Tensor | None = None) -> Tensor:
        """``doc_starts`` (packed rows, :mod:`lmn.documents`): GPT-2's own mechanism, one
        pass with a block-diagonal causal attention mask and positions restarting at
        every document (each document's logits are those of it alone)."""
        check_idx(idx, self.config.vocab_size, self.max_positions())
        if doc_starts is None:
            return self._logits(idx)
        doc_starts = check_doc_starts(doc_starts, idx)
        return self.hf(input_ids=idx, attention_mask=block_causal_mask(doc_starts),
                       position_ids=document_positions(doc_starts), use_cache=False).logits


def _with_positions(config: dict, positions: int | None) -> dict:
    n = DEFAULT_POSITIONS if positions is None else max(positions, DEFAULT_POSITIONS)
    return {**config, "n_positions": n}


def _reported_params(model: GPT2Baseline, config) -> int:
    """Parameters with the position table at 512 rows, however many were built."""
    return model.num_parameters() - (model.config.n_positions - DEFAULT_POSITIONS) * model.config.n_embd


def _cache_bytes(config: dict, positions: int) -> int:
    """K and V of every layer: 2 * layers * P * n_embd * 4 bytes (batch 1, float32)."""
    return 2 * config["n_layer"] * positions * config["n_embd"] * 4


KINDS = {"gpt2": ModelKind(
    name="gpt2",
    title="GPT-2",
    config_class=GPT2BaselineConfig,
    model_class=GPT2Baseline,
    decoder=HFDecoder,
    sizes={"paper": {}, "large": {"n_embd": 256, "n_layer": 8, "n_head": 8, "n_inner": 1024},
           "tiny": {"n_embd": 16, "n_layer": 2, "n_head": 2, "n_inner": 64},
           # nanoGPT's Shakespeare-char GPT (6 x 384, 6 heads, block 256; with biases)
           "nanogpt": {"n_embd": 384, "n_layer": 6, "n_head": 6, "n_inner": 1536, "n_positions": 256}},
    max_positions=lambda config: config["n_positions"],
    state_bytes=_cache_bytes,
    enable_checkpointing=hf_checkpointing,
    requires=("transformers",),
    paper={"params": 71_105, "val_loss": 1.9704},
    preset={},
    bench=BenchSpec(
        with_positions=_with_positions,
        reported_params=_reported_params,
        describe={"decode": "through transformers' KV cache (`DynamicCache`)",
                  "bench-train": "transformers' GPT-2 with SDPA attention and no dropout",
                  "state": "GPT-2's KV cache"}),
)}
