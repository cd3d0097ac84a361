"""Fused single-vector attention over the tree's slots, forward and backward (Triton).

The same function as :meth:`lmn.attention.SingleVectorAttention.forward` without a
prefix, for every stride, read rule, bank count and expander: per position ``t``
(``u = t + 1``) and head, an online softmax over its slots, one slot at a time, so no
``(T, slots)`` tensor exists in forward or backward. Memory: the inputs, the output and
one float per position and head (the log-sum-exp kept for backward).

Layout. All nodes a layer can read are rows of one table ``(B, R, d)``: rows ``0 .. T-1``
are the tokens (level 0), then every level ``i >= 1`` as ``(bank, set index, node)``
(:func:`node_table`). ``W_q`` and ``W_v`` project the table in one matmul. A slot ``s``
(slot 0: the token itself) is described by eight integers (:func:`slot_meta`)::

    base, L, mul, add, div, mod, thr, n
    row(u)     = base + (u // L) * mul + add        (the node block u // L reads)
    present(u) = (u // div) % mod > thr  and  0 <= row(u) - base < n

which is :meth:`lmn.tree.Tree.block_node` and :meth:`lmn.tree.Tree.absent` written as
arithmetic ("latest": ``L = k**i``, node ``u // k**i - 1``, present for ``u >= k**i``;
"digits": ``L = k**(i+1)``, node ``(u // L) * k + r``, present when the i-th base-k digit
of ``u`` exceeds ``r``).

Backward recomputes each slot's probability from the saved log-sum-exp (as
FlashAttention does); the key's gradient is summed in registers; the token's own slot
writes its node gradients with plain stores; every other slot adds its node gradients
atomically: where a block is at least as long as the tile, the tile's rows are first
summed per node (at most two nodes); shorter blocks add one vector per row (or, with
``SEGMENTED_SCAN``, one per node after a segmented scan over the tile).

Numbers are float32 inside the kernels whatever the input dtype (float32, bfloat16,
float16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

_BIG = 2**30  # "never": a block longer than any sequence, a modulus larger than any position
_KBIG = tl.constexpr(_BIG)


@triton.jit
def _sva_fwd(K, Q, V, O, LSE, META, T, S, n_heads,
             skb, skt, sqb, sqr, svb, svr, sob, sot,
             DH: tl.constexpr, DHP: tl.constexpr, BLOCK: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    t = pid_t * BLOCK + tl.arange(0, BLOCK)
    tmask = t < T
    u = t + 1
    d = tl.arange(0, DHP)
    dmask = d < DH
    col = h * DH + d
    kmask = tmask[:, None] & dmask[None, :]
    key = tl.load(K + b * skb + t.to(tl.int64)[:, None] * skt + col[None, :], mask=kmask, other=0.0).to(tl.float32)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, DHP], tl.float32)
    qbase = Q + b * sqb + col[None, :]
    vbase = V + b * svb + col[None, :]
    for s in range(S):
        base = tl.load(META + s * 8 + 0)
        L = tl.load(META + s * 8 + 1)
        mul = tl.load(META + s * 8 + 2)
        add = tl.load(META + s * 8 + 3)
        div = tl.load(META + s * 8 + 4)
        mod = tl.load(META + s * 8 + 5)
        thr = tl.load(META + s * 8 + 6)
        n = tl.load(META + s * 8 + 7)
        idx = (u // L) * mul + add
        present = ((u // div) % mod > thr) & (idx >= 0) & (idx < n) & tmask
        row = (base + idx).to(tl.int64)
        lm = present[:, None] & dmask[None, :]
        qn = tl.load(qbase + row[:, None] * sqr, mask=lm, other=0.0).to(tl.float32)
        score = tl.where(present, tl.sum(qn * key, axis=1), float("-inf"))
        m_new = tl.maximum(m, score)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(score - m_safe)
        vn = tl.load(vbase + row[:, None] * svr, mask=lm, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + p[:, None] * vn
        l = l * alpha + p
        m = m_new
    l_safe = tl.where(l == 0.0, 1.0, l)
    out = acc / l_safe[:, None]
    tl.store(O + b * sob + t.to(tl.int64)[:, None] * sot + col[None, :], out.to(O.dtype.element_ty), mask=kmask)
    lse = tl.where(l == 0.0, 0.0, m + tl.log(l_safe))
    tl.store(LSE + pid_bh.to(tl.int64) * T + t, lse, mask=tmask)


@triton.jit
def _seg_add(f1, a1, b1, f2, a2, b2):
    """Segmented sum (``f``: a segment starts at the right operand): associative."""
    return f1 | f2, tl.where(f2 != 0, a2, a1 + a2), tl.where(f2 != 0, b2, b1 + b2)


@triton.jit
def _sva_bwd(K, Q, V, O, DO, LSE, DK, DQ, DV, DQS, DVS, META, T, S, n_heads,
             skb, skt, sqb, sqr, svb, svr, sob, sot, sdob, sdot, sdkb, sdkt, sgb, sgr,
             DH: tl.constexpr, DHP: tl.constexpr, BLOCK: tl.constexpr, SCAN: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    t = pid_t * BLOCK + tl.arange(0, BLOCK)
    tmask = t < T
    u = t + 1
    d = tl.arange(0, DHP)
    dmask = d < DH
    col = h * DH + d
    kmask = tmask[:, None] & dmask[None, :]
    t64 = t.to(tl.int64)[:, None]
    key = tl.load(K + b * skb + t64 * skt + col[None, :], mask=kmask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdob + t64 * sdot + col[None, :], mask=kmask, other=0.0).to(tl.float32)
    o = tl.load(O + b * sob + t64 * sot + col[None, :], mask=kmask, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=1)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * T + t, mask=tmask, other=0.0)
    dk = tl.zeros([BLOCK, DHP], tl.float32)
    qbase = Q + b * sqb + col[None, :]
    vbase = V + b * svb + col[None, :]
    gq_base = DQ + b * sgb + col
    gv_base = DV + b * sgb + col
    # slot 0, the token itself (row t): its node gradients go to a dense buffer (DQS/DVS,
    # (B, T, D), added to the token rows by the caller) with plain stores, no atomics
    qn = tl.load(qbase + t64 * sqr, mask=kmask, other=0.0).to(tl.float32)
    vn = tl.load(vbase + t64 * svr, mask=kmask, other=0.0).to(tl.float32)
    p = tl.where(tmask, tl.exp(tl.sum(qn * key, axis=1) - lse), 0.0)
    ds = p * (tl.sum(do * vn, axis=1) - delta)
    dk += ds[:, None] * qn
    tl.store(DQS + b * sdkb + t64 * sdkt + col[None, :], ds[:, None] * key, mask=kmask)
    tl.store(DVS + b * sdkb + t64 * sdkt + col[None, :], p[:, None] * do, mask=kmask)
    i = tl.arange(0, BLOCK)
    for s in range(1, S):
        base = tl.load(META + s * 8 + 0)
        L = tl.load(META + s * 8 + 1)
        mul = tl.load(META + s * 8 + 2)
        add = tl.load(META + s * 8 + 3)
        div = tl.load(META + s * 8 + 4)
        mod = tl.load(META + s * 8 + 5)
        thr = tl.load(META + s * 8 + 6)
        n = tl.load(META + s * 8 + 7)
        idx = (u // L) * mul + add
        present = ((u // div) % mod > thr) & (idx >= 0) & (idx < n) & tmask
        row = (base + idx).to(tl.int64)
        lm = present[:, None] & dmask[None, :]
        qn = tl.load(qbase + row[:, None] * sqr, mask=lm, other=0.0).to(tl.float32)
        vn = tl.load(vbase + row[:, None] * svr, mask=lm, other=0.0).to(tl.float32)
        score = tl.sum(qn * key, axis=1)
        p = tl.where(present, tl.exp(score - lse), 0.0)
        dp = tl.sum(do * vn, axis=1)
        ds = p * (dp - delta)
        dk += ds[:, None] * qn
        gq = ds[:, None] * key
        gv = p[:, None] * do
        if L >= BLOCK:  # the tile reads at most two nodes of this slot: reduce, then add
            first = tl.min(tl.where(present, idx, _KBIG), axis=0)
            ma = present & (idx == first)
            mb = present & (idx != first)
            second = tl.max(tl.where(mb, idx, -1), axis=0)
            ra = (base + first).to(tl.int64) * sgr
            rb = (base + second).to(tl.int64) * sgr
            fa = dmask & ((d * 0 + first) < _KBIG)
            fb = dmask & ((d * 0 + second) >= 0)
            tl.atomic_add(gq_base + ra, tl.sum(tl.where(ma[:, None], gq, 0.0), axis=0), mask=fa)
            tl.atomic_add(gv_base + ra, tl.sum(tl.where(ma[:, None], gv, 0.0), axis=0), mask=fa)
            tl.atomic_add(gq_base + rb, tl.sum(tl.where(mb[:, None], gq, 0.0), axis=0), mask=fb)
            tl.atomic_add(gv_base + rb, tl.sum(tl.where(mb[:, None], gv, 0.0), axis=0), mask=fb)
        elif SCAN:  # blocks of L < BLOCK rows: sum each block's rows in the tile (a segmented scan), one add per node
            start = (u % L == 0) | (i == 0)
            end = ((u + 1) % L == 0) | (i == BLOCK - 1)
            flags = tl.broadcast_to(start[:, None], (BLOCK, DHP)).to(tl.int32)
            _, sq, sv = tl.associative_scan((flags, gq, gv), 0, _seg_add)
            em = (end & (idx >= 0) & (idx < n))[:, None] & dmask[None, :]  # (absent rows added zeros)
            tl.atomic_add(gq_base[None, :] + row[:, None] * sgr, sq, mask=em)
            tl.atomic_add(gv_base[None, :] + row[:, None] * sgr, sv, mask=em)
        else:  # blocks of L < BLOCK rows: every row adds its own vector
            tl.atomic_add(gq_base[None, :] + row[:, None] * sgr, gq, mask=lm)
            tl.atomic_add(gv_base[None, :] + row[:, None] * sgr, gv, mask=lm)
    tl.store(DK + b * sdkb + t64 * sdkt + col[None, :], dk.to(DK.dtype.element_ty), mask=kmask)


# ---------------------------------------------------------------------- host side
def slot_meta(tree, T: int, level_shapes: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """The eight integers of every slot (see the module docstring) of a length-``T``
    sequence whose levels ``1..`` have ``level_shapes[i-1] = (n_i, E_i)`` (nodes, set
    size), rows laid out by :func:`node_table`."""
    k, nb = tree.stride, tree.n_banks
    offsets, off = [], T
    for n, e in level_shapes:
        offsets.append(off)
        off += nb * e * n
    meta = [(0, 1, 1, -1, 1, _BIG, -1, T)]  # the token itself: row t, always present
    for level, r in tree.read_groups(len(level_shapes)):
        L = tree.block_length(level)
        if level == 0:  # a rule that reads earlier tokens: rows 0 .. T-1 of the table
            meta.append(tree.rule.triton_slots(level, r, k, 0, T, L))
            continue
        n, e = level_shapes[level - 1]
        for g in range(nb * e):
            base = offsets[level - 1] + g * n
            meta.append(tree.rule.triton_slots(level, r, k, base, n, L))
    return meta


def node_table(x: Tensor, levels: list[Tensor]) -> Tensor:
    """``(B, R, d)``: the tokens, then each level ``(B, nb, n, E, d)`` as rows
    ``(bank, set index, node)``."""
    B, _, d = x.shape
    parts = [x] + [lvl.transpose(2, 3).reshape(B, -1, d) for lvl in levels]
    return torch.cat(parts, dim=1) if len(parts) > 1 else x


_meta_cache: dict = {}


def _meta_tensor(tree, T: int, level_shapes, device) -> Tensor:
    key = (tree, T, tuple(level_shapes), device)
    out = _meta_cache.get(key)
    if out is None:
        if len(_meta_cache) > 256:
            _meta_cache.clear()
        out = torch.tensor(slot_meta(tree, T, level_shapes), dtype=torch.int32, device=device)
        _meta_cache[key] = out
    return out


TILES: tuple[int, int] | None = None  # (forward, backward) positions per program; None: by head width
# Backward, blocks shorter than the tile: sum the rows of each node in the tile by a segmented
# scan before one atomic add (True), or one atomic add per row (False). On an H200 (large
# size, 2 x 8K, bf16) the scan made the backward kernel slower (18.9 vs 14.3 ms for 8
# layers; docs/results/efficiency.md), so it is off by default.
SEGMENTED_SCAN = False


def _config(dh: int) -> tuple[int, int, int, int]:
    """``(DHP, forward tile, backward tile, warps)``."""
    dhp = max(triton.next_power_of_2(dh), 2)
    if TILES is not None:  # (tests: small tiles put tile and block boundaries inside short sequences)
        return dhp, TILES[0], TILES[1], 4
    if dhp <= 16:
        return dhp, 128, 64, 4
    if dhp <= 64:
        return dhp, 64, 32, 4
    return dhp, 32, 16, 8


class FusedSlotAttention(torch.autograd.Function):
    """``out (B, T, H*dh)`` from the scaled key ``(B, T, H*dh)``, the q and v node tables
    ``(B, R, H*dh)`` (last dim contiguous) and the slots' ``meta (S, 8)``."""

    @staticmethod
    def forward(ctx, key, q_tab, v_tab, meta, n_heads: int):
        B, T, D = key.shape
        dh = D // n_heads
        dhp, block, _, warps = _config(dh)
        out = torch.empty(B, T, D, device=key.device, dtype=q_tab.dtype)
        lse = torch.empty(B, n_heads, T, device=key.device, dtype=torch.float32)
        grid = (triton.cdiv(T, block), B * n_heads)
        _sva_fwd[grid](key, q_tab, v_tab, out, lse, meta, T, meta.shape[0], n_heads,
                       key.stride(0), key.stride(1), q_tab.stride(0), q_tab.stride(1),
                       v_tab.stride(0), v_tab.stride(1), out.stride(0), out.stride(1),
                       DH=dh, DHP=dhp, BLOCK=block, num_warps=warps)
        ctx.save_for_backward(key, q_tab, v_tab, out, lse, meta)
        ctx.n_heads = n_heads
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        key, q_tab, v_tab, out, lse, meta = ctx.saved_tensors
        n_heads = ctx.n_heads
        B, T, D = key.shape
        dh = D // n_heads
        dhp, _, block, warps = _config(dh)
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        dk = torch.empty(B, T, D, device=key.device, dtype=torch.float32)
        dq = torch.zeros(B, q_tab.shape[1], D, device=key.device, dtype=torch.float32)
        dv = torch.zeros_like(dq)
        dqs, dvs = torch.empty_like(dk), torch.empty_like(dk)  # slot 0's node gradients
        grid = (triton.cdiv(T, block), B * n_heads)
        _sva_bwd[grid](key, q_tab, v_tab, out, grad_out, lse, dk, dq, dv, dqs, dvs, meta, T, meta.shape[0], n_heads,
                       key.stride(0), key.stride(1), q_tab.stride(0), q_tab.stride(1),
                       v_tab.stride(0), v_tab.stride(1), out.stride(0), out.stride(1),
                       grad_out.stride(0), grad_out.stride(1), dk.stride(0), dk.stride(1),
                       dq.stride(0), dq.stride(1),
                       DH=dh, DHP=dhp, BLOCK=block, SCAN=SEGMENTED_SCAN, num_warps=warps)
        dq[:, :T] += dqs
        dv[:, :T] += dvs
        return dk.to(key.dtype), dq.to(q_tab.dtype), dv.to(v_tab.dtype), None, None


def fused_attention(attn, x: Tensor, levels: list[Tensor], tree) -> Tensor:
    """:meth:`lmn.attention.SingleVectorAttention.forward` (no prefix) through the kernels."""
    B, T, D = x.shape
    table = node_table(x, levels)
    w, b = attn._fused("qv")
    qv = F.linear(table, w, b)  # (B, R, 2D): W_q and W_v of every node in one matmul
    q_tab, v_tab = qv[..., :D], qv[..., D:]
    key = attn.k(x) * attn.scale  # fold 1/sqrt(d_head) into the key, as the PyTorch path does
    shapes = [(lvl.shape[2], lvl.shape[3]) for lvl in levels]
    meta = _meta_tensor(tree, T, shapes, x.device)
    out = FusedSlotAttention.apply(key, q_tab, v_tab, meta, attn.n_heads)
    return attn.o(out)
