"""The logarithmic memory of one layer: building the tree (parallel form) and the base-k
counter that grows it one node at a time (streaming form and prefill).

Notation (0-based positions, levels i >= 1, banks b, stride k; see :mod:`lmn.tree`):

    N[b, 0, j] = x_j
    N[b, i, j] = S_b(N[b, i-1, kj], ..., N[b, i-1, kj + k - 1])   (after the expander, if any)

The streaming state keeps, per level, the last completed nodes (:func:`lmn.tree.kept`),
shaped ``(B, n_banks, r_i, E_i, d)``. Adding a completed node to a level whose ``k - 1``
pending siblings are there merges the ``k`` of them into a node of the level above, and
so on up: :meth:`LogMemory.carry`, the one carry routine of the package. A token carries
``carry_height(count)`` levels: one summarizer call per step amortised.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import LMNConfig
from .kernels import use_fused
from .summarizers import Expander, LinearSummarizer, build_summarizer
from .tree import Tree, carry_height, ceil_log


class LogMemory(nn.Module):
    """The tree memory of one layer: its summarizer (+ optional expander), the parallel
    build of a sequence's tree and the counter that grows a stream's, behind one call."""

    def __init__(self, config: LMNConfig):
        super().__init__()
        self.tree = config.tree  # one object for every layer (its per-position memo is shared)
        self.n_banks = config.n_banks
        self.expand = config.expand
        self.summarizer = build_summarizer(config)
        self.expander = Expander(config.d_model, config.expand) if config.expand > 0 else None
        self.fused_kernels = "auto"  # build() through the fused Triton kernel (set by LMN.fused_kernels)

    def forward(self, x: Tensor, nodes: list[Tensor] | None = None, pos: int = 0, return_state: bool = False):
        """The one call of every form, as the block's: ``x (B, T, d)`` (normalised inputs of
        tokens ``pos .. pos + T - 1``; or ``(B, d)``, one token continuing a stream), ``nodes`` the kept nodes of the stream after ``pos``
        tokens (``None``: a new stream) -> ``(read, nodes after the input or None)``.

        ``read`` is what the attention reads from the tree: for a sequence or a piece, its
        own levels ``[N_1, ..., N_L]`` (:meth:`build`); for one token continuing a stream, the
        ``(level, node)`` it completed (:meth:`carry`, the token first). The given ``nodes``
        list is updated in place and returned."""
        if x.dim() == 2 or pos > 0 and x.shape[1] == 1 and nodes is not None:  # one token: the counter carries
            B, d = x.shape[0], x.shape[-1]
            token = x.view(B, 1, 1, d).expand(B, self.n_banks, 1, d).contiguous()  # (B, nb, 1, d): a level-0 node
            return self.carry(nodes, token, 0, pos + 1), nodes
        levels = self.build(x)
        if pos == 0:
            if not (return_state or nodes is not None):
                return levels, None
            kept = [_tail(_tokens(x, self.n_banks), r) if i == 0 else _tail(levels[i - 1], r)
                    for i, r in enumerate(self.tree.kept(x.shape[1]))]
            if nodes is None:
                return levels, kept
            nodes[:] = kept
            return levels, nodes
        return levels, self._continued(nodes, x, levels, pos)

    def _continued(self, nodes: list[Tensor], x: Tensor, levels: list[Tensor], c0: int) -> list[Tensor]:
        """The kept nodes after a piece ``x (B, C, d)`` (levels ``levels``) continues a stream
        of ``c0`` tokens: levels below ``p`` (``C <= k**p``) from the piece's own tree; from
        ``p`` up the stream's, plus the piece's level-``p`` node carried in when the piece
        fills a whole block."""
        tree, C = self.tree, x.shape[1]
        count, p = c0 + C, ceil_log(C, tree.stride)
        kept = tree.kept(count)
        new = list(nodes)
        for i in range(min(p, len(kept))):
            if i == 0:
                new[0] = _tail(_tokens(x, self.n_banks), kept[0])
            elif i <= len(levels):  # (else the stream's kept nodes of level i stand)
                new[i] = _tail(levels[i - 1], kept[i])
        if C == tree.stride**p and p <= len(levels):  # (a level above max_level is not kept)
            self.carry(new, levels[p - 1][:, :, -1], p, count)
        nodes[:] = new
        return nodes

    def merge(self, children: Tensor) -> Tensor:
        """Merge the children ``(..., n_banks, k, E, d)`` of nodes into the nodes
        ``(..., n_banks, E + expand, d)``."""
        if self.expander is not None:
            children = self.expander(children)
        return self.summarizer(children.transpose(-3, -2)).contiguous()  # (..., nb, E', k, d) -> (..., nb, E', d)

    def build(self, x: Tensor) -> list[Tensor]:
        """All tree levels of a sequence at once.

        Args:
            x: ``(B, T, d)`` normalised layer input.
        Returns:
            ``[N_1, ..., N_L]`` with ``L = floor(log_k T)`` and
            ``N_i: (B, n_banks, T // k**i, 1 + i*expand, d)``; node j of level i summarises
            tokens ``j*k**i .. (j+1)*k**i - 1``.

        With the Linear summarizer and no expander, :func:`lmn.kernels.use_fused` decides
        whether the fused Triton kernel (:mod:`lmn.kernels.triton_tree`) builds all
        levels; any other configuration takes this PyTorch loop.
        """
        B, T, d = x.shape
        if self._fusable(x) and use_fused(self.fused_kernels, x, 0) and not (
                self.fused_kernels == "auto" and torch.compiler.is_compiling()):  # (compiled: the compiler's kernels)
            from .kernels.triton_tree import fused_build

            return fused_build(self, x)
        k = self.tree.stride
        prev = x[:, None, :, None, :].expand(B, self.n_banks, T, 1, d)  # level 0
        levels = []
        for _ in range(self.tree.n_levels_in(T)):
            n = prev.shape[2] // k
            children = prev[:, :, : k * n].unflatten(2, (n, k))  # (B, nb, n, k, E, d)
            if self.expander is not None:
                children = self.expander(children)
            e = children.shape[-2]
            # the summarizer works on (..., n_banks, m, k, d): fold (n, E) into m
            node = self.summarizer(children.transpose(3, 4).flatten(2, 3)).unflatten(2, (n, e))
            levels.append(node)
            prev = node
        return levels

    def _fusable(self, x: Tensor) -> bool:
        """The fused build covers this layer and input: Linear summarizer, no expander, and
        (outside autocast) the input in the summarizer's dtype, as ``matmul`` needs."""
        if self.expander is not None or not isinstance(self.summarizer, LinearSummarizer):
            return False
        if self.fused_kernels is False:
            return False
        if torch.is_autocast_enabled(x.device.type):
            return True
        return x.dtype == self.summarizer.weight.dtype == self.summarizer.bias.dtype

    def carry(self, nodes: list[Tensor], node: Tensor, level: int, count: int) -> list[tuple[int, Tensor]]:
        """Add a completed node to the counter, merging upwards as far as it carries.

        Args:
            nodes: the state's kept nodes per level, ``(B, n_banks, r_i, E_i, d)``, for the
                stream *before* the token that completed ``node``; updated in place to the
                kept nodes after it (:func:`lmn.tree.kept` of ``count``).
            node: ``(B, n_banks, E, d)``, the new node of ``level`` (a token: level 0).
            level: its level; every level below it must already be up to date.
            count: tokens seen including the one that completed ``node``.
        Returns:
            ``(level, node)`` of every node completed, the given one first.
        """
        k, latest, cap = self.tree.stride, self.tree.rule.keeps_merged, self.tree.max_level
        completed = [(level, node)]
        top = carry_height(count, k)
        for i in range(level, top if cap is None else min(top, cap)):
            siblings = nodes[i]  # k - 1 pending siblings + this one -> a node of level i+1
            node_ = node[:, :, None]
            nodes[i] = node_ if latest else node_[:, :, :0]  # (a rule may keep the latest node)
            node = self.merge(torch.cat([siblings, node_], dim=2))
            completed.append((i + 1, node))
        new = node[:, :, None]
        if cap is not None and top > cap:  # the top level's block is complete; the level above is not kept
            nodes[cap] = new if latest else new[:, :, :0]
        elif top == len(nodes):  # the first node of a new level
            nodes.append(new)
        elif latest and count // k**top % k == 1:  # the level's kept node was merged: replace it
            nodes[top] = new
        else:
            nodes[top] = torch.cat([nodes[top], new], dim=2)
        return completed


def _tokens(x: Tensor, n_banks: int) -> Tensor:
    """Tokens ``(B, T, d)`` as level-0 nodes ``(B, n_banks, T, 1, d)`` (a view)."""
    B, T, d = x.shape
    return x[:, None, :, None, :].expand(B, n_banks, T, 1, d)


def _tail(level: Tensor, r: int) -> Tensor:
    """The last ``r`` nodes of ``level (B, n_banks, n, E, d)``, as a new tensor."""
    return level[:, :, level.shape[2] - r :].contiguous()
