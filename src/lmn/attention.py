"""Single-vector attention (SVA): position t attends over its own memory slots only.

For every present slot s of position t (slot 0 is x_t itself), per head:

    score_s = <W_q s, W_k x_t> / sqrt(d_head),   out = W_o sum_s softmax(score)_s W_v s

Note the roles: the *slots* are projected by W_q and the current token by W_k, as in the
paper's code. A slot is absent only because of its position (level i needs t+1 >= 2**i),
never because of its value.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .config import LMNConfig
from .kernels import use_fused
from .tree import ceil_log

# LMNConfig.level_gate: score-bias entries per layer and head. Entry 0 is the token itself,
# entry l + 1 the slots of tree level l (level 0: earlier raw tokens, as the "digits" rule
# keeps them); levels from GATE_LEVELS - 2 up share the last entry.
GATE_LEVELS = 16


def plain_linear(*modules: nn.Module) -> bool:
    """Whether every module is a plain ``nn.Linear`` (not a subclass), whose ``weight`` and
    ``bias`` the fast paths may read and fuse directly. Anything else -- a PEFT LoRA layer,
    a dynamically quantized linear, a parametrized one -- is called as a module, so the
    function it computes is the one used (``tests/runtime/test_ecosystem.py``)."""
    for m in modules:
        if type(m) is not nn.Linear:
            return False
    return True


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
        # the per-level score bias (LMNConfig.level_gate), zero at initialisation
        self.level_gate = config.level_gate
        if config.level_gate != "none":
            self.level_bias = nn.Parameter(torch.zeros(self.n_heads, GATE_LEVELS))
        if config.level_gate == "data":
            self.level_proj = nn.Linear(d, GATE_LEVELS)  # shared by the heads (as lmn's log-linear peer shares its λ)
            with torch.no_grad():
                self.level_proj.weight.zero_()
                self.level_proj.bias.zero_()
        self._fused_cache: dict = {}
        self.fused_kernels = "auto"  # set by LMN.fused_kernels: the Triton path (lmn.kernels)

    # ------------------------------------------------------------------ helpers
    def level_scores(self, x: Tensor) -> Tensor | None:
        """The per-level score bias of tokens ``x (..., d)``: ``(..., H, GATE_LEVELS)``
        (``None`` without ``level_gate``): the learned bias per head and level, plus for
        ``"data"`` ``W_l x + b_l`` per level (one projection shared by the heads)."""
        if self.level_gate == "none":
            return None
        if self.level_gate == "bias":
            return self.level_bias.expand(*x.shape[:-1], -1, -1)
        return self.level_bias + self.level_proj(x)[..., None, :]

    def _fused(self, which: str) -> tuple[Tensor, Tensor]:
        """Concatenated weights: ``"qv"`` = [W_q; W_v] (the slot side) or ``"qkv"``.

        Under autograd they are rebuilt on every call (so gradients flow); otherwise
        they are cached and rebuilt only when a parameter changes (tracked by identity and
        version counter), which saves two ``cat`` per streaming step.
        """
        mods = (self.q, self.v) if which == "qv" else (self.q, self.k, self.v)
        if not plain_linear(*mods):  # (the model's own paths call such a linear as a module; the native step comes here)
            raise ValueError("the fused [W_q; W_k; W_v] reads plain nn.Linear weights, but this attention's "
                             f"projections are {', '.join(sorted({type(m).__module__ + '.' + type(m).__qualname__ for m in mods}))}; "
                             "merge an adapter first (PEFT: merge_and_unload()) or use LMN.step")
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # (a compiled graph fuses the cat itself)
            return torch.cat([m.weight for m in mods]), torch.cat([m.bias for m in mods])
        try:
            key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for m in mods for p in (m.weight, m.bias))
        except RuntimeError:  # inference tensors (a model made under torch.inference_mode()) have
            # no version counter to key a cache on: rebuilt every call
            return torch.cat([m.weight for m in mods]), torch.cat([m.bias for m in mods])
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
        B, nb, n, e, _ = nodes.shape
        if not plain_linear(self.q, self.v):  # (an adapted or quantized linear: its own call)
            return torch.cat([self.q(nodes), self.v(nodes)], dim=-1).view(B, nb, n, e, 2, self.n_heads, self.d_head)
        w, b = self._fused("qv")
        return F.linear(nodes, w, b).view(B, nb, n, e, 2, self.n_heads, self.d_head)

    def project_nodes(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Project nodes once: ``(B, n_banks, n, E, d)`` -> q, v ``(B, H, n, n_banks*E, d_head)``
        (slot order within a level: bank-major, then the node's set index)."""
        B, nb, n, e, _ = nodes.shape
        qv = self._project(nodes).permute(4, 0, 5, 2, 1, 3, 6)
        qv = qv.reshape(2, B, self.n_heads, n, nb * e, self.d_head)
        return qv[0], qv[1]

    # ------------------------------------------------------------------ parallel form
    def read_groups(self, x: Tensor, levels: list[Tensor], tree, prefix=None) -> list[SlotGroup]:
        """The slot groups a sequence attends over (see :meth:`lmn.tree.Tree.read_groups`).

        Args:
            x: ``(B, T, d)`` normalised input (the level-0 nodes).
            levels: ``[N_1, ..., N_L]`` from :meth:`lmn.memory.LogMemory.build`.
            tree: the model's :class:`lmn.tree.Tree`.
            prefix: continue a stream: ``(c0, cached)`` where ``c0`` tokens came before ``x``
                (a multiple of ``k**p``, ``p`` the smallest with ``T <= k**p``) and
                ``cached[i]`` holds the q/v projections ``(B, H, n, d_head)`` of the slots
                of level ``i`` in the stream's slot cache. Levels ``>= p`` are then read
                from the stream only (constant over the piece); for ``"latest"`` a block of
                a lower level that starts the piece reads the stream's latest node. Only
                positions ``0 .. T-2`` are exact: the last one may read nodes that complete
                with it (the caller recomputes it with :meth:`step`).
        """
        B, T, _ = x.shape
        k = tree.stride
        c0, cached = prefix if prefix is not None else StreamPrefix(0, [])
        local = len(levels) if prefix is None else min(len(levels), ceil_log(T, k) - 1)
        groups = []
        for level, r in tree.read_groups(local):
            nodes = x[:, None, :, None, :] if level == 0 else levels[level - 1]  # level 0: tokens, one slot each
            qv = self._project(nodes).permute(4, 0, 5, 1, 3, 6, 2)  # (2, B, H, nb, E, dh, n)
            before = cached[level] if level < len(cached) else None
            n_blocks = T // tree.block_length(level) + 1
            entries = tree.rule.group_entries(qv, r, n_blocks, k, before)
            del qv
            groups.append(SlotGroup(entries, tree.block_length(level), level, r))
        # levels above the piece's own tree: the stream's cached slots, one entry for all
        for level in range(local + 1, len(cached)):
            q, v = cached[level]
            if q.shape[2] == 0:
                continue
            for r, (qn, vn) in enumerate(tree.rule.stream_entries(q, v, tree.node_slots(level))):
                groups.append(SlotGroup(torch.stack([qn, vn])[..., None], None, level, r))
        return groups

    def forward(self, x: Tensor, read: "ParallelRead | CachedRead") -> Tensor:
        """The one call of both forms: what ``read`` holds decides which runs.

        * :class:`ParallelRead` -- ``x (B, T, d)``: every position of a sequence (or of a
          piece continuing a stream) over the tree levels built from it, in parallel.
        * :class:`CachedRead` -- ``x (B, d)``: one position over a stream's cached slots.

        Returns ``(B, T, d)`` or ``(B, d)``.
        """
        if type(read) is CachedRead:
            return self._one(x, read.slot_q, read.slot_v, read.extra, read.gate_entries)
        return self._parallel(x, read.levels, read.tree, read.chunk, read.prefix, read.extra)

    def project_tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """W_q and W_v of tokens ``(B, n, d)`` as slots: ``(B, H, n, d_head)`` each."""
        B, n, _ = x.shape
        if plain_linear(self.q, self.v):
            q, v = F.linear(x, self.q.weight, self.q.bias), F.linear(x, self.v.weight, self.v.bias)
        else:
            q, v = self.q(x), self.v(x)
        return (q.view(B, n, self.n_heads, self.d_head).transpose(1, 2),
                v.view(B, n, self.n_heads, self.d_head).transpose(1, 2))

    def _parallel(self, x: Tensor, levels: list[Tensor], tree, chunk: int = 4096, prefix=None, pin=None) -> Tensor:
        """Parallel form.

        Args:
            x: ``(B, T, d)`` normalised input (slot 0 and the key side).
            levels: ``[N_1, ..., N_L]`` from :meth:`lmn.memory.LogMemory.build`.
            tree: the model's :class:`lmn.tree.Tree` (which slots are read, and where).
            chunk: positions processed at once (a power of the stride); bounds the
                temporaries.
            prefix: continue a stream (see :meth:`read_groups`).
            pin: the memory mechanisms' slots of every position
                (:class:`lmn.mechanisms.ExtraSlots`) or ``None``.
        Returns:
            ``out (B, T, d)``.

        Work on the shifted axis u = t + 1 in [0, T] (u = 0 is a dummy). Every group
        reads one node per aligned block of its block length on the u axis, so every
        node is projected once and broadcast over its block, and no ``(B, T, slots, d)``
        tensor is ever formed. Memory is O(T * d) for the sequence plus
        O(chunk * H * slots) for the scores. Tensors are kept time-last (``(B, H, dh, u)``)
        so that every broadcast multiply and reduction runs over a contiguous time axis.
        """
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        if chunk != tree.chunk(chunk):
            raise ValueError(f"chunk must be a power of the stride {tree.stride}, got {chunk}")
        # fused Triton kernels (they read W_q and W_v as tensors: plain linears only; "auto" leaves
        # a compiled graph to the compiler's own kernels)
        if (prefix is None and pin is None and self.level_gate == "none" and plain_linear(self.q, self.v)
                and use_fused(self.fused_kernels, x, dh)
                and not (self.fused_kernels == "auto" and torch.compiler.is_compiling())):
            from .kernels.triton_sva import fused_attention

            return fused_attention(self, x, levels, tree)
        T1 = T + 1
        q = self.q(x).view(B, T, H, dh)
        k = self.k(x).view(B, T, H, dh) * self.scale  # fold 1/sqrt(d_head) into the key
        s_self = F.pad((q * k).sum(-1).transpose(1, 2), (1, 0))  # slot 0 scores, (B, H, T+1)
        v = self.v(x).view(B, T, H, dh)
        # extra slots of the memory mechanisms (lmn.mechanisms.ExtraSlots), shifted like v
        pins = [] if pin is None else [F.pad(pin.q, (1, 0)), F.pad(pin.v, (1, 0)),
                                       F.pad(pin.bias, (1, 0), value=float("-inf"))]
        gate = self.level_scores(x)  # (B, T, H, G) or None: per column like the extra slots, after them
        if gate is not None:
            pins.append(F.pad(gate.permute(0, 2, 3, 1), (1, 0)))  # (B, H, G, T+1)
        del q  # (the dels keep no-grad inference memory low; autograd keeps what it needs)
        v_t = F.pad(v.permute(0, 2, 3, 1), (1, 0))  # (B, H, dh, T+1)
        del v
        groups = self.read_groups(x, levels, tree, prefix)
        blocks = [g.block for g in groups]
        Tp = max([T1] + [u0 + _chunk_plan(u0, min(u0 + chunk, T1), chunk, blocks)[0] for u0 in range(0, T1, chunk)])
        k_t = F.pad(k.permute(0, 2, 3, 1), (1, Tp - T - 1))  # (B, H, dh, Tp), column u: k_{u-1}
        del k
        c0 = 0 if prefix is None else prefix[0]
        slot_level, slot_r = _slot_specs(groups, x.device)
        gate_slots = None if gate is None else (0,) + tuple(  # slot 0, the token: entry 0
            min(g.level + 1, GATE_LEVELS - 1) for g in groups for _ in range(g.entries.shape[3]))
        meta = _Plan(chunk, c0, T1, tree, blocks, slot_level, slot_r, len(pins), gate_slots)
        nodes_qv = [*pins, *(g.entries for g in groups)]

        # With several chunks under autograd, no chunk's scores or probabilities are kept:
        # backward recomputes one chunk at a time from chunk-sized slices of the inputs
        # (see _RecomputedChunks), so training memory stays O(T * d) plus one chunk's
        # O(chunk * H * slots), for ~1/3 more attention compute.
        if torch.is_grad_enabled() and T1 > chunk:
            out = _RecomputedChunks.apply(meta, k_t, v_t, s_self, *nodes_qv)
        else:
            out = _attend_all(meta, k_t, v_t, s_self, nodes_qv)
        out = out[..., 1:]  # (B, H, dh, T)
        return self.o(out.permute(0, 3, 1, 2).reshape(B, T, H * dh))

    # ------------------------------------------------------------------ streaming form
    def _one(self, x: Tensor, slot_q: Tensor, slot_v: Tensor, pin=None, gate_entries=None) -> Tensor:
        """One position. ``x: (B, d)``; ``slot_q``/``slot_v``: cached projections of the
        memory nodes ``(B, H, S, d_head)``; ``pin``: the memory mechanisms' slots
        (:class:`lmn.mechanisms.Slots`, with their score bias) or None; ``gate_entries``:
        the level-gate entry of the token and of every cached slot ``(1 + S,)`` (needed with
        ``level_gate``; :func:`gate_entries`).
        Returns ``(B, d)``. Cost O(d^2 + S*d)."""
        B = x.shape[0]
        H, dh = self.n_heads, self.d_head
        plain = plain_linear(self.q, self.k, self.v, self.o)
        if plain:
            w, b = self._fused("qkv")
            qkv = F.linear(x, w, b)
        else:  # an adapted or quantized linear: each called as a module
            qkv = torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)
        q, k, v = qkv.view(B, 3, H, 1, dh).unbind(1)  # (B, H, 1, dh) each
        if pin is not None:  # the mechanisms' slots follow the tree's, with their score bias
            slot_q, slot_v = torch.cat([slot_q, pin.q], dim=2), torch.cat([slot_v, pin.v], dim=2)
        # slot 0 (the token itself) joins the cached slots: one matmul for all scores
        scores = torch.matmul(torch.cat([q, slot_q], dim=2), k.transpose(-1, -2))  # (B, H, 1+S, 1)
        scores = scores * self.scale
        if pin is not None:
            bias = F.pad(pin.bias, (scores.shape[2] - pin.bias.shape[1], 0))  # (B, 1+S)
            scores = scores + bias[:, None, :, None]
        if self.level_gate != "none":  # the tree slots' level bias (slot 0, the token: entry 0)
            if gate_entries is None:
                raise ValueError("a step of a model with level_gate needs the gate entry of every cached slot")
            g = self.level_scores(x).index_select(-1, gate_entries)  # (B, H, 1 + S_tree)
            scores = scores + F.pad(g, (0, scores.shape[2] - g.shape[2]))[..., None]  # (mechanisms' slots: none)
        probs = torch.softmax(scores, dim=2)
        out = torch.matmul(probs.transpose(-1, -2), torch.cat([v, slot_v], dim=2))  # (B, H, 1, dh)
        if plain:
            return F.linear(out.reshape(B, H * dh), self.o.weight, self.o.bias)
        return self.o(out.reshape(B, H * dh))


def gate_entries(slots_per_level, device) -> Tensor:
    """The level-gate entry of the token (0) and of every slot of a slot cache holding
    ``slots_per_level[i]`` slots of tree level ``i`` (``i + 1``, the deepest shared): ``(1 + S,)``."""
    entry = [0] + [min(i + 1, GATE_LEVELS - 1) for i, n in enumerate(slots_per_level) for _ in range(n)]
    return torch.tensor(entry, dtype=torch.long, device=device)


# ---------------------------------------------------------------------- chunk kernels
# Shapes (time-last): k_t (B, H, dh, Tp) with column u holding k_{u-1}; v_t (B, H, dh, T+1);
# s_self (B, H, T+1); per slot group a tensor (2, B, H, G, dh, n_entries) of projected
# nodes whose entry q is the node read by block q of the group (see SlotGroup).


class StreamPrefix(NamedTuple):
    """What a piece continuing a stream reads from before it: ``pos`` tokens came first,
    ``cached[i]`` are the q/v projections ``(B, H, n, d_head)`` of level ``i``'s slots in
    the stream's slot cache."""

    pos: int
    cached: list


class ParallelRead(NamedTuple):
    """What every position of a sequence reads (the parallel form): the tree ``levels``
    ``[N_1, ..., N_L]`` (:meth:`lmn.memory.LogMemory.build`) of ``tree``; ``chunk``
    positions at a time (a power of the stride); ``prefix`` when the sequence continues a
    stream; ``extra`` the memory mechanisms' slots (:class:`lmn.mechanisms.ExtraSlots`) or ``None``."""

    levels: list
    tree: object
    chunk: int = 4096
    prefix: StreamPrefix | None = None
    extra: object = None  # the memory mechanisms' slots (lmn.mechanisms)


class CachedRead(NamedTuple):
    """What one position of a stream reads: the projections of its memory slots,
    ``slot_q``/``slot_v (B, H, S, d_head)`` (the state's slot cache), and the memory
    mechanisms' slots (:class:`lmn.mechanisms.Slots`) or ``None``."""

    slot_q: Tensor
    slot_v: Tensor
    extra: object = None  # the memory mechanisms' slots (lmn.mechanisms)
    gate_entries: Tensor | None = None  # (1 + S,) the level-gate entry of the token and each cached slot (level_gate)


class _Plan(NamedTuple):
    """The fixed arguments of the parallel attention's chunk kernels."""

    chunk: int
    c0: int  # tokens of the stream before the sequence
    T1: int  # shifted positions u = 0 .. T
    tree: object
    blocks: list  # per slot group its block length (None: one entry for every position)
    slot_level: Tensor
    slot_r: Tensor
    n_pin: int  # per-column tensors at the head of the node inputs: the mechanisms' slots, then the level gate
    gate_slots: tuple | None = None  # level_gate: the gate entry of every tree slot (slot 0 first); its
    # per-column scores (B, H, GATE_LEVELS, u) are the last of the n_pin tensors


class SlotGroup(NamedTuple):
    """Slots read as one node per aligned block of ``block`` positions on the u axis:
    ``entries (2, B, H, G, d_head, n_entries)`` holds q and v of the node block ``q``
    reads (``block=None``: one entry, read by every position). ``level``/``r`` name the
    group for :meth:`lmn.tree.Tree.absent`."""

    entries: Tensor
    block: int | None
    level: int
    r: int


def _slot_specs(groups: list[SlotGroup], device) -> tuple[Tensor, Tensor]:
    """Per attention slot (slot 0: the token itself, level -1) its level and group index."""
    levels = [-1] + [g.level for g in groups for _ in range(g.entries.shape[3])]
    rs = [0] + [g.r for g in groups for _ in range(g.entries.shape[3])]
    return torch.tensor(levels, device=device), torch.tensor(rs, device=device)


def _chunk_plan(u0: int, u1: int, chunk: int, blocks: list[int | None]) -> tuple[int, list[tuple[int, int, int]]]:
    """What the chunk of shifted positions ``u0 <= u < u1`` reads: per group (of block
    length ``blocks[g]``)
    ``(first, nblk, r_c)`` -- entries ``first .. first+nblk-1``, each broadcast over
    ``r_c`` consecutive columns -- and ``cols``, the key columns ``u0 .. u0+cols-1`` it
    needs. ``u0`` is a multiple of ``chunk`` and every block length a power of the same
    stride, so every block either lies inside the chunk or covers it."""
    width = u1 - u0
    plan, cols = [], width
    for block in blocks:
        if block is None:  # one node for every position
            plan.append((0, 1, width))
            continue
        r_c = min(block, chunk)  # a block longer than the chunk: one node for the whole chunk
        nblk = -(-width // r_c)
        plan.append((u0 // block, nblk, r_c))
        cols = max(cols, nblk * r_c)
    return cols, plan


def _attend_local(k_loc, v_loc, s_loc, qv_loc, plan, u_start: int, meta, pin_loc=()) -> Tensor:
    """Attention output ``(B, H, dh, width)`` of one chunk from its own slices only:
    ``k_loc (B, H, dh, >= cols)``, ``v_loc (B, H, dh, width)``, ``s_loc (B, H, width)``,
    per group ``qv_loc (2, B, H, G, dh, nblk)``; ``u_start`` is the chunk's first shifted
    position counted from the start of the stream (for the presence mask)."""
    B, H, dh, width = v_loc.shape
    tree, slot_level, slot_r = meta.tree, meta.slot_level, meta.slot_r
    gate = None
    if meta.gate_slots is not None:  # the level gate's scores ride last among the per-column tensors
        gate, pin_loc = pin_loc[-1], pin_loc[:-1]
    scores, blocks = [s_loc], []
    for qv, (_, nblk, r_c) in zip(qv_loc, plan):
        cols = nblk * r_c
        k_blocks = k_loc[..., :cols].view(B, H, dh, nblk, r_c)
        qn, vn = qv.unsqueeze(-1).unbind(0)  # (B, H, G, dh, nblk, 1) each
        for g in range(qn.shape[2]):
            s = (k_blocks * qn[:, :, g]).sum(2)  # (B, H, nblk, r_c)
            scores.append(s.view(B, H, cols)[..., :width])
        blocks.append((r_c, nblk, vn))
    if gate is not None:  # every tree slot's score gets its level's bias
        scores = [s + gate[:, :, e] for s, e in zip(scores, meta.gate_slots)]
    if pin_loc:  # the mechanisms' slots: one vector per slot and position, with their score bias
        pq, pv, pb = pin_loc  # (B, H, m, dh, width) twice, (B, m, width)
        s_pin = (k_loc[:, :, None, :, :width] * pq).sum(3) + pb[:, None]  # (B, H, m, width)
        scores.extend(s_pin.unbind(2))

    scores_t = torch.stack(scores, dim=2)  # (B, H, S, width)
    del scores
    # presence by position only (lmn.tree): e.g. for "latest" a level-i slot exists for u >= k**i
    u_global = torch.arange(u_start, u_start + width, device=v_loc.device)
    absent = tree.absent(u_global, slot_level, slot_r)  # (S, width)
    if pin_loc:  # (an absent extra slot has score -inf already)
        absent = torch.cat([absent, absent.new_zeros(pin_loc[0].shape[2], width)])
    probs = torch.softmax(scores_t.masked_fill_(absent, float("-inf")), dim=2)
    del scores_t
    p_self, *p_mem = probs.unbind(2)  # unbind, not slicing: backward stacks, no zero-fill
    if pin_loc:
        p_mem, p_pin = p_mem[: len(p_mem) - pq.shape[2]], p_mem[len(p_mem) - pq.shape[2] :]

    out = p_self[:, :, None] * v_loc  # (B, H, dh, width)
    s = 0
    for r_c, nblk, vn in blocks:
        cols = nblk * r_c
        acc = None
        for g in range(vn.shape[2]):
            p = F.pad(p_mem[s], (0, cols - width)).view(B, H, 1, nblk, r_c)
            acc = p * vn[:, :, g] if acc is None else torch.addcmul(acc, p, vn[:, :, g])
            s += 1
        out = out + acc.view(B, H, dh, cols)[..., :width]
    if pin_loc:
        for r, p in enumerate(p_pin):
            out = torch.addcmul(out, p[:, :, None], pv[:, :, r])
    return out


def _chunk_slices(u0: int, u1: int, meta, k_t, v_t, s_self, nodes_qv):
    """A chunk's slices of the inputs; ``nodes_qv`` starts with the ``meta.n_pin`` extra-slot
    tensors (per column, like ``v_t``), then the slot groups' entries."""
    n_pin = meta.n_pin
    cols, plan = _chunk_plan(u0, u1, meta.chunk, meta.blocks)
    pin_loc = [t[..., u0:u1] for t in nodes_qv[:n_pin]]
    qv_loc = [qv[..., first : first + nblk] for qv, (first, nblk, _) in zip(nodes_qv[n_pin:], plan)]
    return (k_t[..., u0 : u0 + cols], v_t[..., u0:u1], s_self[..., u0:u1], pin_loc + qv_loc), plan


def _attend_all(meta, k_t, v_t, s_self, nodes_qv) -> Tensor:
    """Output ``(B, H, dh, T1)`` for the shifted positions ``0 <= u < T1``, chunk by chunk
    (differentiable by plain autograd, which then keeps every chunk's probabilities)."""
    chunk, c0, T1 = meta.chunk, meta.c0, meta.T1
    outs = []
    for u0 in range(0, T1, chunk):
        u1 = min(u0 + chunk, T1)
        (k_loc, v_loc, s_loc, qv_loc), plan = _chunk_slices(u0, u1, meta, k_t, v_t, s_self, nodes_qv)
        n_pin = meta.n_pin
        outs.append(_attend_local(k_loc, v_loc, s_loc, qv_loc[n_pin:], plan, c0 + u0, meta, qv_loc[:n_pin]))
    return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]


def vjp(out: Tensor, inputs: list[Tensor], grad_out: Tensor) -> tuple:
    """``torch.autograd.grad(out, inputs, grad_out, allow_unused=True)``, computed as the
    gradient of the scalar ``sum(out * grad_out)`` (the same numbers: the product's backward
    multiplies ``grad_out`` by one). Passing ``grad_outputs`` makes torch import its symbolic
    shape machinery on first use (sympy, ~30-70 MiB resident), which would count against
    the training step's memory."""
    with torch.enable_grad():  # backward() runs with grad mode off
        total = (out * grad_out).sum()
    return torch.autograd.grad(total, inputs, allow_unused=True)


class _RecomputedChunks(torch.autograd.Function):
    """:func:`_attend_all` whose backward recomputes one chunk at a time.

    Forward keeps only its inputs. Backward, per chunk, takes detached *slices* of the
    inputs (a view each, no copy), re-runs :func:`_attend_local` on them under autograd,
    and adds the slices' gradients into one gradient buffer per input. Every temporary
    is thus chunk-sized; a generic checkpoint of the chunk would instead hand each
    chunk's backward the full inputs and materialise full-size gradients per chunk.
    """

    @staticmethod
    def forward(ctx, meta, k_t, v_t, s_self, *nodes_qv):
        ctx.meta = meta
        ctx.save_for_backward(k_t, v_t, s_self, *nodes_qv)
        return _attend_all(meta, k_t, v_t, s_self, nodes_qv)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        meta = ctx.meta
        chunk, c0, T1 = meta.chunk, meta.c0, meta.T1
        k_t, v_t, s_self, *nodes_qv = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        full = [torch.zeros_like(t) if need else None for t, need in zip((k_t, v_t, s_self, *nodes_qv), needs)]
        for u0 in range(0, T1, chunk):
            u1 = min(u0 + chunk, T1)
            (k_loc, v_loc, s_loc, qv_loc), plan = _chunk_slices(u0, u1, meta, k_t, v_t, s_self, nodes_qv)
            leaves = [t.detach().requires_grad_(need) for t, need in zip((k_loc, v_loc, s_loc, *qv_loc), needs)]
            n_pin = meta.n_pin
            with torch.enable_grad():
                out = _attend_local(leaves[0], leaves[1], leaves[2], leaves[3 + n_pin :], plan, c0 + u0, meta,
                                    leaves[3 : 3 + n_pin])
            wanted = [j for j, leaf in enumerate(leaves) if leaf.requires_grad]
            if not wanted:
                break
            grads = vjp(out, [leaves[j] for j in wanted], grad_out[..., u0:u1])
            for j, g in zip(wanted, grads):
                if g is None:
                    continue
                if j == 0:
                    full[0][..., u0 : u0 + g.shape[-1]] += g
                elif j < 3 + n_pin:  # v_t, s_self and the extra slots: per column
                    full[j][..., u0:u1] += g
                else:
                    first = plan[j - 3 - n_pin][0]
                    full[j][..., first : first + g.shape[-1]] += g
        return (None, *full)
