"""Single-vector attention (SVA): position t attends over its own memory slots only.

For every present slot s of position t (slot 0 is x_t itself), per head:

    score_s = <W_q s, W_k x_t> / sqrt(d_head),   out = W_o sum_s softmax(score)_s W_v s

Note the roles: the *slots* are projected by W_q and the current token by W_k, as in the
paper's code. A slot is absent only because of its position (level i needs t+1 >= 2**i),
never because of its value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LMNConfig


class SingleVectorAttention(nn.Module):
    def __init__(self, config: LMNConfig):
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.d_head = config.d_head
        self.scale = 1.0 / math.sqrt(self.d_head)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    # ------------------------------------------------------------------ helpers
    def _project(self, nodes: Tensor) -> Tensor:
        # (B, n_banks, n, E, d) -> (B, n_banks, n, E, 2, H, dh): W_q and W_v in one matmul
        w = torch.cat([self.q.weight, self.v.weight], dim=0)
        b = torch.cat([self.q.bias, self.v.bias], dim=0)
        B, nb, n, e, _ = nodes.shape
        return F.linear(nodes, w, b).view(B, nb, n, e, 2, self.n_heads, self.d_head)

    def project_nodes(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Project nodes once: ``(B, n_banks, n, E, d)`` -> q, v ``(B, H, n, n_banks*E, d_head)``
        (slot order within a level: bank-major, then the node's set index)."""
        B, nb, n, e, _ = nodes.shape
        qv = self._project(nodes).permute(4, 0, 5, 2, 1, 3, 6)
        qv = qv.reshape(2, B, self.n_heads, n, nb * e, self.d_head)
        return qv[0], qv[1]

    # ------------------------------------------------------------------ parallel form
    def forward(self, x: Tensor, levels: list[Tensor], return_cache: bool = False):
        """Parallel form.

        Args:
            x: ``(B, T, d)`` normalised input (slot 0 and the query side).
            levels: ``[N_1, ..., N_L]`` from :meth:`lmn.memory.LogMemory.build`.
        Returns:
            ``(out, cache)``: ``out (B, T, d)``; ``cache`` is ``None`` or, when
            ``return_cache``, the projected q/v of the *last* node of every level
            (``(B, H, slots, d_head)`` each) for the streaming state.

        Position t reads node ``j = (t+1) // 2**i - 1`` at level i. Shifting positions by
        one (t' = t + 1, a dummy at t' = 0), the 2**i positions reading node j form the
        aligned block ``j + 1`` of the shifted axis; so each node is projected once and
        broadcast over its block, and no ``(B, T, slots, d)`` tensor is ever formed:
        memory is O(T * (d + H * slots)). Tensors are kept "time-last" (``(B, H, dh, T)``)
        so that every broadcast multiply and reduction runs over a contiguous time axis;
        on CPU this beats batched matmuls of 2x8 @ 8x2 blocks by ~2x.
        """
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        L = len(levels)
        Tp = -(-(T + 1) // (1 << L)) * (1 << L)  # shifted length, padded to whole top-level blocks
        pad = (1, Tp - T - 1)

        q = self.q(x).view(B, T, H, dh)
        k = self.k(x).view(B, T, H, dh)
        v = self.v(x).view(B, T, H, dh)
        k_t = F.pad(k.permute(0, 2, 3, 1), pad)  # (B, H, dh, Tp): column t' holds k_{t'-1}

        scores = [F.pad((q * k).sum(-1).transpose(1, 2), pad)]  # slot 0, (B, H, Tp)
        thresholds = [0]
        values = []  # per level: (B, H, G, dh, m, 1)
        cache_q, cache_v = [], []
        for i, nodes in enumerate(levels, start=1):
            n, m, r = nodes.shape[2], Tp >> i, 1 << i
            B_, nb, _, e, _ = nodes.shape
            qv = self._project(nodes).permute(4, 0, 5, 1, 3, 6, 2)  # (2, B, H, nb, E, dh, n)
            qv = qv.reshape(2, B, H, nb * e, dh, n)
            if return_cache:
                cache_q.append(qv[0, ..., -1])
                cache_v.append(qv[1, ..., -1])
            # block m' of the shifted axis reads node m' - 1: one empty node in front
            qv = F.pad(qv, (1, m - 1 - n)).unsqueeze(-1)  # (2, B, H, G, dh, m, 1)
            k_blocks = k_t.view(B, H, dh, m, r)
            for g in range(nb * e):
                scores.append((k_blocks * qv[0, :, :, g]).sum(2).view(B, H, Tp))
            values.append(qv[1])
            thresholds += [r] * (nb * e)

        scores = torch.stack(scores, dim=2) * self.scale  # (B, H, S, Tp)
        # presence by position only: a level-i slot exists for t' = t + 1 >= 2**i
        need = torch.tensor(thresholds, device=x.device)
        present = torch.arange(Tp, device=x.device)[None, :] >= need[:, None]  # (S, Tp)
        probs = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=2)
        p_self, *p_mem = probs.unbind(2)  # unbind, not slicing: backward stacks, no zero-fill

        acc = x.new_zeros(B, H, dh, Tp)
        s = 0
        for i, vn in enumerate(values, start=1):
            m, r = Tp >> i, 1 << i
            acc = acc.view(B, H, dh, m, r)
            for g in range(vn.shape[2]):
                acc = torch.addcmul(acc, p_mem[s].view(B, H, 1, m, r), vn[:, :, g])
                s += 1
        acc = acc.view(B, H, dh, Tp)[..., 1 : T + 1] + p_self[:, :, None, 1 : T + 1] * v.permute(0, 2, 3, 1)
        out = self.o(acc.permute(0, 3, 1, 2).reshape(B, T, H * dh))
        cache = None
        if return_cache:
            empty = x.new_zeros(B, H, 0, dh)
            cache = (
                torch.cat(cache_q, dim=2) if cache_q else empty,
                torch.cat(cache_v, dim=2) if cache_v else empty,
            )
        return out, cache

    # ------------------------------------------------------------------ streaming form
    def step(self, x: Tensor, slot_q: Tensor, slot_v: Tensor) -> Tensor:
        """One position. ``x: (B, d)``; ``slot_q``/``slot_v``: cached projections of the
        memory nodes ``(B, H, S, d_head)``. Returns ``(B, d)``. Cost O(d^2 + S*d)."""
        B = x.shape[0]
        H, dh = self.n_heads, self.d_head
        q = self.q(x).view(B, H, 1, dh)
        k = self.k(x).view(B, H, dh, 1)
        v = self.v(x).view(B, H, 1, dh)
        s_self = torch.matmul(q, k).squeeze(-1)  # (B, H, 1)
        s_mem = torch.matmul(slot_q, k).squeeze(-1)  # (B, H, S)
        probs = torch.softmax(torch.cat([s_self, s_mem], dim=-1) * self.scale, dim=-1)
        out = probs[..., :1, None] * v + torch.matmul(probs[..., None, 1:], slot_v)
        return self.o(out.reshape(B, H * dh))
