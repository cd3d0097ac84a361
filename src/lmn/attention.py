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
from torch.utils.checkpoint import checkpoint

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
        self._fused_cache: dict = {}

    # ------------------------------------------------------------------ helpers
    def _fused(self, which: str) -> tuple[Tensor, Tensor]:
        """Concatenated weights: ``"qv"`` = [W_q; W_v] (the slot side) or ``"qkv"``.

        Under autograd they are rebuilt on every call (so gradients flow); in inference
        they are cached and rebuilt only when a parameter changes (tracked by identity and
        version counter), which saves two ``cat`` per streaming step.
        """
        mods = (self.q, self.v) if which == "qv" else (self.q, self.k, self.v)
        if torch.is_grad_enabled():
            return torch.cat([m.weight for m in mods]), torch.cat([m.bias for m in mods])
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for m in mods for p in (m.weight, m.bias))
        cached = self._fused_cache.get(which)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                w = torch.cat([m.weight for m in mods])
                b = torch.cat([m.bias for m in mods])
            cached = (key, w, b)
            self._fused_cache[which] = cached
        return cached[1], cached[2]

    def _project(self, nodes: Tensor) -> Tensor:
        # (B, n_banks, n, E, d) -> (B, n_banks, n, E, 2, H, dh): W_q and W_v in one matmul
        w, b = self._fused("qv")
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
    def forward(
        self,
        x: Tensor,
        levels: list[Tensor],
        return_cache: bool = False,
        chunk: int = 4096,
        prefix: tuple[int, list[Tensor], list[Tensor]] | None = None,
    ):
        """Parallel form.

        Args:
            x: ``(B, T, d)`` normalised input (slot 0 and the key side).
            levels: ``[N_1, ..., N_L]`` from :meth:`lmn.memory.LogMemory.build`.
            return_cache: also return the projected q/v of the *last* node of every level,
                ``(B, H, slots, d_head)`` each, for the streaming state.
            chunk: positions processed at once (a power of two); bounds the temporaries.
            prefix: continue a stream: ``(c0, q, v)`` where ``c0`` tokens came before ``x``
                (a multiple of the next power of two >= T) and ``q[i-1]``/``v[i-1]`` are
                the cached projections ``(B, H, G_i, d_head)`` of the stream's latest
                level-i node for ``i = 1 .. floor(log2 c0)``. A level-i block of ``x``
                that starts the sequence then reads that node instead of nothing. Only
                positions ``0 .. T-2`` are exact: the last one may read nodes that
                complete with it (the caller recomputes it with :meth:`step`).
        Returns:
            ``(out (B, T, d), cache or None)``.

        Work on the shifted axis u = t + 1 in [0, T] (u = 0 is a dummy). Position t reads
        node ``j = u // 2**i - 1`` at level i, so the 2**i positions reading node j form
        the aligned block ``j + 1`` of the u axis: every node is projected once and
        broadcast over its block, and no ``(B, T, slots, d)`` tensor is ever formed.
        Memory is O(T * d) for the sequence plus O(chunk * H * slots) for the scores.
        Tensors are kept time-last (``(B, H, dh, u)``) so that every broadcast multiply
        and reduction runs over a contiguous time axis.
        """
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        if chunk < 1 or chunk & (chunk - 1):
            raise ValueError(f"chunk must be a power of two, got {chunk}")
        # columns past u = T only exist so that the last partial block of a level can be
        # viewed as a whole block; their results are dropped
        Tp = -(-(T + 1) // chunk) * chunk if T + 1 > chunk else max(
            [((T >> i) + 1) << i for i in range(1, len(levels) + 1)], default=T + 1
        )
        q = self.q(x).view(B, T, H, dh)
        k = self.k(x).view(B, T, H, dh) * self.scale  # fold 1/sqrt(d_head) into the key
        s_self = F.pad((q * k).sum(-1).transpose(1, 2), (1, 0))  # slot 0 scores, (B, H, T+1)
        del q  # (the dels keep no-grad inference memory low; autograd keeps what it needs)
        k_t = F.pad(k.permute(0, 2, 3, 1), (1, Tp - T - 1))  # (B, H, dh, Tp), column u: k_{u-1}
        del k
        v_t = F.pad(self.v(x).view(B, T, H, dh).permute(0, 2, 3, 1), (1, 0))  # (B, H, dh, T+1)

        c0, pre_q, pre_v = prefix if prefix is not None else (0, [], [])
        nodes_qv = []  # per level: (2, B, H, G, dh, n+1); entry m' is node m'-1 (0: earlier)
        cache_q, cache_v = [], []
        for i in range(1, max(len(levels), len(pre_q)) + 1):
            if i <= len(levels):
                nodes = levels[i - 1]
                _, nb, n, e, _ = nodes.shape
                qv = self._project(nodes).permute(4, 0, 5, 1, 3, 6, 2)  # (2, B, H, nb, E, dh, n)
                padded = qv.new_zeros(2, B, H, nb * e, dh, n + 1)
                padded[..., 1:].unflatten(3, (nb, e)).copy_(qv)
                del qv
                if return_cache:
                    cache_q.append(padded[0, ..., -1])
                    cache_v.append(padded[1, ..., -1])
            else:  # a level above this sequence's tree: only the stream's node exists
                padded = x.new_zeros(2, B, H, pre_q[i - 1].shape[2], dh, 1)
            if i <= len(pre_q):  # block 0 reads the latest node of the stream so far
                padded[0, ..., 0] = pre_q[i - 1]
                padded[1, ..., 0] = pre_v[i - 1]
            nodes_qv.append(padded)

        # With several chunks under autograd, each chunk's scores and probabilities are
        # recomputed in backward instead of stored: training memory stays O(T * d) plus
        # one chunk's O(chunk * H * slots), for ~1/3 more attention compute.
        recompute = torch.is_grad_enabled() and T + 1 > chunk
        outs = []
        for u0 in range(0, T + 1, chunk):
            args = (u0, min(u0 + chunk, T + 1), chunk, k_t, v_t, s_self, nodes_qv, c0)
            if recompute:
                outs.append(checkpoint(self._attend_chunk, *args, use_reentrant=False))
            else:
                outs.append(self._attend_chunk(*args))
        out = torch.cat(outs, dim=-1)[..., 1:] if len(outs) > 1 else outs[0][..., 1:]  # (B, H, dh, T)
        out = self.o(out.permute(0, 3, 1, 2).reshape(B, T, H * dh))
        cache = None
        if return_cache:
            empty = x.new_zeros(B, H, 0, dh)
            cache = (
                torch.cat(cache_q, dim=2) if cache_q else empty,
                torch.cat(cache_v, dim=2) if cache_v else empty,
            )
        return out, cache

    def _attend_chunk(self, u0, u1, chunk, k_t, v_t, s_self, nodes_qv, c0=0) -> Tensor:
        """Attention output for shifted positions ``u0 <= u < u1``: ``(B, H, dh, u1 - u0)``.
        ``u0`` is a multiple of ``chunk``, so every level's blocks align with the chunk."""
        B, H, dh, _ = k_t.shape
        width = u1 - u0
        scores, thresholds, blocks = [s_self[..., u0:u1]], [0], []
        for i, qv in enumerate(nodes_qv, start=1):
            r = 1 << i
            r_c = min(r, chunk)  # a block longer than the chunk: one node for the whole chunk
            if qv.shape[-1] == 1:  # no node of this level inside the sequence: one block
                r_c = width
            nblk = -(-width // r_c)
            cols = nblk * r_c
            first = u0 >> i  # block (of the u axis) containing u0
            qn = qv[0, ..., first : first + nblk].unsqueeze(-1)  # (B, H, G, dh, nblk, 1)
            k_blocks = k_t[..., u0 : u0 + cols].view(B, H, dh, nblk, r_c)
            for g in range(qn.shape[2]):
                s = (k_blocks * qn[:, :, g]).sum(2)  # (B, H, nblk, r_c)
                scores.append(s.view(B, H, cols)[..., :width])
            blocks.append((r_c, nblk, qv[1, ..., first : first + nblk].unsqueeze(-1)))
            thresholds += [r] * qn.shape[2]

        scores_t = torch.stack(scores, dim=2)  # (B, H, S, width)
        del scores
        # presence by position only: a level-i slot exists for u = t + 1 >= 2**i
        need = torch.tensor(thresholds, device=k_t.device)
        u_global = torch.arange(c0 + u0, c0 + u1, device=k_t.device)
        absent = u_global[None, :] < need[:, None]  # (S, width)
        probs = torch.softmax(scores_t.masked_fill_(absent, float("-inf")), dim=2)
        del scores_t
        p_self, *p_mem = probs.unbind(2)  # unbind, not slicing: backward stacks, no zero-fill

        out = p_self[:, :, None] * v_t[..., u0:u1]  # (B, H, dh, width)
        s = 0
        for r_c, nblk, vn in blocks:
            cols = nblk * r_c
            acc = None
            for g in range(vn.shape[2]):
                p = F.pad(p_mem[s], (0, cols - width)).view(B, H, 1, nblk, r_c)
                acc = p * vn[:, :, g] if acc is None else torch.addcmul(acc, p, vn[:, :, g])
                s += 1
            out = out + acc.view(B, H, dh, cols)[..., :width]
        return out

    # ------------------------------------------------------------------ streaming form
    def step(self, x: Tensor, slot_q: Tensor, slot_v: Tensor) -> Tensor:
        """One position. ``x: (B, d)``; ``slot_q``/``slot_v``: cached projections of the
        memory nodes ``(B, H, S, d_head)``. Returns ``(B, d)``. Cost O(d^2 + S*d)."""
        B = x.shape[0]
        H, dh = self.n_heads, self.d_head
        w, b = self._fused("qkv")
        q, k, v = F.linear(x, w, b).view(B, 3, H, 1, dh).unbind(1)  # (B, H, 1, dh) each
        # slot 0 (the token itself) joins the cached slots: one matmul for all scores
        scores = torch.matmul(torch.cat([q, slot_q], dim=2), k.transpose(-1, -2))  # (B, H, 1+S, 1)
        probs = torch.softmax(scores * self.scale, dim=2)
        out = torch.matmul(probs.transpose(-1, -2), torch.cat([v, slot_v], dim=2))  # (B, H, 1, dh)
        return F.linear(out.reshape(B, H * dh), self.o.weight, self.o.bias)
