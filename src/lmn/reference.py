"""The specification of an LMN forward pass, written as plainly as possible.

This is the oracle every fast path (parallel, streaming, prefill) is tested against. It
uses the model's parameters but none of its fast code paths: an explicit loop over
positions, nodes built by the recursive definition (memoised in a dict), every slot
listed explicitly and projected again at every position, float32 throughout. It is
O(T * slots * d^2) and only meant for tests and for reading.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import LMN, sinusoidal_encoding


def _rms_norm(x: Tensor, weight: Tensor, eps: float | None) -> Tensor:
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_forward(model: LMN, idx: Tensor) -> Tensor:
    """Logits ``(B, T, vocab)`` of ``model`` on ``idx (B, T)`` by the plain definition."""
    cfg = model.config
    B, T = idx.shape
    H, dh, nb = cfg.n_heads, cfg.d_head, cfg.n_banks

    h = model.tok_emb.weight[idx]  # (B, T, d)
    if cfg.pos_encoding == "sinusoidal":
        h = h + sinusoidal_encoding(torch.arange(T, device=idx.device), cfg.d_model, h.dtype)

    for block in model.blocks:
        x = _rms_norm(h, block.norm1.weight, cfg.norm_eps)
        summarizer, expander = block.memory.summarizer, block.memory.expander
        memo: dict[tuple[int, int], Tensor] = {}

        def node(i: int, j: int) -> Tensor:
            """N[:, i, j] for all banks: (B, n_banks, 1 + i*k, d)."""
            if i == 0:
                return x[:, j, None, None, :].expand(B, nb, 1, cfg.d_model)
            if (i, j) not in memo:
                left, right = node(i - 1, 2 * j), node(i - 1, 2 * j + 1)
                if expander is not None:
                    left, right = expander.reference(left), expander.reference(right)
                memo[(i, j)] = summarizer.reference(left, right)
            return memo[(i, j)]

        attn = block.attn
        outs = []
        for t in range(T):
            slots = [x[:, t, None]]  # slot 0: the token itself
            for i in range(1, (t + 1).bit_length()):  # i = 1 .. floor(log2(t+1))
                j = (t + 1) // 2**i - 1  # latest completed block of 2**i tokens
                slots.append(node(i, j).flatten(1, 2))  # every bank, every vector of the set
            S = torch.cat(slots, dim=1)  # (B, n_slots, d)
            q = F.linear(S, attn.q.weight, attn.q.bias)  # slots -> W_q
            v = F.linear(S, attn.v.weight, attn.v.bias)
            k = F.linear(x[:, t], attn.k.weight, attn.k.bias)  # token -> W_k
            heads = []
            for hd in range(H):
                sl = slice(hd * dh, (hd + 1) * dh)
                score = (q[:, :, sl] * k[:, None, sl]).sum(-1) / math.sqrt(dh)  # (B, n_slots)
                p = torch.softmax(score, dim=-1)
                heads.append((p[:, :, None] * v[:, :, sl]).sum(1))  # (B, dh)
            outs.append(F.linear(torch.cat(heads, dim=-1), attn.o.weight, attn.o.bias))
        h = h + torch.stack(outs, dim=1)

        y = _rms_norm(h, block.norm2.weight, cfg.norm_eps)
        ff = block.ff
        h = h + F.linear(F.silu(F.linear(y, ff.up.weight, ff.up.bias)), ff.down.weight, ff.down.bias)

    h = F.layer_norm(h, (cfg.d_model,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
    return F.linear(h, model.head.weight, model.head.bias)
