"""The logarithmic memory: tree construction (parallel form) and its streaming update.

Notation (0-based positions t, levels i >= 1, banks b):

    N[b, 0, j] = x_j
    N[b, i, j] = S_b([N[b, i-1, 2j] ; N[b, i-1, 2j+1]])     (after the expander, if any)

Position t reads, at each level i = 1 .. floor(log2(t+1)), the node
``j = floor((t+1) / 2**i) - 1``: the latest *completed* aligned block of 2**i tokens that
ends at or before t. Level i therefore has ``floor(T / 2**i)`` nodes in a sequence of T
tokens, and all of them are read by somebody.

Streaming: after ``c`` tokens the state holds, per level, the latest completed node
(level 0: the latest token). Token ``c`` (1-based count) completes a node at every level
``i <= tz(c)`` (``tz`` = number of trailing zero bits), each made from the *previous* latest
node of level i-1 and the one completed at this very step: a binary counter. That is one
summarizer call per step amortised (sum over c of tz(c) / c -> 1).
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import LMNConfig
from .summarizers import Expander, build_summarizer


def trailing_zeros(c: int) -> int:
    """Number of trailing zero bits of ``c`` (> 0): the levels a token completes."""
    return (c & -c).bit_length() - 1


class LogMemory(nn.Module):
    """Summarizer (+ optional expander) of one layer and the two ways of running it."""

    def __init__(self, config: LMNConfig):
        super().__init__()
        self.n_banks = config.n_banks
        self.expand = config.expand
        self.summarizer = build_summarizer(config)
        self.expander = Expander(config.d_model, config.expand) if config.expand > 0 else None

    def slot_offset(self, level: int) -> int:
        """Index of the first attention slot of ``level`` in the streaming slot cache
        (levels 1 .. level-1 come first; level i has ``n_banks * (1 + i*k)`` slots)."""
        return self.n_banks * sum(1 + i * self.expand for i in range(1, level))

    def merge(self, left: Tensor, right: Tensor) -> Tensor:
        """Merge two children node sets ``(..., n_banks, E, d)`` into their parent
        ``(..., n_banks, E + k, d)``."""
        if self.expander is not None:
            left, right = self.expander(left), self.expander(right)
        return self.summarizer(left, right)

    def build(self, x: Tensor) -> list[Tensor]:
        """All tree levels of a sequence at once.

        Args:
            x: ``(B, T, d)`` normalised layer input.
        Returns:
            ``[N_1, ..., N_L]`` with ``L = floor(log2 T)`` and
            ``N_i: (B, n_banks, T >> i, 1 + i*k, d)``; node j of level i summarises
            tokens ``j*2**i .. (j+1)*2**i - 1``.
        """
        B, T, d = x.shape
        prev = x[:, None, :, None, :].expand(B, self.n_banks, T, 1, d)  # level 0
        levels = []
        for i in range(1, T.bit_length()):
            n = T >> i
            pairs = prev[:, :, : 2 * n].unflatten(2, (n, 2))  # (B, nb, n, 2, E, d)
            left, right = pairs[:, :, :, 0], pairs[:, :, :, 1]
            if self.expander is not None:
                left, right = self.expander(left), self.expander(right)
            e = left.shape[-2]
            # the summarizer works on (..., n_banks, m, d): fold (n, E) into m
            node = self.summarizer(left.flatten(2, 3), right.flatten(2, 3)).unflatten(2, (n, e))
            levels.append(node)
            prev = node
        return levels

    def update(self, nodes: list[Tensor], x: Tensor, count: int) -> list[tuple[int, Tensor]]:
        """Streaming update after the ``count``-th token (1-based) of a stream.

        Args:
            nodes: per level ``i = 0 .. L`` the latest completed node ``(B, n_banks, E_i, d)``
                (level 0: the previous token); modified in place.
            x: ``(B, d)`` normalised input of the new token.
            count: number of tokens seen including this one.
        Returns:
            ``(level, node)`` for every level >= 1 that received a new node.
        """
        B, d = x.shape
        new = x[:, None, None, :].expand(B, self.n_banks, 1, d).contiguous()
        if count == 1:
            nodes.append(new)
            return []
        changed = []
        for i in range(1, trailing_zeros(count) + 1):
            merged = self.merge(nodes[i - 1], new)
            nodes[i - 1] = new
            new = merged
            changed.append((i, merged))
        level = len(changed)
        if level < len(nodes):
            nodes[level] = new
        else:
            nodes.append(new)
        return changed
