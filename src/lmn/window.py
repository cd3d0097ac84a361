"""The local window: besides its tree slots, position ``t`` reads the raw tokens
``t-1 .. t-w`` (those that exist), each as one more slot with score bias zero.

Definition (``w = config.window``): position ``t`` reads slot ``x_j`` for every
``max(0, t - w) <= j < t``, projected like every other slot. The tree summarises the far
past; the window keeps the last ``w`` tokens exact, as Native Sparse Attention keeps a
sliding-window branch beside its compressed one (Yuan et al. 2025, arXiv 2502.11089,
Sec. 3.3.3) and log-linear attention keeps its finest buckets exact (Guo et al. 2025,
arXiv 2506.04761). The streaming state holds the last ``w`` tokens per layer (their
vectors and projections), so a model's state is O(w + log n).

It is a memory mechanism (:mod:`lmn.mechanisms`), built when ``config.window > 0``
(``block.window``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .mechanisms import ExtraSlots, Mechanism, PieceRead, Slots, register_mechanism


@dataclass
class WindowState:
    """The window of one layer after ``pos`` tokens: the last ``min(pos, w)`` tokens in
    position order, ``x (B, n, d)``, and their projections ``q``/``v (B, H, n, d_head)``."""

    x: Tensor
    q: Tensor
    v: Tensor


class WindowMemory(Mechanism):
    """The last ``w`` raw tokens as slots (see the module docstring). No parameters."""

    name = "window"
    state_class = WindowState

    def __init__(self, d_model: int, w: int, n_heads: int):
        super().__init__()
        self.d_model, self.w, self.n_heads = d_model, w, n_heads

    @classmethod
    def enabled(cls, config) -> bool:
        return config.window > 0

    @classmethod
    def build(cls, config) -> "WindowMemory":
        return cls(config.d_model, config.window, config.n_heads)

    @classmethod
    def describe(cls, config) -> str:
        return f"the local window (this model has window = {config.window})"

    @classmethod
    def state_nbytes(cls, config, batch_size: int, pos: int, element_size: int) -> int:
        # per token x, q and v (d each)
        return config.n_layers * batch_size * min(pos, config.window) * 3 * config.d_model * element_size

    def empty(self, batch_size: int, device, dtype) -> WindowState:
        d_head = self.d_model // self.n_heads
        z = torch.zeros(batch_size, self.n_heads, 0, d_head, device=device, dtype=dtype)
        return WindowState(torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype), z, z.clone())

    # ---------------------------------------------------------------- the parallel form and prefill
    def read_piece(self, x: Tensor, state, pos: int, project, return_state: bool) -> PieceRead:
        B, C, _ = x.shape
        w = self.w
        q_x, v_x = project(x)  # (B, H, C, dh)
        if state is not None and state.x.shape[1]:
            xs, q, v = torch.cat([state.x, x], 1), torch.cat([state.q, q_x], 2), torch.cat([state.v, v_x], 2)
        else:
            xs, q, v = x, q_x, v_x
        n_prev = xs.shape[1] - C
        # slot r of piece position i is token n_prev + i - w + r of (stream tail + piece):
        # pad w in front, then windows of w over the padded axis
        pad = lambda t: F.pad(t, (0, 0, w, 0))[:, :, n_prev : n_prev + C + w - 1]  # noqa: E731
        pq = pad(q).unfold(2, w, 1).permute(0, 1, 4, 3, 2)  # (B, H, C, dh, w) -> (B, H, w, dh, C)
        pv = pad(v).unfold(2, w, 1).permute(0, 1, 4, 3, 2)
        index = n_prev + torch.arange(C, device=x.device)[None, :] - w + torch.arange(w, device=x.device)[:, None]
        bias = torch.zeros(w, C, device=x.device, dtype=x.dtype).masked_fill(index < 0, float("-inf"))
        slots = ExtraSlots(pq, pv, bias.expand(B, w, C))
        last = None
        if state is not None:  # the piece's last position as a step reads it: the tokens before it
            lo = max(0, xs.shape[1] - 1 - w)
            hi = xs.shape[1] - 1
            last = Slots(q[:, :, lo:hi], v[:, :, lo:hi], x.new_zeros(B, hi - lo))
        after = None
        if return_state:
            keep = min(w, xs.shape[1])
            after = WindowState(xs[:, -keep:].contiguous(), q[:, :, -keep:].contiguous(), v[:, :, -keep:].contiguous())
        return PieceRead(slots, last, after)

    # ---------------------------------------------------------------- the streaming form
    def read_one(self, x: Tensor, state: WindowState, pos: int, project) -> tuple[Slots, WindowState]:
        B = x.shape[0]
        slots = Slots(state.q, state.v, x.new_zeros(B, state.q.shape[2]))
        q_t, v_t = project(x[:, None])
        keep = min(self.w, state.x.shape[1] + 1)
        after = WindowState(torch.cat([state.x, x[:, None]], 1)[:, -keep:], torch.cat([state.q, q_t], 2)[:, :, -keep:],
                            torch.cat([state.v, v_t], 2)[:, :, -keep:])
        return slots, after

    # ---------------------------------------------------------------- plain definition
    def reference_slots(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        lo = max(0, t - self.w)
        return x[:, lo:t], x.new_zeros(x.shape[0], t - lo)

    def reference_state(self, x: Tensor, T: int, project) -> WindowState:
        tail = x[:, max(0, T - self.w) : T]
        q, v = project(tail)
        return WindowState(tail, q, v)


register_mechanism(WindowMemory)
