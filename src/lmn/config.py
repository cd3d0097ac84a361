"""Model configuration for Logarithmic Memory Networks.

Glossary (code name -> paper symbol / meaning):
    d_model    embedding width d
    n_banks    number of independent memory banks (the paper's "multi-memory")
    summarizer the learned function S that maps ``stride`` level i-1 nodes to a level i node
    expand     k of the expander summarizer; level i then holds 1 + i*k vectors per bank
    stride     children per tree node (the paper's binary tree: 2)
    read       which completed nodes a position attends to ("latest" or "digits")

The tree's arithmetic (levels, nodes read, the streaming counter) lives in :mod:`lmn.tree`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

from .summarizers import summarizer_names
from .tree import Tree, check_max_level, check_stride, read_rule
from .validation import MAX_LAYERS, check_choice, check_int

RUNTIME_FIELDS = frozenset({"chunk_size", "dropout"})  # knobs that do not change the (inference) function
POS_ENCODINGS = ("none", "sinusoidal")
LEVEL_GATES = ("none", "bias", "data")  # LMNConfig.level_gate


@contextmanager
def _field_errors():
    """Name the record in the tree's messages: ``stride must ...`` -> ``LMNConfig.stride must ...``."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"LMNConfig.{e}") from None


@dataclass
class LMNConfig:
    """Hyper-parameters of an LMN language model.

    The defaults are the paper's Table 1 model (71,489 parameters).

    Args:
        vocab_size: number of token ids; inputs must lie in ``[0, vocab_size)``.
        d_model: width of the residual stream.
        n_layers: number of LMN blocks (at most ``lmn.validation.MAX_LAYERS``, 10,000).
        n_heads: attention heads of the single-vector attention; must divide ``d_model``.
        n_banks: memory banks per layer (one summarizer each for ``"linear"``).
        summarizer: ``"linear"`` (per-bank Linear(stride*d -> d)), ``"conv"`` (one Conv1d
            with kernel = stride = ``stride`` over all banks' channels), ``"dwsep"``
            (depthwise-separable version of ``"conv"``), ``"residual"`` (the children's mean
            plus a learned per-bank correction, zero at init) or ``"gated"`` (a convex
            combination of the children, its weights a softmax of a learned score of them);
            see :mod:`lmn.summarizers`.
        node_norm: RMS-normalise every merged node (no learned scale), so that a node's
            norm does not shrink or grow with its level.
        expand: k of the expander summarizer (0 disables it).
        ff_mult: hidden width of the feed-forward network is ``ff_mult * d_model``.
        pos_encoding: ``"none"`` (the paper's LMN) or ``"sinusoidal"`` (ablation: added to
            the token embedding).
        norm_eps: epsilon of the RMSNorm/LayerNorm layers; ``None`` uses torch's default
            (machine epsilon of the dtype for RMSNorm, 1e-5 for LayerNorm).
        chunk_size: positions the parallel form attends at once (a power of two; for a
            stride other than 2 the largest power of the stride not above it). A
            memory/speed knob only: results do not depend on it.
        stride: k, the children of every tree node (>= 2; the paper's tree is 2). A level-i
            node summarises ``stride**i`` tokens.
        read: ``"latest"`` (the paper's rule: at each level the latest completed node;
            for ``stride > 2`` parts of the prefix are then read by no slot) or
            ``"digits"`` (every completed node not yet merged into the level above: a
            disjoint cover of the prefix, up to ``stride - 1`` nodes per level). See
            :mod:`lmn.tree`.
        max_level: build and read only tree levels ``1 .. max_level`` (``None``: all, the
            paper's model). A position then reads at most the last ``~stride**(max_level+1)``
            tokens through the tree, and the streaming state has a fixed size. Set it to
            ``floor(log_stride(block_size))`` to keep a model trained on ``block_size``
            windows within the levels it was trained with on longer streams.
        pinned: m, raw token vectors per layer kept in a *pinned memory* beside the tree
            (0: none, the paper's model). A learned write score ``w_j = W_w x_j`` picks,
            causally, the m earlier tokens of highest score (ties: the later token);
            they are read by the same single-vector attention as extra slots, each with
            ``log sigmoid(w_j)`` added to its score (so the write score learns). For
            information the tree's summaries would blur (see :mod:`lmn.memory`).
        window: w, an exact local window beside the tree (0: none): position ``t`` also
            reads the raw tokens ``t-1 .. t-w`` as slots (:mod:`lmn.window`); the streaming
            state grows by those ``w`` tokens per layer, O(w + log n) in all.
        sink: a null slot (:mod:`lmn.sink`): value zero, score ``w_s . x_t + b_s`` per head,
            so a position can put its attention on nothing instead of on a tree slot.
        level_gate: a score bias per tree level (the softmax form of log-linear attention's
            per-level weight, Guo et al. 2025, arXiv 2506.04761): ``"none"`` (the paper),
            ``"bias"`` (a learned bias per level and head) or ``"data"`` (that bias plus
            ``W_l x_t + b_l``, one weight per level computed from the reading token, shared
            by the heads). Entry 0 is the token itself, entry ``i + 1`` tree level ``i``;
            entries from :data:`lmn.attention.GATE_LEVELS` - 1 up are shared.
        dropout: probability of zeroing an element of the token embedding and of each
            residual branch's output (attention, feed-forward) in training mode, as GPT-2's
            ``embd_pdrop``/``resid_pdrop`` (0: none, the paper's model). A training knob: in
            ``eval()`` mode, and so in every inference form, it changes nothing; it may be
            changed after construction (e.g. for fine-tuning).
    """

    vocab_size: int = 65
    d_model: int = 32
    n_layers: int = 4
    n_heads: int = 4
    n_banks: int = 2
    summarizer: str = "linear"
    expand: int = 0
    ff_mult: int = 4
    pos_encoding: str = "none"
    norm_eps: float | None = None
    chunk_size: int = 4096
    stride: int = 2
    read: str = "latest"
    max_level: int | None = None
    pinned: int = 0
    dropout: float = 0.0
    node_norm: bool = False
    window: int = 0
    sink: bool = False
    level_gate: str = "none"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_banks", "ff_mult"):
            check_int(f"LMNConfig.{name}", getattr(self, name), min=1)
        check_int("LMNConfig.n_layers", self.n_layers, min=1, max=MAX_LAYERS)  # deeper is no model (lmn.limits)
        check_int("LMNConfig.expand", self.expand, min=0)
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"LMNConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        check_choice("LMNConfig.summarizer", self.summarizer, summarizer_names())
        check_choice("LMNConfig.pos_encoding", self.pos_encoding, POS_ENCODINGS)
        if (
            isinstance(self.chunk_size, bool)
            or not isinstance(self.chunk_size, int)
            or self.chunk_size < 1
            or self.chunk_size & (self.chunk_size - 1)
        ):
            raise ValueError(f"LMNConfig.chunk_size must be a power of two >= 1, got {self.chunk_size!r}")
        # the tree's own checks (the tree module states what a stride, read rule and level cap may be)
        with _field_errors():
            check_stride(self.stride)
            read_rule(self.read)
            check_max_level(self.max_level)
        check_int("LMNConfig.pinned", self.pinned, min=0)
        check_int("LMNConfig.window", self.window, min=0)
        for name in ("node_norm", "sink"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LMNConfig.{name} must be True or False, got {getattr(self, name)!r}")
        check_choice("LMNConfig.level_gate", self.level_gate, LEVEL_GATES)
        if self.norm_eps is not None and not (
            isinstance(self.norm_eps, (int, float)) and not isinstance(self.norm_eps, bool)
            and 0 < self.norm_eps < math.inf
        ):
            raise ValueError(f"LMNConfig.norm_eps must be a finite number > 0 or None, got {self.norm_eps!r}")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"LMNConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "_tree", Tree.of(self))
        object.__setattr__(self, "_validated", True)

    def __setattr__(self, name: str, value) -> None:
        """After construction only the runtime knobs (``chunk_size``, ``dropout``) may change, and only to
        valid values: the other fields define the model's function and shapes."""
        if not getattr(self, "_validated", False):
            object.__setattr__(self, name, value)
            return
        if name not in RUNTIME_FIELDS:
            raise AttributeError(
                f"LMNConfig.{name} cannot be changed after construction (the model is built from it); "
                f"make a new config, e.g. dataclasses.replace(config, {name}=...)"
            )
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            self.__post_init__()
        except ValueError:
            object.__setattr__(self, name, old)
            raise

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def tree(self) -> Tree:
        """The memory tree (stride, read rule, node shapes): see :mod:`lmn.tree`."""
        return self._tree

    def n_slots(self, t: int) -> int:
        """Number of attended slots at 0-based position ``t`` (slot 0 = the token itself)."""
        return self.tree.n_slots(t)

    def architecture(self) -> dict:
        """The fields that define the function (everything but runtime knobs)."""
        d = asdict(self)
        for name in RUNTIME_FIELDS:
            d.pop(name)
        return d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LMNConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LMNConfig field(s): {', '.join(unknown)}")
        return cls(**data)
