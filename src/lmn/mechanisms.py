"""Memory mechanisms beside the tree: extra slots a position reads, each with a score bias.

A mechanism is one :class:`Mechanism` subclass in its own file and one
:func:`register_mechanism` line (the built-in ones: :mod:`lmn.pinned`, :mod:`lmn.window`, :mod:`lmn.sink`). The block
(:class:`lmn.model.LMNBlock`) makes every mechanism its config enables, hands each the
layer's normalised input, and gives the attention what they return, joined with the tree's
slots; the reference (:mod:`lmn.reference`) reads each mechanism's plain definition; the
streaming state (:class:`lmn.state.LayerState`) keeps each one's state record under its
name. A mechanism states:

* its plain definition: :meth:`Mechanism.reference_slots` (the vectors position ``t``
  reads, projected like every other slot, and their score bias) and
  :meth:`Mechanism.reference_state` (:meth:`Mechanism.reference_read` projects the slots;
  a mechanism whose slots are not tokens gives them projected there);
* its parallel form (a sequence, or a piece continuing a stream):
  :meth:`Mechanism.read_piece`;
* its one-token form: :meth:`Mechanism.read_one`;
* its state: a dataclass of tensors (:attr:`Mechanism.state_class`), :meth:`Mechanism.empty`
  and :meth:`Mechanism.state_nbytes`.

The fixed-layout forms (the native C step, the exported step, CUDA graphs) run the tree
only and refuse a model with a mechanism, by name (:func:`refuse`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable, ClassVar, NamedTuple

from torch import Tensor, nn

# project(vectors (B, n, d)) -> q, v (B, H, n, d_head): the attention's slot projections
Project = Callable[[Tensor], "tuple[Tensor, Tensor]"]


class ExtraSlots(NamedTuple):
    """Extra slots of every position of a piece of ``T`` tokens, time-last:
    ``q``/``v (B, H, m, d_head, T)`` and ``bias (B, m, T)`` (``-inf``: no slot there)."""

    q: Tensor
    v: Tensor
    bias: Tensor


class Slots(NamedTuple):
    """Extra slots of one position: ``q``/``v (B, H, n, d_head)``, ``bias (B, n)``."""

    q: Tensor
    v: Tensor
    bias: Tensor


class PieceRead(NamedTuple):
    """What a mechanism gives a piece: ``slots`` for every position; ``last``, the slots of
    the piece's last position in the one-token form (a prefill recomputes that position as a
    step); ``state``, the mechanism's state after the piece (``None`` unless asked)."""

    slots: ExtraSlots
    last: Slots | None
    state: object | None


class Mechanism(nn.Module):
    """A memory read beside the tree (see the module docstring)."""

    name: ClassVar[str] = ""  # the block's attribute, the state's key, the saved state's prefix
    state_class: ClassVar[type] = object  # a dataclass of tensors (integer ones keep their dtype in .to())

    # ---------------------------------------------------------------- registration
    @classmethod
    def enabled(cls, config) -> bool:
        """Whether ``config`` asks for this mechanism."""
        raise NotImplementedError

    @classmethod
    def build(cls, config) -> "Mechanism":
        raise NotImplementedError

    @classmethod
    def describe(cls, config) -> str:
        """A phrase naming the mechanism and its setting, for errors (e.g. "the pinned memory (pinned = 4)")."""
        return f"the {cls.name} memory"

    @classmethod
    def state_nbytes(cls, config, batch_size: int, pos: int, element_size: int) -> int:
        raise NotImplementedError

    # ---------------------------------------------------------------- the three forms
    def empty(self, batch_size: int, device, dtype):
        """The state of new streams."""
        raise NotImplementedError

    def read_piece(self, x: Tensor, state, pos: int, project: Project, return_state: bool) -> PieceRead:
        """``x (B, T, d)``: tokens ``pos .. pos + T - 1`` (normalised); ``state`` after ``pos``
        tokens (``None``: a new stream)."""
        raise NotImplementedError

    def read_one(self, x: Tensor, state, pos: int, project: Project) -> tuple[Slots, object]:
        """``x (B, d)``: token ``pos``. Returns its slots and the state after it."""
        raise NotImplementedError

    # ---------------------------------------------------------------- plain definition
    def reference_slots(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """*Plain.* The vectors ``(B, n, d)`` position ``t`` of ``x (B, T, d)`` reads and
        their score bias ``(B, n)``."""
        raise NotImplementedError

    def reference_state(self, x: Tensor, T: int, project: Project):
        """*Plain.* The state after the ``T`` tokens of ``x``."""
        raise NotImplementedError

    def reference_read(self, x: Tensor, t: int, attn) -> tuple[Tensor, Tensor, Tensor]:
        """*Plain.* What position ``t`` reads, projected: ``q``/``v (B, n, d)`` and the score
        bias ``(B, n)``. By default :meth:`reference_slots` through the attention's ``W_q``
        and ``W_v`` (a mechanism whose slots are not projected tokens overrides this)."""
        vectors, bias = self.reference_slots(x, t)
        return attn.q(vectors), attn.v(vectors), bias


def state_tensors(record) -> dict[str, Tensor]:
    """The named tensors of a mechanism's state record."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


_MECHANISMS: dict[str, type[Mechanism]] = {}


def register_mechanism(cls: type[Mechanism]) -> type[Mechanism]:
    """Make ``cls`` part of every block whose config enables it (``cls.enabled(config)``)."""
    if not isinstance(cls, type) or not issubclass(cls, Mechanism) or not cls.name:
        raise TypeError(f"register_mechanism takes a named Mechanism subclass, got {cls!r}")
    if cls.name in _MECHANISMS:
        raise ValueError(f"a memory mechanism named {cls.name!r} is registered already")
    _MECHANISMS[cls.name] = cls
    return cls


def mechanism_names() -> tuple[str, ...]:
    return tuple(_MECHANISMS)


def mechanisms_for(config) -> list[type[Mechanism]]:
    """The registered mechanisms ``config`` enables, in registration order."""
    return [cls for cls in _MECHANISMS.values() if cls.enabled(config)]


def refuse(config, what: str, instead: str) -> None:
    """A clear error when ``config`` enables a mechanism the form ``what`` does not run (the
    fixed-layout forms run the tree's plain read only: no mechanism, no per-level score bias)."""
    for cls in mechanisms_for(config):
        raise ValueError(f"{what} does not run {cls.describe(config)}; {instead}")
    if getattr(config, "level_gate", "none") != "none":
        raise ValueError(f"{what} does not run the per-level score bias (this model has level_gate = "
                         f"{config.level_gate!r}); {instead}")


from . import pinned as _pinned  # noqa: E402,F401  (register the built-in mechanisms, in this order)
from . import window as _window  # noqa: E402,F401
from . import sink as _sink  # noqa: E402,F401
