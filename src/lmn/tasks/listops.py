"""ListOps as in the Long Range Arena (Tay et al. 2020, "Long Range Arena: A Benchmark for
Efficient Transformers", arXiv 2011.04006, Sec. 2.2.1; originally Nangia & Bowman 2018; the
generator follows ``lra_benchmarks/data/listops.py``).

Definition:

* an expression is a digit ``0-9`` or ``[OP a1 ... an ]`` with OP one of MIN, MAX, MED
  (median, ``int(numpy.median)``: the mean of the middle two truncated for even n) and SM
  (sum modulo 10) and 2 <= n <= ``max_args`` operands, each an expression;
* generation (LRA's ``generate_tree``): at depth < ``max_depth`` a node is an operator with
  probability 0.25 (uniform operator, n uniform in ``[2, max_args]``), else a uniform digit;
  at ``max_depth`` always a digit; the root is at depth 1. An expression is kept only if
  its length (tokens: digits, operators and ``]``) lies strictly between ``min_len`` and
  ``max_len``, else it is redrawn;
* tokens: digits ``0-9`` are ids 0-9, ``[MIN [MAX [MED [SM`` are 10-13, ``]`` is 14, the
  padding token is 15 (LRA's parentheses carry nothing and are left out);
* an example is the expression left-padded to T = ``--block-size``; the class (its value,
  0-9, the same ids as the digits) is read from the last position only.

LRA: max_depth 10, max_args 10, lengths 500-2,000 (T 2,000), 10 classes, 96K/2K/2K examples.
Buckets: the expression's length in powers of two (accuracy vs sequence length).
Options: ``min_len`` (default 32), ``max_len`` (default T), ``max_depth`` (default 10),
``max_args`` (default 10).
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from .base import Batch
from .synthetic import SyntheticTask, pow2_bucket, pow2_grid, seed_from

OPERATORS = ("MIN", "MAX", "MED", "SM")
OP_ID = {op: 10 + i for i, op in enumerate(OPERATORS)}
END, PAD = 14, 15
VALUE_P = 0.25
MAX_TRIES = 100_000


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int):
    """LRA's ``generate_tree``: ``(tree, length)``; a tree is a digit or ``(op, [children])``."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        return rng.randrange(10), 1
    n = rng.randint(2, max_args)
    children, length = [], 2
    for _ in range(n):
        child, child_len = generate_tree(rng, depth + 1, max_depth, max_args)
        children.append(child)
        length += child_len
    return (rng.choice(OPERATORS), children), length


def apply_op(op: str, values: list[int]) -> int:
    if op == "MIN":
        return min(values)
    if op == "MAX":
        return max(values)
    if op == "SM":
        return sum(values) % 10
    s = sorted(values)  # MED: int(numpy.median(values))
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    return apply_op(op, [evaluate(c) for c in children])


def tokens(tree) -> list[int]:
    if isinstance(tree, int):
        return [tree]
    op, children = tree
    out = [OP_ID[op]]
    for c in children:
        out += tokens(c)
    return out + [END]


class ListOpsTask(SyntheticTask):
    """ListOps (see the module docstring)."""

    name = "listops"
    bucket_name = "length"
    vocab_size = 16

    def __init__(self, seq_len: int = 512, min_len: int = 32, max_len: int | None = None, max_depth: int = 10,
                 max_args: int = 10, **common):
        super().__init__(**common)
        max_len = seq_len + 1 if max_len is None else max_len  # lengths < max_len fit T
        if not 1 <= min_len < max_len - 1 or max_len - 1 > seq_len or max_depth < 2 or max_args < 2:
            raise ValueError(f"listops needs 1 <= min_len < max_len - 1 <= block_size and max_depth, max_args >= 2; "
                             f"got min_len {min_len}, max_len {max_len}, T {seq_len}, depth {max_depth}, args {max_args}")
        self.seq_len, self.min_len, self.max_len = int(seq_len), int(min_len), int(max_len)
        self.max_depth, self.max_args = int(max_depth), int(max_args)
        self.bucket_values = pow2_grid(1, self.seq_len)

    @classmethod
    def from_config(cls, cfg) -> "ListOpsTask":
        o = cls.options(cfg, {"min_len": 32, "max_len": None, "max_depth": 10, "max_args": 10})
        return cls(cfg.block_size, **o)

    def draw(self, rng: random.Random):
        """One tree with ``min_len < length < max_len`` (LRA's filter)."""
        for _ in range(MAX_TRIES):
            tree, length = generate_tree(rng, 1, self.max_depth, self.max_args)
            if self.min_len < length < self.max_len:
                return tree
        raise ValueError(f"no ListOps expression of length in ({self.min_len}, {self.max_len}) after {MAX_TRIES} "
                         f"draws with max_depth {self.max_depth}, max_args {self.max_args}")

    def generate(self, n: int, generator: torch.Generator) -> Batch:
        T = self.seq_len
        rng = random.Random(seed_from(generator))
        x = torch.full((n, T), PAD, dtype=torch.int64)
        y = torch.zeros(n, T, dtype=torch.int64)
        for b in range(n):
            tree = self.draw(rng)
            ids = tokens(tree)
            x[b, T - len(ids) :] = torch.tensor(ids)
            y[b, T - 1] = evaluate(tree)
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask[:, T - 1] = True
        return Batch(x, y, mask)

    def buckets(self, x: Tensor) -> Tensor:
        length = (x != PAD).sum(-1)
        return pow2_bucket(length)[:, None].expand_as(x)

    def config(self) -> dict:
        return {**super().config(), "min_len": self.min_len, "max_len": self.max_len, "max_depth": self.max_depth,
                "max_args": self.max_args}


__all__ = ["END", "OPERATORS", "OP_ID", "PAD", "ListOpsTask", "apply_op", "evaluate", "generate_tree", "tokens"]
