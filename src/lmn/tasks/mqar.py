"""MQAR, multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models", arXiv 2312.04927, Sec. 3 and App. E; the
generator follows ``zoology/data/associative_recall.py::multiquery_ar``).

Definition (sequence length T, ``pairs`` = D key-value pairs, vocabulary V):

* keys are drawn from ``[1, V/2)``, values from ``[V/2, V)``, D distinct of each per
  example; the first ``2D`` positions hold ``k1 v1 k2 v2 ... kD vD``;
* the remaining ``T - 2D`` positions are the query region; each key is queried exactly
  once, at position ``2D + 2g`` where the gaps ``g`` are D distinct draws (without
  replacement) from ``{0, ..., (T - 2D)/2 - 1}`` with probability ``p(g) ∝ a·(g+1)^(a-1)``,
  ``a = power_a = 0.01`` (Zoology's power law: near queries are more likely);
* every other position of the query region holds a uniformly random token of ``[0, V)``
  (Zoology's ``random_non_queries``);
* the target at a query position is the value paired with the key read there; only query
  positions are scored (loss and accuracy on answers only).

Buckets: the distance in tokens from the key in the context to its query, in powers of
two (``accuracy@8`` covers distances 8-15).

Zoology's grid of (T, D): (64, 4), (128, 8), (256, 16), (512, 64), vocabulary 8,192.
Options: ``pairs`` (D, default 4), ``vocab`` (V, default 8192), ``power_a`` (0.01); T is
``--block-size``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch
from ..validation import check_int
from .synthetic import SyntheticTask, pow2_bucket, pow2_grid

ZOOLOGY_GRID = ((64, 4), (128, 8), (256, 16), (512, 64))


class MQARTask(SyntheticTask):
    """Multi-query associative recall (see the module docstring)."""

    name = "mqar"

    def __init__(self, seq_len: int = 64, pairs: int = 4, vocab: int = 8192, power_a: float = 0.01, **common):
        super().__init__(**common)
        check_int("pairs", pairs, min=1)
        if 4 * pairs > seq_len:
            raise ValueError(f"MQAR needs block_size >= 4 * pairs (Zoology), got T {seq_len} with {pairs} pairs")
        if vocab // 2 - 1 < pairs or vocab - vocab // 2 < pairs:
            raise ValueError(f"vocab {vocab} has too few keys/values for {pairs} distinct pairs")
        if not 0 < power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {power_a}")
        self.seq_len, self.pairs, self.vocab_size, self.power_a = int(seq_len), int(pairs), int(vocab), float(power_a)
        self.context = 2 * self.pairs
        self.space = (self.seq_len - self.context) // 2
        g = torch.arange(1, self.space + 1, dtype=torch.float64)
        p = self.power_a * g ** (self.power_a - 1)
        self.gap_p = p / p.sum()  # probability of gap g-1
        self.bucket_values = pow2_grid(1, self.seq_len)

    @classmethod
    def from_config(cls, cfg) -> "MQARTask":
        o = cls.options(cfg, {"pairs": 4, "vocab": 8192, "power_a": 0.01})
        return cls(cfg.block_size, **o)

    def generate(self, n: int, generator: torch.Generator) -> Batch:
        D, V, T = self.pairs, self.vocab_size, self.seq_len
        half = V // 2
        keys = torch.rand(n, half - 1, generator=generator).argsort(-1)[:, :D] + 1  # distinct in [1, V/2)
        values = torch.rand(n, V - half, generator=generator).argsort(-1)[:, :D] + half  # distinct in [V/2, V)
        gaps = torch.multinomial(self.gap_p.expand(n, -1), D, replacement=False, generator=generator)  # (n, D)
        x = torch.randint(0, V, (n, T), generator=generator)  # random non-queries
        x[:, 0 : self.context : 2] = keys
        x[:, 1 : self.context : 2] = values
        qpos = self.context + 2 * gaps
        x.scatter_(1, qpos, keys)
        y = torch.zeros(n, T, dtype=torch.int64)
        y.scatter_(1, qpos, values)
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask.scatter_(1, qpos, True)
        return Batch(x, y, mask)

    def buckets(self, x: Tensor) -> Tensor:
        """Distance from the key in the context to each position reading the same token
        (at query positions: the query distance)."""
        keys = x[:, 0 : self.context : 2]  # (B, D)
        match = x[:, :, None] == keys[:, None, :]  # (B, T, D)
        key_pos = 2 * match.int().argmax(-1)  # first matching key's position (0 where none)
        dist = torch.arange(x.shape[1])[None, :] - key_pos
        return pow2_bucket(dist)

    def config(self) -> dict:
        return {**super().config(), "pairs": self.pairs, "power_a": self.power_a}


__all__ = ["MQARTask", "ZOOLOGY_GRID"]
