"""Passkey retrieval (needle in a haystack): a short key planted d tokens before the
question, filler between (Mohtashami & Jaggi 2023, "Landmark Attention", Sec. 4.2 and
App. D, the passkey test; here with token-level filler instead of repeated sentences, as a
synthetic for models trained from scratch).

Definition (sequence length T, key of L digits, vocabulary V):

* tokens ``0-9`` are digits, ``10`` is the KEY marker, ``11`` the QUERY marker, and
  ``12 ... V-1`` are filler;
* an example is: filler, ``KEY k1 ... kL`` at positions ``s ... s+L``, filler, and at the
  end ``QUERY k1 ... k(L-1)`` at positions ``q = T-L ... T-1``; every filler token is uniform
  over the filler tokens, the key digits uniform over ``0-9``;
* d = ``q - s``, the distance from the KEY marker to the QUERY marker (``L+1 <= d <=
  T-L``); training examples draw d uniformly from that range; the fixed test set cycles
  through ``distances`` (default: the powers of two from 16 that fit, the issue's
  ``d = 16 ... 16,384`` for T large enough);
* the targets are the key, read back after the QUERY marker: at ``q + i`` the target is
  ``k(i+1)`` (i = 0 .. L-1); only those L positions are scored.

Buckets: d, in powers of two (``accuracy@64`` covers d = 64-127; on the test set exactly d).
Options: ``key_len`` (L, default 4), ``vocab`` (V, default 32), ``distances``
(comma-separated, test set), T is ``--block-size``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch
from .synthetic import SyntheticTask, pow2_bucket, pow2_grid

KEY, QUERY, FIRST_FILLER = 10, 11, 12


def parse_ints(value) -> tuple[int, ...]:
    """``"1,2,4"`` / ``[1, 2, 4]`` / ``4`` -> ``(1, 2, 4)``."""
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        return tuple(int(v) for v in value.replace(";", ",").split(",") if v.strip())
    return tuple(int(v) for v in value)


class PasskeyTask(SyntheticTask):
    """Passkey retrieval at distance d (see the module docstring)."""

    name = "passkey"

    def __init__(self, seq_len: int = 256, key_len: int = 4, vocab: int = 32, distances=None, **common):
        super().__init__(**common)
        if key_len < 1 or vocab <= FIRST_FILLER:
            raise ValueError(f"passkey needs key_len >= 1 and vocab > {FIRST_FILLER}, got {key_len}, {vocab}")
        self.seq_len, self.key_len, self.vocab_size = int(seq_len), int(key_len), int(vocab)
        self.d_min, self.d_max = self.key_len + 1, self.seq_len - self.key_len
        if self.d_max < self.d_min:
            raise ValueError(f"block_size {seq_len} is too short for a {key_len}-digit key")
        grid = pow2_grid(16, self.d_max) if distances is None else parse_ints(distances)
        bad = [d for d in grid if not self.d_min <= d <= self.d_max]
        if bad or not grid:
            raise ValueError(f"passkey distances must lie in [{self.d_min}, {self.d_max}] for T {seq_len}, got {grid}")
        self.distances = tuple(grid)
        self.bucket_values = pow2_grid(1, self.d_max)

    @classmethod
    def from_config(cls, cfg) -> "PasskeyTask":
        o = cls.options(cfg, {"key_len": 4, "vocab": 32, "distances": None})
        return cls(cfg.block_size, **o)

    def _build(self, d: Tensor, generator: torch.Generator) -> Batch:
        n, T, L = len(d), self.seq_len, self.key_len
        x = torch.randint(FIRST_FILLER, self.vocab_size, (n, T), generator=generator)
        key = torch.randint(0, 10, (n, L), generator=generator)
        q = T - L
        s = q - d  # (n,)
        rows = torch.arange(n)
        x[rows, s] = KEY
        for i in range(L):
            x[rows, s + 1 + i] = key[:, i]
        x[:, q] = QUERY
        x[:, q + 1 :] = key[:, : L - 1]
        y = torch.zeros(n, T, dtype=torch.int64)
        y[:, q:] = key
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask[:, q:] = True
        return Batch(x, y, mask)

    def generate(self, n: int, generator: torch.Generator) -> Batch:
        d = torch.randint(self.d_min, self.d_max + 1, (n,), generator=generator)
        return self._build(d, generator)

    def test_set(self) -> Batch:
        """The fixed test set cycles through ``distances`` (each equally often)."""
        if self._test is None:
            generator = torch.Generator().manual_seed(self.test_seed)
            d = torch.tensor(self.distances).repeat(self.n_test // len(self.distances) + 1)[: self.n_test]
            self._test = self._build(d, generator)
        return self._test

    def buckets(self, x: Tensor) -> Tensor:
        T, L = x.shape[1], self.key_len
        q = T - L
        is_key = x[:, :q] == KEY
        # the last KEY marker before the question (filler never holds KEY)
        s = (torch.arange(q)[None, :] * is_key).max(-1).values  # (B,)
        return pow2_bucket(q - s)[:, None].expand(-1, T)

    def config(self) -> dict:
        return {**super().config(), "key_len": self.key_len, "distances": list(self.distances)}


__all__ = ["KEY", "QUERY", "FIRST_FILLER", "PasskeyTask", "parse_ints"]
