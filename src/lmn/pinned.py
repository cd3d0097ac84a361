"""The pinned memory: besides its tree slots, position ``t`` reads the ``m`` earlier tokens of
largest write score, each with ``log sigmoid(score)`` added to its attention score.

Definition (``m = config.pinned``; ``w_j = W_w x_j + b_w`` the write score of token ``j``):

    P(t) = the m positions j < t of largest key (w_j, j)      (ties go to the later token)

Position ``t`` reads slot ``x_j`` for every ``j`` in ``P(t)`` with score bias
``log sigmoid(w_j)``. :func:`reference_sets` states it literally; the parallel form computes
every ``P(t)`` at once with a scan (:func:`running_top`), the streaming form keeps ``P``
as a :class:`lmn.state.PinnedSet` and updates it per token (:meth:`PinnedMemory.add_token`).

The component plugs into :class:`lmn.model.LMNBlock` (``block.pinned``); the attention reads
what it hands over as named records, :class:`PinnedRead` (parallel) and
:class:`PinnedSlots` (one position).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .state import PinnedSet


class PinnedRead(NamedTuple):
    """The pinned memory as the parallel form reads it: position ``t`` of the piece reads the
    pool tokens ``index[:, t] (B, T, m)`` (``-1``: none), each with ``log sigmoid(pool_w)``
    added to its score; the pool is the stream's pinned tokens (projections ``pre_q`` /
    ``pre_v (B, H, m_p, d_head)``, or ``None``) followed by the piece's tokens."""

    index: Tensor
    pool_w: Tensor
    pre_q: Tensor | None
    pre_v: Tensor | None


class PinnedSlots(NamedTuple):
    """The pinned slots of one position: ``q``/``v (B, H, n, d_head)``, ``bias (B, n)``."""

    q: Tensor
    v: Tensor
    bias: Tensor


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


class PinnedMemory(nn.Module):
    """The write score of one layer and the three ways of keeping the top-m set.

    ``project``, where asked for, maps tokens ``(B, n, d)`` to their slot projections
    ``q, v (B, H, n, d_head)`` (the attention's :meth:`~lmn.attention.SingleVectorAttention.project_tokens`).
    """

    def __init__(self, d_model: int, m: int):
        super().__init__()
        self.m = m
        self.write = nn.Linear(d_model, 1)

    def scores(self, x: Tensor) -> Tensor:
        """Write scores ``(B, T)`` of tokens ``x (B, T, d)``."""
        return self.write(x)[..., 0]

    def empty(self, batch_size: int, d_model: int, n_heads: int, d_head: int, device, dtype) -> PinnedSet:
        """The set of a stream at position 0."""
        def zeros(*shape, dt=dtype):
            return torch.zeros(batch_size, *shape, device=device, dtype=dt)

        return PinnedSet(zeros(0, d_model), zeros(0), zeros(0, dt=torch.long), zeros(n_heads, 0, d_head),
                         zeros(n_heads, 0, d_head))

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

    @staticmethod
    def read(pool: Pool) -> PinnedRead:
        """What the piece's positions read, for the parallel attention."""
        return PinnedRead(pool.sets[:, :-1], pool.w, pool.pre_q, pool.pre_v)

    def after(self, pool: Pool, count: int, project) -> PinnedSet:
        """The pinned set after the piece (``count`` tokens in all), as a state's :class:`PinnedSet`."""
        n = min(count, self.m)
        sel = pool.sets[:, -1, :n]  # (B, n), sorted by key
        x = pool.x.gather(1, sel[..., None].expand(-1, -1, pool.x.shape[-1]))
        q, v = project(x)
        return PinnedSet(x, pool.w.gather(1, sel), pool.j.gather(1, sel), q, v)

    def slots_at(self, pool: Pool, row: int, project) -> PinnedSlots:
        """The pinned slots of the pool's set ``row`` (one position)."""
        sel = pool.sets[:, row]
        n = int((sel[0] >= 0).sum())
        sel = sel[:, :n]
        x = pool.x.gather(1, sel[..., None].expand(-1, -1, pool.x.shape[-1]))
        q, v = project(x)
        return PinnedSlots(q, v, F.logsigmoid(pool.w.gather(1, sel)))

    # ---------------------------------------------------------------- streaming form
    @staticmethod
    def slots(pin: PinnedSet) -> PinnedSlots:
        """The slots a stream's set gives its next position."""
        return PinnedSlots(pin.q, pin.v, F.logsigmoid(pin.w))

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
