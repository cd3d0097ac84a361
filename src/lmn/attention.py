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
    def project_nodes(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Project nodes once: ``(B, n_banks, n, E, d)`` -> q, v ``(B, H, n, n_banks*E, d_head)``."""
        B, nb, n, e, _ = nodes.shape
        w = torch.cat([self.q.weight, self.v.weight], dim=0)
        b = torch.cat([self.q.bias, self.v.bias], dim=0)
        qv = F.linear(nodes, w, b).view(B, nb, n, e, 2, self.n_heads, self.d_head)
        qv = qv.permute(4, 0, 5, 2, 1, 3, 6).reshape(2, B, self.n_heads, n, nb * e, self.d_head)
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
        memory is O(T * (d + H * slots)).
        """
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        L = len(levels)
        block = 1 << L
        Tp = -(-(T + 1) // block) * block  # shifted length, padded to whole top-level blocks

        q = self.q(x).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)
        k = self.k(x).view(B, T, H, dh).transpose(1, 2)
        v = self.v(x).view(B, T, H, dh).transpose(1, 2)
        k_pad = F.pad(k, (0, 0, 1, Tp - T - 1))  # (B, H, Tp, dh), row t' holds k_{t'-1}

        scores = [F.pad((q * k).sum(-1), (1, Tp - T - 1)).unsqueeze(-1)]  # slot 0: (B, H, Tp, 1)
        values, thresholds = [], [0]
        cache_q, cache_v = [], []
        for i, nodes in enumerate(levels, start=1):
            n, m, r = nodes.shape[2], Tp >> i, 1 << i
            qn, vn = self.project_nodes(nodes)  # (B, H, n, G, dh)
            if return_cache:
                cache_q.append(qn[:, :, -1])
                cache_v.append(vn[:, :, -1])
            # block m' of the shifted axis reads node m' - 1: pad one empty node in front
            qn = F.pad(qn, (0, 0, 0, 0, 1, m - 1 - n))  # (B, H, m, G, dh)
            vn = F.pad(vn, (0, 0, 0, 0, 1, m - 1 - n))
            s = torch.matmul(k_pad.view(B, H, m, r, dh), qn.transpose(-1, -2))  # (B, H, m, r, G)
            scores.append(s.reshape(B, H, Tp, -1))
            values.append(vn)
            thresholds += [r] * qn.shape[3]

        scores = torch.cat(scores, dim=-1) * self.scale  # (B, H, Tp, S)
        # presence by position only: a level-i slot exists for t' = t + 1 >= 2**i
        need = torch.tensor(thresholds, device=x.device)
        present = torch.arange(Tp, device=x.device)[:, None] >= need[None, :]  # (Tp, S)
        probs = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=-1)

        out = probs[:, :, 1 : T + 1, 0:1] * v  # (B, H, T, dh)
        offset = 1
        for i, vn in enumerate(values, start=1):
            m, r, g = vn.shape[2], 1 << i, vn.shape[3]
            p = probs[..., offset : offset + g].reshape(B, H, m, r, g)
            o = torch.matmul(p, vn).reshape(B, H, Tp, dh)  # (B, H, Tp, dh)
            out = out + o[:, :, 1 : T + 1]
            offset += g
        out = self.o(out.transpose(1, 2).reshape(B, T, H * dh))
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
