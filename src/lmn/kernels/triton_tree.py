"""Fused tree build for the Linear summarizer, forward and backward (Triton).

The same function as :meth:`lmn.memory.LogMemory.build` for a
:class:`lmn.summarizers.LinearSummarizer` without expander, for every stride ``k >= 2``
and bank count: level ``i`` node ``j`` of bank ``b`` is
``concat(N[i-1, kj .. kj+k-1]) @ W[b] + bias[b]``, i.e. per ``(batch, bank)`` and level a
GEMM ``(n_i, k*d) @ (k*d, d)`` whose left operand is the level below read in place (the
``k`` children of a node are ``k*d`` consecutive numbers).

Layout. All levels ``1..L`` are rows of one table ``(B, n_banks, R, d)`` (level ``i`` at
rows ``off_i .. off_i + n_i``, ``n_i = T // k**i``); the returned levels are views of it.

Forward. The levels are cut into groups of ``S = floor(log_k SEGMENT)`` levels, one launch
per group (``ceil(L / S)`` launches). In a launch, one program per ``(segment, batch,
bank)`` computes, from ``k**S`` aligned rows of the group's input level, the ``k**(S-1)``
nodes of the group's first level, then its ``k**(S-2)`` nodes of the next, ... up to one
node of the group's top level: every level is written to the table and read back after a
``tl.debug_barrier()`` (a node depends only on nodes of its own segment).

Backward. The node gradients of all levels, level 0 per bank included, are one float32
table (the incoming gradients, then filled in): the groups run top-down, one launch each,
and a program walks its segment down: ``dN[i-1, kj + r] += dN[i, j] @ W_r^T`` (``W_r``:
rows ``r*d .. (r+1)*d`` of ``W[b]``), a read-modify-write of rows no other program
touches, then a barrier. ``dx`` is the sum over banks of level 0. A last launch forms
``dW[b] = sum_i children_i^T @ dN_i`` and ``dbias[b] = sum_i sum_j dN[i, j]`` over all
levels and batches, one program per ``(tile of dW, batch, bank, split of the nodes)``,
added atomically.

Numbers. Products are accumulated in float32; the levels are stored in the input dtype
(float32, bfloat16, float16) and read back rounded, as the PyTorch path does. float32
products use ``input_precision="ieee"`` (no TF32). Under ``torch.autocast`` the products
take the autocast dtype and the levels that of ``autocast dtype + bias`` (as PyTorch's
``matmul(...) + bias`` there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import interpreting

SEGMENT = 256  # tokens (input rows of a group) per program: S = floor(log_k SEGMENT) levels per launch
TILES: tuple[int, int, int] | None = None  # (BM, BN, BK); None: by width


@triton.jit
def _mm_acc(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _tree_fwd(SRC, TAB, W, BIAS, META, base, src_off, n_lv, m_first, n_banks, k, d,
              s_sb, s_sbank, s_sr, s_tb, s_tbank,
              DOT: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    p = tl.program_id(0)
    pbb = tl.program_id(1)
    bi = (pbb // n_banks).to(tl.int64)
    bank = pbb % n_banks
    KD = k * d
    w_base = W + bank.to(tl.int64) * KD * d
    t_base = TAB + bi * s_tb + bank.to(tl.int64) * s_tbank
    s_base = SRC + bi * s_sb + bank.to(tl.int64) * s_sbank
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m = m_first + p * 0  # nodes of this level in a segment (a tensor: it changes in the loop)
    for j in range(n_lv):
        lvl = base + 1 + j
        out_off = tl.load(META + 2 * lvl)
        n_out = tl.load(META + 2 * lvl + 1)
        in_off = tl.load(META + 2 * lvl - 2)
        lo = p * m
        hi = tl.minimum(lo + m, n_out)
        for m0 in range(lo, hi, BM):
            rows = (m0 + rm).to(tl.int64)
            rmask = rows < hi
            for n0 in range(0, d, BN):
                cols = n0 + rn
                cmask = cols < d
                acc = tl.zeros((BM, BN), tl.float32)
                for c0 in range(0, KD, BK):
                    c = c0 + rk
                    kmask = c < KD
                    amask = rmask[:, None] & kmask[None, :]
                    if j == 0:  # the group's input: x (level 0) or the table
                        a = tl.load(s_base + (src_off + rows[:, None] * k + c[None, :] // d) * s_sr + c[None, :] % d,
                                    mask=amask, other=0.0)
                    else:
                        a = tl.load(t_base + (in_off + rows[:, None] * k) * d + c[None, :], mask=amask, other=0.0)
                    wm = kmask[:, None] & cmask[None, :]
                    w = tl.load(w_base + c[:, None] * d + cols[None, :], mask=wm, other=0.0)
                    acc = _mm_acc(a.to(DOT), w.to(DOT), acc, IEEE)
                bias = tl.load(BIAS + bank * d + cols, mask=cmask, other=0.0).to(tl.float32)
                acc = acc + bias[None, :]
                tl.store(t_base + (out_off + rows[:, None]) * d + cols[None, :], acc.to(TAB.dtype.element_ty),
                         mask=rmask[:, None] & cmask[None, :])
        tl.debug_barrier()  # this level's nodes, written by the whole program, are the next level's input
        m = m // k


@triton.jit
def _tree_bwd(G, W, GMETA, top, n_lv, n_banks, k, d, s_gb, s_gbank,
              DOT: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    p = tl.program_id(0)
    pbb = tl.program_id(1)
    bi = (pbb // n_banks).to(tl.int64)
    bank = pbb % n_banks
    KD = k * d
    w_base = W + bank.to(tl.int64) * KD * d
    g_base = G + bi * s_gb + bank.to(tl.int64) * s_gbank
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m = p * 0 + 1  # nodes of this level in a segment (the group's top level: one)
    for j in range(n_lv):
        lvl = top - j
        g_off = tl.load(GMETA + 2 * lvl)
        n = tl.load(GMETA + 2 * lvl + 1)
        c_off = tl.load(GMETA + 2 * lvl - 2)
        lo = p * m
        hi = tl.minimum(lo + m, n)
        for m0 in range(lo, hi, BM):
            rows = (m0 + rm).to(tl.int64)
            rmask = rows < hi
            for c0 in range(0, KD, BK):
                c = c0 + rk
                kmask = c < KD
                acc = tl.zeros((BM, BK), tl.float32)
                for n0 in range(0, d, BN):
                    cols = n0 + rn
                    cmask = cols < d
                    g = tl.load(g_base + (g_off + rows[:, None]) * d + cols[None, :],
                                mask=rmask[:, None] & cmask[None, :], other=0.0)
                    wt = tl.load(w_base + c[None, :] * d + cols[:, None], mask=cmask[:, None] & kmask[None, :],
                                 other=0.0)  # (BN, BK): W_r^T
                    acc = _mm_acc(g.to(DOT), wt.to(DOT), acc, IEEE)
                ptr = g_base + (c_off + rows[:, None] * k) * d + c[None, :]  # children kj.., features c
                cm = rmask[:, None] & kmask[None, :]
                old = tl.load(ptr, mask=cm, other=0.0)
                tl.store(ptr, old + acc, mask=cm)
        tl.debug_barrier()  # the level below is complete for this segment
        m = m * k


@triton.jit
def _tree_dw(X, TAB, G, DW, DB, GMETA, L, T, n_banks, n_split, k, d,
             s_xb, s_xr, s_tb, s_tbank, s_gb, s_gbank,
             DOT: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_t = tl.program_id(0)
    pbb = tl.program_id(1)
    s = tl.program_id(2)
    bi = (pbb // n_banks).to(tl.int64)
    bank = pbb % n_banks
    KD = k * d
    n_nt = tl.cdiv(d, BN)
    ct = pid_t // n_nt
    nt = pid_t % n_nt
    c = ct * BK + tl.arange(0, BK)
    kmask = c < KD
    cols = nt * BN + tl.arange(0, BN)
    cmask = cols < d
    rm = tl.arange(0, BM)
    x_base = X + bi * s_xb
    t_base = TAB + bi * s_tb + bank.to(tl.int64) * s_tbank
    g_base = G + bi * s_gb + bank.to(tl.int64) * s_gbank
    acc = tl.zeros((BK, BN), tl.float32)
    bacc = tl.zeros((BN,), tl.float32)
    for lvl in range(1, L + 1):
        g_off = tl.load(GMETA + 2 * lvl)
        n = tl.load(GMETA + 2 * lvl + 1)
        c_off = tl.load(GMETA + 2 * lvl - 2) - T  # the children's rows in the node table (level >= 1)
        per = tl.cdiv(n, n_split)
        lo = s * per
        hi = tl.minimum(lo + per, n)
        for m0 in range(lo, hi, BM):
            rows = (m0 + rm).to(tl.int64)
            rmask = rows < hi
            amask = kmask[:, None] & rmask[None, :]
            if lvl == 1:  # children: tokens
                a = tl.load(x_base + (rows[None, :] * k + c[:, None] // d) * s_xr + c[:, None] % d, mask=amask,
                            other=0.0)
            else:
                a = tl.load(t_base + (c_off + rows[None, :] * k) * d + c[:, None], mask=amask, other=0.0)
            g = tl.load(g_base + (g_off + rows[:, None]) * d + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                        other=0.0)
            acc = _mm_acc(a.to(DOT), g.to(DOT), acc, IEEE)
            bacc += tl.sum(g, axis=0)
    tl.atomic_add(DW + bank.to(tl.int64) * KD * d + c[:, None] * d + cols[None, :], acc,
                  mask=kmask[:, None] & cmask[None, :])
    if ct == 0:
        tl.atomic_add(DB + bank * d + cols, bacc, mask=cmask)


# ---------------------------------------------------------------------- host side
_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def levels_per_launch(k: int) -> int:
    """``S``: levels one launch builds (a segment of ``k**S <= SEGMENT`` tokens)."""
    s = 1
    while k ** (s + 1) <= SEGMENT:
        s += 1
    return s


def _plan(T: int, k: int, L: int) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Node counts ``n_0 = T, n_1, ..`` and row offsets of the gradient table (level 0 at
    row 0; the node table's are those minus ``T``), and the launches ``(base, levels)``."""
    n, off = [T], [0]
    for _ in range(L):
        off.append(off[-1] + n[-1])
        n.append(n[-1] // k)
    S = levels_per_launch(k)
    groups = [(base, min(S, L - base)) for base in range(0, L, S)]
    return n, off, groups


_meta_cache: dict = {}


def _meta(T: int, k: int, L: int, device) -> Tensor:
    key = (T, k, L, device)
    out = _meta_cache.get(key)
    if out is None:
        if len(_meta_cache) > 256:
            _meta_cache.clear()
        n, off, _ = _plan(T, k, L)
        out = torch.tensor([v for pair in zip(off, n) for v in pair], dtype=torch.int64, device=device)
        _meta_cache[key] = out
    return out


def _dot(dtype) -> tuple:
    """The products' operand type and whether it is float32 (then ``ieee``). Triton's
    interpreter multiplies bfloat16 tiles wrongly (triton 3.x): there the operands are
    widened to float32, which gives the same exact products, summed in float32."""
    if dtype == torch.bfloat16 and interpreting():
        dtype = torch.float32
    return _TL[dtype], dtype == torch.float32


def _tiles(d: int, k: int) -> tuple[int, int, int, int]:
    if TILES is not None:
        return (*TILES, 4)
    bn = min(64, max(16, triton.next_power_of_2(d)))
    bk = min(32, max(16, triton.next_power_of_2(k * d)))
    return 32, bn, bk, 4


class FusedTreeBuild(torch.autograd.Function):
    """Levels ``N_1..N_L`` (each ``(B, nb, n_i, 1, d)``) of ``x (B, T, d)`` with the Linear
    summarizer ``weight (nb, k*d, d)``, ``bias (nb, 1, d)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, k: int, L: int, dot_dtype, out_dtype):
        B, T, d = x.shape
        nb = weight.shape[0]
        x_dtype = x.dtype
        x = x.to(out_dtype)
        if x.stride(-1) != 1:
            x = x.contiguous()
        weight, bias = weight.contiguous(), bias.contiguous()
        n, off, groups = _plan(T, k, L)
        R = off[L] + n[L] - T
        meta = _meta(T, k, L, x.device)
        tmeta = meta - torch.tensor([T, 0], dtype=meta.dtype, device=meta.device).repeat(L + 1)
        tab = torch.empty(B, nb, R, d, device=x.device, dtype=out_dtype)
        bm, bn, bk, warps = _tiles(d, k)
        dot, ieee = _dot(dot_dtype)
        for base, nl in groups:
            m_first = k ** (nl - 1)
            grid = (triton.cdiv(n[base + 1], m_first), B * nb)
            if base == 0:
                src, src_off, strides = x, 0, (x.stride(0), 0, x.stride(1))
            else:
                src, src_off, strides = tab, off[base] - T, (tab.stride(0), tab.stride(1), d)
            _tree_fwd[grid](src, tab, weight, bias, tmeta, base, src_off, nl, m_first, nb, k, d, *strides,
                            tab.stride(0), tab.stride(1), DOT=dot, IEEE=ieee, BM=bm, BN=bn, BK=bk, num_warps=warps)
        ctx.save_for_backward(x, weight, tab)
        ctx.plan = (k, L, dot_dtype, x_dtype, bias.dtype)
        return tuple(tab[:, :, off[i] - T : off[i] - T + n[i]].unsqueeze(3) for i in range(1, L + 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x, weight, tab = ctx.saved_tensors
        k, L, dot_dtype, x_dtype, b_dtype = ctx.plan
        B, T, d = x.shape
        nb = weight.shape[0]
        n, off, groups = _plan(T, k, L)
        meta = _meta(T, k, L, x.device)
        parts = [torch.zeros(B, nb, T, d, device=x.device, dtype=torch.float32)]
        for i, g in enumerate(grads, start=1):
            parts.append(torch.zeros(B, nb, n[i], d, device=x.device, dtype=torch.float32) if g is None
                         else g.reshape(B, nb, n[i], d).float())
        gt = torch.cat(parts, dim=2)  # (B, nb, T + R, d): node gradients of levels 0..L
        bm, bn, bk, warps = _tiles(d, k)
        dot, ieee = _dot(dot_dtype)
        for base, nl in reversed(groups):
            grid = (triton.cdiv(n[base + 1], k ** (nl - 1)), B * nb)
            _tree_bwd[grid](gt, weight, meta, base + nl, nl, nb, k, d, gt.stride(0), gt.stride(1),
                            DOT=dot, IEEE=ieee, BM=bm, BN=bn, BK=bk, num_warps=warps)
        dw = torch.zeros(weight.shape, device=x.device, dtype=torch.float32)
        db = torch.zeros(nb, d, device=x.device, dtype=torch.float32)
        tiles = triton.cdiv(k * d, bk) * triton.cdiv(d, bn)
        n_split = max(1, min(triton.cdiv(n[1], 4 * bm), triton.cdiv(512, tiles * B * nb)))
        _tree_dw[(tiles, B * nb, n_split)](x, tab, gt, dw, db, meta, L, T, nb, n_split, k, d,
                                           x.stride(0), x.stride(1), tab.stride(0), tab.stride(1),
                                           gt.stride(0), gt.stride(1),
                                           DOT=dot, IEEE=ieee, BM=bm, BN=bn, BK=bk, num_warps=warps)
        dx = gt[:, :, :T].sum(1)
        return dx.to(x_dtype), dw.to(weight.dtype), db.view(nb, 1, d).to(b_dtype), None, None, None, None


def fused_build(memory, x: Tensor) -> list[Tensor]:
    """:meth:`lmn.memory.LogMemory.build` through the kernels (Linear summarizer, no
    expander; the caller checks)."""
    B, T, d = x.shape
    k = memory.tree.stride
    L = memory.tree.n_levels_in(T)
    if L == 0:
        return []
    w, b = memory.summarizer.weight, memory.summarizer.bias
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dot = torch.get_autocast_dtype(dev)
        out = torch.promote_types(dot, b.dtype)
    else:
        dot = out = x.dtype
    return list(FusedTreeBuild.apply(x, w, b, k, L, dot, out))

