"""The null (sink) slot: one more slot every position reads, whose value is zero.

Definition: per layer a learned key ``s (d)`` and bias ``b``; at every position ``t`` the
sink's score in head ``h`` is ``<s_h, (W_k x_t)_h> / sqrt(d_head) + b``, its value ``0``.
The mass a position puts on it is read from nothing: a position that finds nothing
relevant in its tree slots can say so instead of averaging them (the role of the attention
sink / "off-by-one" softmax; Xiao et al. 2024, arXiv 2309.17453, Sec. 3; Miller 2023,
"Attention is off by one"). Its score depends on the reading token through ``W_k x_t``, one
learned key per head. It keeps no state.

It is a memory mechanism (:mod:`lmn.mechanisms`), built when ``config.sink`` is true
(``block.sink``). Unlike a mechanism that reads tokens, it gives its slot already projected
(:meth:`Mechanism.reference_read`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .mechanisms import ExtraSlots, Mechanism, PieceRead, Slots, register_mechanism


@dataclass
class SinkState:
    """The sink keeps nothing between tokens."""


class SinkSlot(Mechanism):
    """One zero-valued slot with a learned key and bias (see the module docstring)."""

    name = "sink"
    state_class = SinkState

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.key = nn.Parameter(torch.zeros(d_model))  # plays the slot's W_q side: scored against W_k x_t
        self.bias = nn.Parameter(torch.zeros(()))

    @classmethod
    def enabled(cls, config) -> bool:
        return bool(config.sink)

    @classmethod
    def build(cls, config) -> "SinkSlot":
        return cls(config.d_model, config.n_heads)

    @classmethod
    def describe(cls, config) -> str:
        return "the sink slot (this model has sink = True)"

    @classmethod
    def state_nbytes(cls, config, batch_size: int, pos: int, element_size: int) -> int:
        return 0

    def empty(self, batch_size: int, device, dtype) -> SinkState:
        return SinkState()

    def _slot(self, B: int, dtype) -> tuple[Tensor, Tensor]:
        q = self.key.to(dtype).view(1, self.n_heads, 1, self.d_head).expand(B, -1, -1, -1)
        return q, torch.zeros_like(q)

    def read_piece(self, x: Tensor, state, pos: int, project, return_state: bool) -> PieceRead:
        B, C, _ = x.shape
        q, v = self._slot(B, x.dtype)  # (B, H, 1, dh)
        bias = self.bias.to(x.dtype).expand(B, 1, C)
        slots = ExtraSlots(q[..., None].expand(-1, -1, -1, -1, C), v[..., None].expand(-1, -1, -1, -1, C), bias)
        last = Slots(q, v, self.bias.to(x.dtype).expand(B, 1)) if state is not None else None
        return PieceRead(slots, last, SinkState() if return_state else None)

    def read_one(self, x: Tensor, state, pos: int, project) -> tuple[Slots, SinkState]:
        B = x.shape[0]
        q, v = self._slot(B, x.dtype)
        return Slots(q, v, self.bias.to(x.dtype).expand(B, 1)), SinkState()

    # ---------------------------------------------------------------- plain definition
    def reference_read(self, x: Tensor, t: int, attn) -> tuple[Tensor, Tensor, Tensor]:
        B, d = x.shape[0], x.shape[2]
        return (self.key.view(1, 1, d).expand(B, 1, d), x.new_zeros(B, 1, d), self.bias.view(1, 1).expand(B, 1))

    def reference_slots(self, x: Tensor, t: int):
        raise NotImplementedError("the sink gives its slot projected: see reference_read")

    def reference_state(self, x: Tensor, T: int, project) -> SinkState:
        return SinkState()


register_mechanism(SinkSlot)
