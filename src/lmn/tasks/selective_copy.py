"""Selective copying (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv 2312.00752, Sec. 3.1 and 4.1.1, App. E.1; the generator follows
``torch_copying_data(L, M, A, variable=True)`` of the state-spaces repository).

Definition (M tokens to memorise, vocabulary A, sequence length T = L + 2M):

* token ``0`` is noise (blank), token ``A-1`` is the marker, data tokens are uniform over
  ``1 ... A-2``;
* the first ``L + M`` positions are noise except M data tokens at M distinct positions
  drawn uniformly (kept in order); then M markers;
* at the i-th marker (position ``L + M + i``) the target is the i-th data token: the model
  reproduces the data tokens in order, skipping the noise. Only the marker positions are
  scored.

The Mamba paper uses A = 16, M = 16 and L = 4,096 (T = 4,128). Buckets: the distance from a
data token to the marker that reads it back, in powers of two.
Options: ``n_tokens`` (M, default 16), ``vocab`` (A, default 16); T is ``--block-size``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch
from .synthetic import SyntheticTask, pow2_bucket, pow2_grid


class SelectiveCopyTask(SyntheticTask):
    """Selective copying (see the module docstring)."""

    name = "selective-copy"

    def __init__(self, seq_len: int = 128, n_tokens: int = 16, vocab: int = 16, **common):
        super().__init__(**common)
        if n_tokens < 1 or vocab < 3 or seq_len < 3 * n_tokens:
            raise ValueError(f"selective copying needs n_tokens >= 1, vocab >= 3 and block_size >= 3 * n_tokens "
                             f"(L >= M); got {n_tokens}, {vocab}, {seq_len}")
        self.seq_len, self.n_tokens, self.vocab_size = int(seq_len), int(n_tokens), int(vocab)
        self.noise_len = self.seq_len - 2 * self.n_tokens  # L
        self.marker = self.vocab_size - 1
        self.bucket_values = pow2_grid(1, self.seq_len)

    @classmethod
    def from_config(cls, cfg) -> "SelectiveCopyTask":
        o = cls.options(cfg, {"n_tokens": 16, "vocab": 16})
        return cls(cfg.block_size, **o)

    def generate(self, n: int, generator: torch.Generator) -> Batch:
        M, T = self.n_tokens, self.seq_len
        region = self.noise_len + M
        tokens = torch.randint(1, self.vocab_size - 1, (n, M), generator=generator)
        pos = torch.rand(n, region, generator=generator).argsort(-1)[:, :M].sort(-1).values
        x = torch.zeros(n, T, dtype=torch.int64)
        x.scatter_(1, pos, tokens)
        x[:, region:] = self.marker
        y = torch.zeros(n, T, dtype=torch.int64)
        y[:, region:] = tokens
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask[:, region:] = True
        return Batch(x, y, mask)

    def buckets(self, x: Tensor) -> Tensor:
        region = self.noise_len + self.n_tokens
        data = (x[:, :region] != 0) & (x[:, :region] != self.marker)
        # the i-th data position of each row, for i = 0 .. M-1 (rows with fewer: 0)
        idx = torch.arange(region).expand_as(data)
        order = torch.where(data, idx, region + idx).sort(-1).values[:, : self.n_tokens] % region
        out = torch.zeros_like(x)
        out[:, region:] = pow2_bucket(torch.arange(region, x.shape[1])[None, :] - order)
        return out

    def config(self) -> dict:
        return {**super().config(), "n_tokens": self.n_tokens}


__all__ = ["SelectiveCopyTask"]
