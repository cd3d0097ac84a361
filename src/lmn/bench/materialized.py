"""LMN's parallel form the obvious way: gather every position's slots into one tensor.

Position t attends over ``S(t) = 1 + sum_i n_banks * (1 + i*k)`` slots: itself and, at each
level ``i = 1 .. floor(log2(t+1))``, node ``j = (t+1) // 2**i - 1`` of every bank (see
:mod:`lmn.memory`). Here those slots are gathered into

    slots: (B, T, S, d)        S = 1 + sum_{i=1..L} n_banks * (1 + i*k),  L = floor(log2 T)

(levels a position cannot read yet are masked), projected by W_q and W_v *per position*,
and attended. That is O(T * log T * d) memory and O(T * log T * d^2) work per layer, held
for the backward pass -- exactly what :class:`lmn.attention.SingleVectorAttention` avoids
by projecting each node once and broadcasting it over the block of positions that reads
it. The benchmark trains both to show the difference; the test checks they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmn.model import LMN, sinusoidal_encoding


def gather_slots(x: Tensor, levels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Every position's slots, materialised.

    Args:
        x: ``(B, T, d)`` normalised layer input (slot 0 of position t is ``x[:, t]``).
        levels: ``[N_1, ..., N_L]``, ``N_i: (B, n_banks, T >> i, E_i, d)`` from
            :meth:`lmn.memory.LogMemory.build`.
    Returns:
        ``slots (B, T, S, d)`` and ``present (T, S)`` (False where position t cannot read
        level i yet, i.e. ``t + 1 < 2**i``).
    """
    B, T, d = x.shape
    t1 = torch.arange(1, T + 1, device=x.device)  # t + 1
    slots, present = [x[:, :, None]], [torch.ones(T, 1, dtype=torch.bool, device=x.device)]
    for i, nodes in enumerate(levels, start=1):
        _, nb, _, e, _ = nodes.shape
        j = (t1 >> i) - 1  # node read by position t at level i (-1: none yet)
        g = nodes[:, :, j.clamp(min=0)]  # (B, nb, T, E, d)
        slots.append(g.permute(0, 2, 1, 3, 4).reshape(B, T, nb * e, d))  # bank-major, as the reference
        present.append((j >= 0)[:, None].expand(T, nb * e))
    return torch.cat(slots, dim=2), torch.cat(present, dim=1)


def materialized_forward(model: LMN, idx: Tensor) -> Tensor:
    """Logits ``(B, T, vocab)`` of ``model`` on ``idx (B, T)``, slots materialised."""
    cfg = model.config
    B, T = idx.shape
    H, dh = cfg.n_heads, cfg.d_head
    h = F.embedding(idx, model.tok_emb.weight)  # (B, T, d)
    if cfg.pos_encoding == "sinusoidal":
        h = h + sinusoidal_encoding(torch.arange(T, device=idx.device), cfg.d_model, h.dtype)

    for block in model.blocks:
        x = block.norm1(h)
        slots, present = gather_slots(x, block.memory.build(x))  # (B, T, S, d), (T, S)
        S = slots.shape[2]
        attn = block.attn
        q = attn.q(slots).view(B, T, S, H, dh)  # every slot projected at every position
        v = attn.v(slots).view(B, T, S, H, dh)
        k = attn.k(x).view(B, T, H, dh) * attn.scale
        scores = torch.einsum("btshe,bthe->bths", q, k)  # (B, T, H, S)
        scores = scores.masked_fill(~present[:, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("bths,btshe->bthe", probs, v).reshape(B, T, H * dh)
        h = h + attn.o(out)
        h = h + block.ff(block.norm2(h))
    return model.head(model.ln_f(h))


def slots_count(config, T: int) -> int:
    """S of :func:`gather_slots` for a length-T sequence."""
    return 1 + sum(config.slots_per_level(i) for i in range(1, T.bit_length()))
