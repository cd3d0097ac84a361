"""The tree of an LMN's logarithmic memory: its definition and all of its arithmetic.

Every other module (memory, attention, state, model, reference, native step, benchmarks)
asks this one which nodes exist, which a position reads, which a token completes and
what the streaming state keeps. Glossary (0-based positions ``t``, ``u = t + 1`` tokens
seen, stride ``k``, levels ``i``):

* **Nodes.** Level 0 node ``j`` is token ``j``. Level ``i >= 1`` node ``j`` summarises the
  tokens ``j*k**i .. (j+1)*k**i - 1``: the summarizer maps its ``k`` children, level
  ``i-1`` nodes ``k*j .. k*j + k - 1``, to it. A node is *completed* once its last token
  has been seen. The paper's tree is ``k = 2``.
* **Read rule** (which completed nodes position ``t`` attends to, besides itself):

  - ``"latest"`` (the paper's rule, generalised): at each level ``i = 1 .. floor(log_k u)``
    the latest completed node, ``j = u // k**i - 1``. One node per level. For ``k > 2``
    some of the prefix is covered by no node that is read (e.g. with ``k = 3`` position
    ``t = 4`` reads token 4 and the level-1 node of tokens 0..2, never token 3).
  - ``"digits"`` (a disjoint cover, as in a Fenwick tree): write ``u = sum_i d_i k**i`` in
    base ``k``. At each level ``i >= 1`` position ``t`` reads the ``d_i`` completed level-i
    nodes not yet merged into a level ``i+1`` node, ``(u // k**(i+1)) * k + r`` for
    ``r < d_i``; at level 0 the ``d_0 - 1`` unmerged tokens before ``t``. Every token
    before ``t`` is then covered by exactly one slot, with at most
    ``(k-1) * floor(log_k u) + k - 2`` nodes read. For ``k = 2`` the level-0 part is
    empty and the rule reads level ``i`` exactly when bit ``i`` of ``u`` is set.

* **Slots.** A level ``i >= 1`` node is ``n_banks`` sets of ``1 + i*expand`` vectors, so
  it gives ``n_banks * (1 + i*expand)`` attention slots; a level-0 node (a token) gives
  one. Slot 0 of every position is the token itself.
* **Streaming state: a base-k counter.** After ``pos`` tokens each level ``i`` keeps the
  last ``r_i`` completed level-i nodes (see :func:`kept`): its pending siblings (``d_i``
  of them) and, for ``"latest"``, the latest node even when it has just been merged
  (``r_i = max(d_i, 1)`` once the level exists). Token ``count`` completes
  ``carry_height(count)`` levels: at each, the ``k - 1`` pending siblings and the node
  completed just now are merged into a node of the level above (:func:`carry_height`).
* **A cap on the levels** (``max_level``, optional): only levels ``1 .. max_level`` are
  built and read (by either rule, restricted to those levels), so a position sees at most
  the last ``~k**(max_level+1)`` tokens through the tree and the streaming state has a
  fixed size however long the stream. A model trained on windows of ``T`` tokens has only
  ever seen levels up to ``floor(log_k T)``; capping there keeps a longer stream inside
  what it was trained on (``docs/results/probes/context.md``).
* **Prefill pieces.** A stream at position ``pos`` continues in parallel with a piece of
  ``C`` tokens when ``pos`` is a multiple of ``k**p``, ``p`` the smallest with
  ``C <= k**p`` (:func:`piece_lengths`): the piece's own tree is then aligned with the
  stream's.

The functions below marked *plain* state the definition directly; the others are the
fast helpers the model uses, tested against the plain ones in ``tests/test_tree.py``.
"""

from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass

import torch
from torch import Tensor

READ_RULES = ("latest", "digits")


def check_stride(stride) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2:
        raise ValueError(f"stride must be an integer >= 2, got {stride!r}")


def check_max_level(max_level) -> None:
    if max_level is not None and (isinstance(max_level, bool) or not isinstance(max_level, int) or max_level < 1):
        raise ValueError(f"max_level must be None or an integer >= 1, got {max_level!r}")


# ----------------------------------------------------------------------------- counting
def digits(n: int, k: int) -> list[int]:
    """Base-``k`` digits of ``n >= 0``, least significant first (``[]`` for 0)."""
    out = []
    while n:
        n, d = divmod(n, k)
        out.append(d)
    return out


def n_levels(pos: int, k: int) -> int:
    """Levels ``>= 1`` present after ``pos`` tokens: the largest ``m`` with ``k**m <= pos``."""
    m, p = 0, k
    while p <= pos:
        m, p = m + 1, p * k
    return m


def carry_height(count: int, k: int) -> int:
    """Levels completed by the ``count``-th token (1-based): the trailing zero base-k
    digits of ``count``. Token ``count`` completes a node at every level ``1 .. height``."""
    h = 0
    while count % k == 0:
        count //= k
        h += 1
    return h


def largest_aligned_power(pos: int, k: int) -> int:
    """The largest power of ``k`` dividing ``pos > 0`` (``pos & -pos`` for ``k = 2``)."""
    p = 1
    while pos % (p * k) == 0:
        p *= k
    return p


def ceil_log(n: int, k: int) -> int:
    """The smallest ``p >= 0`` with ``n <= k**p``."""
    p, size = 0, 1
    while size < n:
        p, size = p + 1, size * k
    return p


def piece_lengths(pos: int, T: int, k: int, max_chunk: int | None = None) -> list[int]:
    """Lengths of the aligned pieces that continue a stream at ``pos`` with ``T`` tokens:
    each piece is at most the largest power of ``k`` dividing the position it starts at
    (any length from position 0) and at most ``max_chunk``."""
    out = []
    while T > 0:
        n = T if pos == 0 else min(T, largest_aligned_power(pos, k))
        if max_chunk is not None:
            n = min(n, max_chunk)
        out.append(n)
        pos, T = pos + n, T - n
    return out


def _capped(values: list, max_level: int | None) -> list:
    return values if max_level is None else values[: max_level + 1]


def read_nodes(t: int, k: int, read: str, max_level: int | None = None) -> list[tuple[int, int]]:
    """*Plain.* ``(level, index)`` of every node position ``t`` reads besides itself, in
    slot order (levels ascending, then index); only levels ``<= max_level`` if given."""
    u = t + 1
    out = []
    if read == "latest":
        i = 1
        while k**i <= u and (max_level is None or i <= max_level):
            out.append((i, u // k**i - 1))
            i += 1
        return out
    for i, d in enumerate(_capped(digits(u, k), max_level)):
        first = (u // k ** (i + 1)) * k
        n = d - 1 if i == 0 else d  # level 0: the token itself is slot 0
        out.extend((i, first + r) for r in range(n))
    return out


def kept(pos: int, k: int, read: str, max_level: int | None = None) -> list[int]:
    """Nodes per level ``0 .. n_levels(pos)`` (at most ``max_level``) that the streaming
    state keeps after ``pos`` tokens (the last completed ones of each level); ``[]`` for
    ``pos = 0``."""
    if pos == 0:
        return []
    ds = _capped(digits(pos, k), max_level)
    if read == "digits":
        return ds
    return [max(d, 1) for d in ds]


def read_counts(pos: int, k: int, read: str, max_level: int | None = None) -> list[int]:
    """Nodes per level ``0 .. n_levels(pos)`` (at most ``max_level``) read by position
    ``pos - 1`` besides itself (the slots the streaming state caches); ``[]`` for ``pos = 0``."""
    if pos == 0:
        return []
    if read == "latest":
        return _capped([0] + [1] * n_levels(pos, k), max_level)
    ds = _capped(digits(pos, k), max_level)
    return [max(ds[0] - 1, 0)] + ds[1:]


# ----------------------------------------------------------------------------- the tree of a model
@dataclass(frozen=True)
class Tree:
    """The tree of one model: stride, read rule and the shape of its nodes."""

    stride: int = 2
    read: str = "latest"
    n_banks: int = 1
    expand: int = 0
    max_level: int | None = None

    def __post_init__(self) -> None:
        check_stride(self.stride)
        if self.read not in READ_RULES:
            raise ValueError(f"read must be one of {READ_RULES}, got {self.read!r}")
        check_max_level(self.max_level)

    @classmethod
    def of(cls, config) -> "Tree":
        return cls(config.stride, config.read, config.n_banks, config.expand, config.max_level)

    # ---------------------------------------------------------------- sizes
    def set_size(self, level: int) -> int:
        """Vectors per bank of a level-``level`` node (``1 + level*expand``)."""
        return 1 + level * self.expand

    def node_slots(self, level: int) -> int:
        """Attention slots one node of ``level`` gives (a token gives one)."""
        return 1 if level == 0 else self.n_banks * self.set_size(level)

    def node_vectors(self, level: int) -> int:
        """Vectors of ``d`` numbers one node of ``level`` holds in the state (every bank
        keeps its own copy of a level-0 token)."""
        return self.n_banks * self.set_size(level)

    def n_levels(self, pos: int) -> int:
        """Levels ``>= 1`` the state holds after ``pos`` tokens (at most ``max_level``)."""
        return self.n_levels_in(pos)

    def n_levels_in(self, T: int) -> int:
        """Levels built for a sequence of ``T`` tokens: those with at least one node, up
        to ``max_level``."""
        m = n_levels(T, self.stride)
        return m if self.max_level is None else min(m, self.max_level)

    def n_slots(self, t: int) -> int:
        """Slots position ``t`` attends over, the token itself included."""
        return 1 + sum(self.node_slots(i) for i, _ in self.read_nodes(t))

    def read_nodes(self, t: int) -> list[tuple[int, int]]:
        return read_nodes(t, self.stride, self.read, self.max_level)

    def max_slots(self, T: int) -> int:
        """The most slots any position of a length-``T`` sequence attends over."""
        return max(self.n_slots(t) for t in range(T)) if self.read == "digits" else self.n_slots(T - 1)

    def kept(self, pos: int) -> list[int]:
        return kept(pos, self.stride, self.read, self.max_level)

    def read_counts(self, pos: int) -> list[int]:
        return read_counts(pos, self.stride, self.read, self.max_level)

    def cached_ranges(self, pos: int) -> list[tuple[int, int]]:
        """Per level ``0 .. n_levels(pos)``, the range ``(lo, hi)`` of the kept nodes
        (:meth:`kept`) whose slots the state caches: the nodes position ``pos - 1`` read."""
        out = []
        for i, (r, n) in enumerate(zip(self.kept(pos), self.read_counts(pos))):
            out.append((r - n, r) if self.read == "latest" else (0, n))
        return out

    def cached_slots(self, pos: int) -> list[int]:
        """Slots per level ``0 .. n_levels(pos)`` in the state's slot cache after ``pos``
        tokens (the memory slots position ``pos - 1`` read), in cache order."""
        if self.read == "latest" and pos > 0:  # depends on the number of levels only
            return self._latest_slots(self.n_levels(pos))
        return [n * self.node_slots(i) for i, n in enumerate(self.read_counts(pos))]

    @functools.lru_cache(maxsize=128)
    def _latest_slots(self, levels: int) -> list[int]:
        return [0] + [self.node_slots(i) for i in range(1, levels + 1)]

    def state_vectors(self, pos: int) -> tuple[int, int]:
        """``(node vectors, cached slots)`` of one layer of one stream after ``pos`` tokens."""
        nodes = sum(n * self.node_vectors(i) for i, n in enumerate(self.kept(pos)))
        return nodes, sum(self.cached_slots(pos))

    def state_nbytes(self, d_model: int, n_layers: int, batch_size: int, pos: int, element_size: int = 4) -> int:
        """Exact bytes of the streaming state's tensors after ``pos`` tokens: per layer the
        kept nodes and the q/v projections of the cached slots, ``d_model`` numbers each."""
        nodes, slots = self.state_vectors(pos)
        return n_layers * batch_size * (nodes + 2 * slots) * d_model * element_size

    # ---------------------------------------------------------------- the parallel form
    def read_groups(self, n_local_levels: int) -> list[tuple[int, int]]:
        """The groups of slots the parallel form attends over in a sequence whose tree has
        ``n_local_levels`` levels: ``(level, r)``. Group ``(i, r)`` reads one node per
        aligned block of :meth:`block_length` positions on the ``u`` axis; block ``q``
        reads node :meth:`block_node` ``(q, ...)``. ``"latest"``: one group per level
        (``r = 0``); ``"digits"``: ``k - 1`` groups per level >= 1 and ``k - 2`` of tokens."""
        k = self.stride
        if self.read == "latest":
            return [(i, 0) for i in range(1, n_local_levels + 1)]
        groups = [(0, r) for r in range(k - 2)]
        return groups + [(i, r) for i in range(1, n_local_levels + 1) for r in range(k - 1)]

    def block_length(self, level: int) -> int:
        """Positions (on the ``u = t + 1`` axis) over which one node of ``level`` is read."""
        return self.stride**level if self.read == "latest" else self.stride ** (level + 1)

    def block_node(self, q: int, level: int, r: int) -> int:
        """Index of the level-``level`` node read by block ``q`` of group ``(level, r)``
        (``-1``: the node before the sequence, for ``"latest"``)."""
        return q - 1 if self.read == "latest" else q * self.stride + r

    def absent(self, u: Tensor, slot_level: Tensor, slot_r: Tensor) -> Tensor:
        """``(S, width)`` bool: slot ``s`` (of level ``slot_level[s]``, group index
        ``slot_r[s]``; level ``-1`` is the token itself) is not read at ``u = t + 1``.
        A slot is absent only because of its position, never because of its value."""
        k = self.stride
        lv = slot_level[:, None]
        if self.read == "latest":
            need = torch.where(lv < 0, 0, k ** lv.clamp(min=0))
            return u[None, :] < need
        digit = (u[None, :] // k ** lv.clamp(min=0)) % k
        thr = torch.where(lv == 0, slot_r[:, None] + 1, slot_r[:, None])
        return (digit <= thr) & (lv >= 0)

    def chunk(self, chunk_size: int) -> int:
        """The parallel form's chunk for a requested ``chunk_size``: the largest power of
        the stride not above it, so that every block of every level either lies inside
        one chunk or covers whole chunks."""
        c = 1
        while c * self.stride <= chunk_size:
            c *= self.stride
        return c


class Counter:
    """The base-``k`` counter of a stream, kept incrementally for native code: its plan
    ``[top, L, d_0, d_1, ..., d_capacity]`` (an ``array('q')`` whose buffer the C step
    reads) holds, after :meth:`increment`, the carry height of the token just counted, the
    levels present and the base-k digits of the count (:func:`carry_height`,
    :func:`n_levels`, :func:`digits`). With ``wrap=True`` (a tree capped at
    ``capacity = max_level``) the digits above the capacity are dropped: ``top`` is then
    ``capacity + 1`` when the count carries past the top level, and ``L`` stays at the
    capacity once reached."""

    def __init__(self, stride: int, capacity: int, wrap: bool = False):
        check_stride(stride)
        self.stride, self.capacity, self.wrap = stride, capacity, wrap
        self.plan = array("q", [0] * (capacity + 3))
        self.count = 0

    def set(self, count: int) -> None:
        """Jump to ``count`` tokens (its carry height included)."""
        ds = digits(count, self.stride)
        if len(ds) > self.capacity + 1:
            if not self.wrap:
                raise ValueError(f"{count} tokens exceed the counter's capacity of {self.capacity} levels")
            ds = ds[: self.capacity + 1]
        self.plan[0] = min(carry_height(count, self.stride), self.capacity + 1) if count else 0
        self.plan[1] = max(len(ds) - 1, 0) if not self.wrap or count < self.stride ** (self.capacity + 1) \
            else self.capacity
        for i in range(self.capacity + 1):
            self.plan[2 + i] = ds[i] if i < len(ds) else 0
        self.count = count

    def increment(self) -> None:
        """Count one more token: add one to the digits, carrying (the counter's only arithmetic)."""
        plan, k, i = self.plan, self.stride, 2
        if plan[2] < k - 1:  # no carry (most steps): the lowest digit goes up
            plan[2] += 1
            plan[0] = 0
            self.count += 1
            return
        while i < len(plan) and plan[i] == k - 1:
            i += 1
        if i == len(plan) and not self.wrap:
            raise ValueError(f"the stream exceeds the counter's capacity of {self.capacity} levels")
        for j in range(2, i):
            plan[j] = 0
        if i < len(plan):
            plan[i] += 1
        plan[0] = i - 2
        if i - 2 > plan[1]:
            plan[1] = min(i - 2, self.capacity)
        self.count += 1
