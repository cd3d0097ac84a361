"""Distance probe, the information-retention curve: recall the token seen exactly d
positions ago (issue 14, item 1; in the spirit of the "induction head"/copy probes of
Olsson et al. 2022 and of the exponential-decay analyses of state-space memory, e.g.
Gu et al. 2020 "HiPPO" Sec. 1: how much of position t-d a model still holds at t).

Definition (sequence length T, C content tokens, distances ``d_1 < ... < d_m``):

* tokens ``0 ... C-1`` are content; token ``C + j`` is the *cue* "recall the token d_j
  positions ago"; V = C + m;
* an example holds ``n_queries`` cues at distinct positions; the rest is uniform random
  content. For each cue, d is drawn uniformly from the distances, then its position t
  uniformly from ``[d, T)``, redrawn until t is free and ``t - d`` is not a cue (so the
  token to recall is content);
* the target at a cue at t with distance d is ``x[t - d]``; only cue positions are scored.

Buckets: d (exactly; ``accuracy@64`` is recall 64 positions back).
Options: ``content`` (C, default 16), ``distances`` (default the powers of two 1 ... T/2),
``n_queries`` (default 8); T is ``--block-size``. The issue's curve is d = 1 ... 4096.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from .base import Batch
from .passkey import parse_ints
from .synthetic import SyntheticTask, pow2_grid, seed_from


class DistanceTask(SyntheticTask):
    """Recall the token exactly d positions back (see the module docstring)."""

    name = "distance"

    def __init__(self, seq_len: int = 256, content: int = 16, distances=None, n_queries: int = 8, **common):
        super().__init__(**common)
        grid = pow2_grid(1, seq_len // 2) if distances is None else parse_ints(distances)
        if not grid or min(grid) < 1 or max(grid) >= seq_len or len(set(grid)) != len(grid):
            raise ValueError(f"distances must be distinct, in [1, block_size) = [1, {seq_len}), got {grid}")
        if content < 2 or n_queries < 1 or 2 * n_queries > seq_len - max(grid):
            raise ValueError(f"distance probe needs content >= 2 and 1 <= n_queries <= (T - max d)/2; got "
                             f"content {content}, n_queries {n_queries}, T {seq_len}, max d {max(grid)}")
        self.seq_len, self.content, self.n_queries = int(seq_len), int(content), int(n_queries)
        self.distances = tuple(sorted(grid))
        self.vocab_size = self.content + len(self.distances)
        self.bucket_values = self.distances

    @classmethod
    def from_config(cls, cfg) -> "DistanceTask":
        o = cls.options(cfg, {"content": 16, "distances": None, "n_queries": 8})
        return cls(cfg.block_size, **o)

    def generate(self, n: int, generator: torch.Generator) -> Batch:
        T = self.seq_len
        x = torch.randint(0, self.content, (n, T), generator=generator)
        y = torch.zeros(n, T, dtype=torch.int64)
        mask = torch.zeros(n, T, dtype=torch.bool)
        rng = random.Random(seed_from(generator))
        for b in range(n):
            cues: dict[int, int] = {}  # position -> distance index
            while len(cues) < self.n_queries:
                j = rng.randrange(len(self.distances))
                d = self.distances[j]
                t = rng.randrange(d, T)
                if t in cues or (t - d) in cues or any(p - self.distances[i] == t for p, i in cues.items()):
                    continue
                cues[t] = j
            for t, j in cues.items():
                x[b, t] = self.content + j
            for t, j in cues.items():
                y[b, t] = x[b, t - self.distances[j]]
                mask[b, t] = True
        return Batch(x, y, mask)

    def buckets(self, x: Tensor) -> Tensor:
        d = torch.tensor((0, *self.distances))
        return d[(x - self.content + 1).clamp(min=0)]

    def config(self) -> dict:
        return {**super().config(), "content": self.content, "distances": list(self.distances),
                "n_queries": self.n_queries}


__all__ = ["DistanceTask"]
