"""The pinned memory: besides its tree slots, position ``t`` reads the ``m`` earlier tokens of
largest write score, each with ``log sigmoid(score)`` added to its attention score.

Definition (``m = config.pinned``; ``w_j = W_w x_j + b_w`` the write score of token ``j``):

    P(t) = the m positions j < t of largest key (w_j, j)      (ties go to the later token)

Position ``t`` reads slot ``x_j`` for every ``j`` in ``P(t)`` with score bias
``log sigmoid(w_j)``. :func:`reference_sets` states it literally; the parallel form computes
every ``P(t)`` at once with a scan (:func:`running_top`), the streaming form keeps ``P``
as a :class:`lmn.state.PinnedSet` and updates it per token (:meth:`PinnedMemory.add_token`).

It is a memory mechanism (:mod:`lmn.mechanisms`): one module, registered at the end of
this file, that the block builds when ``config.pinned > 0`` (``block.pinned``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mechanisms import ExtraSlots, Mechanism, PieceRead, Slots, register_mechanism


@dataclass
class PinnedSet:
    """The pinned memory of one layer after ``pos`` tokens: the ``min(pos, m)`` earlier tokens
    of highest write score, sorted by (score, position) descending. ``x (B, n, d)``,
    ``w (B, n)`` write scores, ``j (B, n)`` positions (int64), ``q``/``v (B, H, n, d_head)``
    their cached projections."""

    x: Tensor
    w: Tensor
    j: Tensor
    q: Tensor
    v: Tensor


class Pool(NamedTuple):
    """The candidates of a piece (see :meth:`PinnedMemory.pool`)."""

    x: Tensor  # (B, N, d)
    w: Tensor  # (B, N) write scores
    j: Tensor  # (B, N) positions
    pre_q: Tensor | None  # (B, H, n_p, d_head): the stream's pinned tokens, projected
    pre_v: Tensor | None
    sets: Tensor  # (B, C + 1, m) pool indices, -1 pads


# ----------------------------------------------------------------------------- plain definition
def reference_sets(w: Tensor, t: int, m: int) -> list[list[int]]:
    """*Plain.* Per batch row of write scores ``w (B, T)``, ``P(t)``: the ``m`` positions
    ``j < t`` of largest ``(w[j], j)``, largest first."""
    return [sorted(range(t), key=lambda j: (w[b, j].item(), j), reverse=True)[:m] for b in range(w.shape[0])]


# ----------------------------------------------------------------------------- fast helpers
def top_order(w: Tensor, j: Tensor, m: int) -> Tensor:
    """Indices of the (at most) ``m`` largest keys ``(w, j)`` along the last axis, sorted
    descending: by score, ties to the larger position ``j``."""
    by_j = torch.sort(j, dim=-1, descending=True, stable=True).indices
    by_w = torch.sort(w.gather(-1, by_j), dim=-1, descending=True, stable=True).indices[..., :m]
    return by_j.gather(-1, by_w)


def running_top(w: Tensor, m: int) -> Tensor:
    """Indices ``(B, N, m)`` of the pinned set after each of ``N`` tokens: for every ``i`` the
    ``m`` tokens ``j <= i`` of largest key ``(w[j], j)``, sorted descending (``-1`` pads).

    A Hillis-Steele scan (log2 N steps, each merging disjoint top-m lists), equal to taking
    the top ``m`` of every prefix (:func:`reference_sets`)."""
    B, N = w.shape
    vals = torch.cat([w[..., None], w.new_full((B, N, m - 1), float("-inf"))], dim=-1)
    idx = torch.cat([torch.arange(N, device=w.device).expand(B, N)[..., None],
                     torch.full((B, N, m - 1), -1, dtype=torch.long, device=w.device)], dim=-1)
    s = 1
    while s < N:
        prev_v = torch.cat([vals.new_full((B, s, m), float("-inf")), vals[:, :-s]], dim=1)
        prev_i = torch.cat([idx.new_full((B, s, m), -1), idx[:, :-s]], dim=1)
        both_v, both_i = torch.cat([vals, prev_v], dim=-1), torch.cat([idx, prev_i], dim=-1)
        # order by (value, index) descending: by index first, then stably by value
        by_i = torch.sort(both_i, dim=-1, descending=True, stable=True).indices
        both_v, both_i = both_v.gather(-1, by_i), both_i.gather(-1, by_i)
        by_v = torch.sort(both_v, dim=-1, descending=True, stable=True).indices[..., :m]
        vals, idx = both_v.gather(-1, by_v), both_i.gather(-1, by_v)
        idx = torch.where(vals > float("-inf"), idx, -1)
        s *= 2
    return idx


class PinnedMemory(Mechanism):
    """The write score of one layer and the three ways of keeping the top-m set.

    ``project`` maps tokens ``(B, n, d)`` to their slot projections ``q, v (B, H, n, d_head)``
    (the attention's :meth:`~lmn.attention.SingleVectorAttention.project_tokens`).
    """

    name = "pinned"
    state_class = PinnedSet

    def __init__(self, d_model: int, m: int, n_heads: int = 1):
        super().__init__()
        self.m, self.d_model, self.n_heads = m, d_model, n_heads
        self.write = nn.Linear(d_model, 1)

    # ---------------------------------------------------------------- registration
    @classmethod
    def enabled(cls, config) -> bool:
        return config.pinned > 0

    @classmethod
    def build(cls, config) -> "PinnedMemory":
        return cls(config.d_model, config.pinned, config.n_heads)

    @classmethod
    def describe(cls, config) -> str:
        return f"the pinned memory (this model has pinned = {config.pinned})"

    @classmethod
    def state_nbytes(cls, config, batch_size: int, pos: int, element_size: int) -> int:
        # per token x, q, v (d each) and its score, plus its int64 position
        return config.n_layers * batch_size * min(pos, config.pinned) * ((3 * config.d_model + 1) * element_size + 8)

    def scores(self, x: Tensor) -> Tensor:
        """Write scores ``(B, T)`` of tokens ``x (B, T, d)``."""
        return self.write(x)[..., 0]

    def empty(self, batch_size: int, device, dtype) -> PinnedSet:
        """The set of a stream at position 0."""
        def zeros(*shape, dt=dtype):
            return torch.zeros(batch_size, *shape, device=device, dtype=dt)

        d_head = self.d_model // self.n_heads
        return PinnedSet(zeros(0, self.d_model), zeros(0), zeros(0, dt=torch.long), zeros(self.n_heads, 0, d_head),
                         zeros(self.n_heads, 0, d_head))

    # ---------------------------------------------------------------- the three forms
    def read_piece(self, x: Tensor, state, pos: int, project, return_state: bool) -> PieceRead:
        pool = self.pool(x, state, pos)
        C = x.shape[1]
        last = self.slots_at(pool, C - 1, project) if state is not None else None
        after = self.after(pool, pos + C, project) if return_state else None
        return PieceRead(self.piece_slots(x, pool, project), last, after)

    def read_one(self, x: Tensor, state: PinnedSet, pos: int, project) -> tuple[Slots, PinnedSet]:
        return Slots(state.q, state.v, F.logsigmoid(state.w)), self.add_token(state, x, pos, project)

    # ---------------------------------------------------------------- plain definition
    def reference_slots(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        B = x.shape[0]
        if t == 0:
            return x.new_zeros(B, 0, x.shape[2]), x.new_zeros(B, 0)
        w = self.write(x)[..., 0]  # (B, T)
        pins = torch.tensor(reference_sets(w, t, self.m), device=x.device)  # (B, n)
        return (torch.stack([x[b, pins[b]] for b in range(B)]),
                torch.stack([F.logsigmoid(w[b, pins[b]]) for b in range(B)]))

    def reference_state(self, x: Tensor, T: int, project) -> PinnedSet:
        B = x.shape[0]
        w = self.write(x)[..., 0]
        pins = torch.tensor(reference_sets(w, T, self.m), device=x.device)
        px = torch.stack([x[b, pins[b]] for b in range(B)])
        q, v = project(px)
        return PinnedSet(px, torch.stack([w[b, pins[b]] for b in range(B)]), pins, q, v)

    # ---------------------------------------------------------------- parallel form and prefill
    def pool(self, x: Tensor, prev: PinnedSet | None, pos: int) -> Pool:
        """The candidates for a piece ``x (B, C, d)`` after ``pos`` tokens: the stream's pinned
        tokens (``prev``, in position order) then the piece's, and the pinned set before each
        position, ``sets (B, C + 1, m)`` of pool indices (row t: the set that position t
        reads; row C: the set after the piece)."""
        B, C, _ = x.shape
        m = self.m
        w = self.scores(x)  # (B, C)
        j = torch.arange(pos, pos + C, device=x.device).expand(B, C)
        if prev is not None and prev.w.shape[1]:
            order = prev.j.argsort(dim=1)  # the pool in position order: index order == position order
            take = lambda t: t.gather(1, order if t.dim() == 2 else order[..., None].expand_as(t))  # noqa: E731
            pre_x, pre_w, pre_j = take(prev.x), take(prev.w), take(prev.j)
            hq = order[:, None, :, None].expand_as(prev.q)
            pre_q, pre_v = prev.q.gather(2, hq), prev.v.gather(2, hq)
            x, w, j = torch.cat([pre_x, x], 1), torch.cat([pre_w, w], 1), torch.cat([pre_j, j], 1)
        else:
            pre_q = pre_v = None
        n_p = x.shape[1] - C
        running = running_top(w, m)  # (B, N, m): after each pool token
        sets = torch.cat([running.new_full((B, 1, m), -1), running], dim=1)[:, n_p:]  # (B, C + 1, m)
        return Pool(x, w, j, pre_q, pre_v, sets)

    def piece_slots(self, x: Tensor, pool: Pool, project) -> ExtraSlots:
        """Per position of the piece its pinned slots, time-last (:class:`lmn.mechanisms.ExtraSlots`):
        the pool tokens of its set, projected, with ``log sigmoid(w)`` as their score bias."""
        index = pool.sets[:, :-1]  # (B, C, m): the set each position reads
        B, C, m = index.shape
        q_x, v_x = project(x)  # (B, H, C, dh): the piece's tokens; the stream's come projected
        if pool.pre_q is not None:
            q_x, v_x = torch.cat([pool.pre_q, q_x], dim=2), torch.cat([pool.pre_v, v_x], dim=2)
        H, dh = q_x.shape[1], q_x.shape[3]
        flat = index.clamp(min=0).reshape(B, 1, C * m, 1).expand(B, H, C * m, dh)
        pq = q_x.gather(2, flat).view(B, H, C, m, dh).permute(0, 1, 3, 4, 2)
        pv = v_x.gather(2, flat).view(B, H, C, m, dh).permute(0, 1, 3, 4, 2)
        bias = F.logsigmoid(pool.w).gather(1, index.clamp(min=0).view(B, C * m)).view(B, C, m)
        bias = bias.masked_fill(index < 0, float("-inf")).transpose(1, 2)  # (B, m, C)
        return ExtraSlots(pq, pv, bias)

    def after(self, pool: Pool, count: int, project) -> PinnedSet:
        """The pinned set after the piece (``count`` tokens in all), as a state's :class:`PinnedSet`."""
        n = min(count, self.m)
        sel = pool.sets[:, -1, :n]  # (B, n), sorted by key
        x = pool.x.gather(1, sel[..., None].expand(-1, -1, pool.x.shape[-1]))
        q, v = project(x)
        return PinnedSet(x, pool.w.gather(1, sel), pool.j.gather(1, sel), q, v)

    def slots_at(self, pool: Pool, row: int, project) -> Slots:
        """The pinned slots of the pool's set ``row`` (one position)."""
        sel = pool.sets[:, row]
        n = int((sel[0] >= 0).sum())
        sel = sel[:, :n]
        x = pool.x.gather(1, sel[..., None].expand(-1, -1, pool.x.shape[-1]))
        q, v = project(x)
        return Slots(q, v, F.logsigmoid(pool.w.gather(1, sel)))

    # ---------------------------------------------------------------- streaming form
    def add_token(self, pin: PinnedSet, x: Tensor, position: int, project) -> PinnedSet:
        """The pinned set after token ``position`` (``x: (B, d)``) was read: the top m of
        the set and the token, by (write score, position)."""
        B = x.shape[0]
        w = torch.cat([pin.w, self.write(x)], dim=1)  # (B, n + 1)
        j = torch.cat([pin.j, torch.full((B, 1), position, dtype=torch.long, device=x.device)], dim=1)
        q_t, v_t = project(x[:, None])
        xs, q, v = torch.cat([pin.x, x[:, None]], 1), torch.cat([pin.q, q_t], 2), torch.cat([pin.v, v_t], 2)
        order = top_order(w, j, self.m)  # (B, n')
        hq = order[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3])
        return PinnedSet(xs.gather(1, order[..., None].expand(-1, -1, xs.shape[2])), w.gather(1, order),
                         j.gather(1, order), q.gather(2, hq), v.gather(2, hq))


register_mechanism(PinnedMemory)
