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
fast helpers the model uses, tested against the plain ones in ``tests/core/test_tree.py``.
"""

from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass

import torch
from torch import Tensor
from .validation import check_int



def check_stride(stride) -> None:
    check_int("stride", stride, min=2)


def check_max_level(max_level) -> None:
    check_int("max_level", max_level, min=1, allow_none=True)


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


# ----------------------------------------------------------------------------- read rules
class ReadRule:
    """Which completed nodes a position reads: one component, registered by name.

    A rule states its *plain* definition (:meth:`read_nodes`, :meth:`kept`,
    :meth:`read_counts`: the oracle's view), the *fast helpers* the parallel and streaming
    forms use (slot groups, presence masks, the slot cache's update), and the *plan* the
    native and fused kernels read (:attr:`code`, :meth:`triton_slots`). Nothing outside
    this module asks which rule a model has; it asks the rule. To add one: subclass,
    implement every method, and :func:`register_read_rule` it (``tests/core/test_tree.py``
    checks a rule's fast helpers against its plain definition; the C kernel and the fused
    Triton kernel know the built-in codes only and refuse others).
    """

    name: str = ""
    code: int = -1  # the integer saved states and the C / Triton kernels know the rule by
    keeps_merged: bool = False  # a level keeps its latest node after merging it upwards
    reads_tokens: bool = False  # some positions read earlier tokens (level-0 slots)

    # ---------------------------------------------------------------- plain definition
    def read_nodes(self, t: int, k: int, max_level: int | None) -> list[tuple[int, int]]:
        raise NotImplementedError

    def kept(self, pos: int, k: int, max_level: int | None) -> list[int]:
        raise NotImplementedError

    def read_counts(self, pos: int, k: int, max_level: int | None) -> list[int]:
        raise NotImplementedError

    # ---------------------------------------------------------------- parallel form
    def read_groups(self, k: int, n_local_levels: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def block_length(self, level: int, k: int) -> int:
        raise NotImplementedError

    def block_node(self, q: int, level: int, r: int, k: int) -> int:
        raise NotImplementedError

    def absent(self, u: Tensor, slot_level: Tensor, slot_r: Tensor, k: int) -> Tensor:
        raise NotImplementedError

    def group_entries(self, qv: Tensor, r: int, n_blocks: int, k: int, before) -> Tensor:
        """The entries of slot group ``(level, r)``: ``qv (2, B, H, nb, E, dh, n)`` are the
        projected nodes of the level (time-last), ``before`` the stream's cached ``(q, v)``
        ``(B, H, G, dh)`` of the level before the piece (or ``None``). Returns
        ``(2, B, H, nb*E, dh, n_entries)``: entry ``q`` is the node block ``q`` reads."""
        raise NotImplementedError

    def stream_entries(self, q: Tensor, v: Tensor, per_node: int) -> list[tuple[Tensor, Tensor]]:
        """A level's cached slots ``(B, H, S, dh)`` read by a whole piece, as groups."""
        raise NotImplementedError

    # ---------------------------------------------------------------- streaming form
    def cached_range(self, kept: int, read: int) -> tuple[int, int]:
        """Which of a level's ``kept`` nodes are the ``read`` ones the slot cache holds."""
        raise NotImplementedError

    def cached_slots(self, tree: "Tree", pos: int) -> list[int]:
        """:meth:`Tree.cached_slots` (a rule may answer faster than from its counts)."""
        return [n * tree.node_slots(i) for i, n in enumerate(self.read_counts(pos, tree.stride, tree.max_level))]

    def update_cache(self, tree: "Tree", layer, completed, count: int, before: list[int], project) -> None:
        """Bring ``layer.slot_q``/``slot_v`` from the read set of position ``count - 2`` to
        that of ``count - 1``; ``completed``: the ``(level, node)`` the token completed
        (:meth:`lmn.memory.LogMemory.carry`), ``before``: :meth:`Tree.cached_slots` of
        ``count - 1``, ``project``: nodes ``(B, nb, n, E, d)`` -> q, v ``(B, H, n, G, dh)``."""
        raise NotImplementedError

    def step_read_mask(self, count: Tensor, dig: Tensor, powers: Tensor, level: Tensor, slot: Tensor,
                       n_banks: int) -> Tensor:
        """The fixed layout's read mask of one position (:mod:`lmn.export`): ``(B, Lc, k-1, nb)``
        bool, True where the slot at (level, index, bank) is read; tensors only (no Python
        branch on the position)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the fused kernel's plan
    def triton_slots(self, level: int, r: int, k: int, base: int, n: int, L: int) -> tuple:
        """The eight integers of one slot of group ``(level, r)`` for
        :mod:`lmn.kernels.triton_sva` (its docstring defines them)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<read rule {self.name!r}>"


class LatestRule(ReadRule):
    """``"latest"`` (the paper's): at each level the latest completed node."""

    name, code, keeps_merged, reads_tokens = "latest", 0, True, False

    def read_nodes(self, t, k, max_level):
        u, out, i = t + 1, [], 1
        while k**i <= u and (max_level is None or i <= max_level):
            out.append((i, u // k**i - 1))
            i += 1
        return out

    def kept(self, pos, k, max_level):
        return [max(d, 1) for d in _capped(digits(pos, k), max_level)] if pos else []

    def read_counts(self, pos, k, max_level):
        return _capped([0] + [1] * n_levels(pos, k), max_level) if pos else []

    def read_groups(self, k, n_local_levels):
        return [(i, 0) for i in range(1, n_local_levels + 1)]

    def block_length(self, level, k):
        return k**level

    def block_node(self, q, level, r, k):
        return q - 1

    def absent(self, u, slot_level, slot_r, k):
        lv = slot_level[:, None]
        need = torch.where(lv < 0, 0, k ** lv.clamp(min=0))
        return u[None, :] < need

    def group_entries(self, qv, r, n_blocks, k, before):
        # entry 0: the stream's node before the piece (or nothing), then the level's nodes
        _, B, H, nb, e, dh, n = qv.shape
        padded = qv.new_zeros(2, B, H, nb * e, dh, n + 1)
        padded[..., 1:].unflatten(3, (nb, e)).copy_(qv)
        if before is not None:
            padded[0, ..., 0], padded[1, ..., 0] = before
        return padded

    def stream_entries(self, q, v, per_node):
        return [(q, v)]

    def cached_range(self, kept, read):
        return kept - read, kept

    def cached_slots(self, tree, pos):
        # depends on the number of levels only
        return _level_slots(tree, tree.n_levels(pos)) if pos > 0 else []

    def update_cache(self, tree, layer, completed, count, before, project):
        # each completed level's slot range is overwritten (or appended)
        for level, node in completed[1:]:
            q, v = project(node[:, :, None])  # (B, H, 1, G, dh)
            q, v = q[:, :, 0], v[:, :, 0]  # (B, H, G, dh)
            if level < len(before):
                start = sum(before[:level])
                layer.slot_q[:, :, start : start + q.shape[2]] = q
                layer.slot_v[:, :, start : start + v.shape[2]] = v
            else:  # first node of a new level (count is a power of k): grow the cache
                layer.slot_q = torch.cat([layer.slot_q, q], dim=2)
                layer.slot_v = torch.cat([layer.slot_v, v], dim=2)

    def step_read_mask(self, count, dig, powers, level, slot, n_banks):
        B, Lc = dig.shape
        present = (powers[None, :Lc] <= count[:, None]) & (level >= 1)
        read = present[..., None] & (slot == (dig.clamp(min=1) - 1)[..., None])  # (B, Lc, KC)
        return read[..., None].expand(B, Lc, slot.shape[0], n_banks)

    def triton_slots(self, level, r, k, base, n, L):
        return (base, L, 1, -1, 1, _BIG, k**level - 1, n)  # node u // k**i - 1, present for u >= k**i


class DigitsRule(ReadRule):
    """``"digits"`` (a disjoint cover, as in a Fenwick tree): the unmerged nodes of every level."""

    name, code, keeps_merged, reads_tokens = "digits", 1, False, True

    def read_nodes(self, t, k, max_level):
        u, out = t + 1, []
        for i, d in enumerate(_capped(digits(u, k), max_level)):
            first = (u // k ** (i + 1)) * k
            n = d - 1 if i == 0 else d  # level 0: the token itself is slot 0
            out.extend((i, first + r) for r in range(n))
        return out

    def kept(self, pos, k, max_level):
        return _capped(digits(pos, k), max_level) if pos else []

    def read_counts(self, pos, k, max_level):
        if pos == 0:
            return []
        ds = _capped(digits(pos, k), max_level)
        return [max(ds[0] - 1, 0)] + ds[1:]

    def read_groups(self, k, n_local_levels):
        groups = [(0, r) for r in range(k - 2)]
        return groups + [(i, r) for i in range(1, n_local_levels + 1) for r in range(k - 1)]

    def block_length(self, level, k):
        return k ** (level + 1)

    def block_node(self, q, level, r, k):
        return q * k + r

    def absent(self, u, slot_level, slot_r, k):
        lv = slot_level[:, None]
        digit = (u[None, :] // k ** lv.clamp(min=0)) % k
        thr = torch.where(lv == 0, slot_r[:, None] + 1, slot_r[:, None])
        return (digit <= thr) & (lv >= 0)

    def group_entries(self, qv, r, n_blocks, k, before):
        # block q reads node q*k + r (zeros where no such node: never present)
        n = qv.shape[-1]
        full = qv.new_zeros(*qv.shape[:-1], n_blocks * k)
        full[..., :n] = qv
        picked = full.unflatten(-1, (n_blocks, k))[..., r]  # (2, B, H, nb, E, dh, n_blocks)
        return picked.flatten(3, 4).contiguous()

    def stream_entries(self, q, v, per_node):
        return [(q[:, :, s : s + per_node], v[:, :, s : s + per_node]) for s in range(0, q.shape[2], per_node)]

    def cached_range(self, kept, read):
        return 0, read

    def update_cache(self, tree, layer, completed, count, before, project):
        # the levels below the top of the carry are emptied, the top gains a node
        top, node = completed[-1]
        if tree.max_level is not None and carry_height(count, tree.stride) > tree.max_level:
            # carried past a capped tree's top level: every level it reads is emptied
            keep = sum(before)
            layer.slot_q, layer.slot_v = layer.slot_q[:, :, keep:], layer.slot_v[:, :, keep:]
            return
        if top == 0:
            if (count - 1) % tree.stride == 0:  # the previous token was merged: nothing new to read
                return
            node, top = layer.nodes[0][:, :1, -2], 0  # the previous token joins the level-0 slots
        start = sum(before[:top])
        end = start + (before[top] if top < len(before) else 0)
        q, v = project(node[:, :, None])
        q, v = q.flatten(2, 3), v.flatten(2, 3)
        keep_from = 0 if top == 0 else start
        layer.slot_q = torch.cat([layer.slot_q[:, :, keep_from:end], q, layer.slot_q[:, :, end:]], dim=2)
        layer.slot_v = torch.cat([layer.slot_v[:, :, keep_from:end], v, layer.slot_v[:, :, end:]], dim=2)

    def step_read_mask(self, count, dig, powers, level, slot, n_banks):
        read_lv = slot < torch.where(level == 0, dig - 1, dig)[..., None]
        bank0 = torch.arange(n_banks, device=dig.device) == 0
        return read_lv[..., None] & ((level >= 1)[..., None, None] | bank0)  # level 0: one slot

    def triton_slots(self, level, r, k, base, n, L):
        if level == 0:  # token (u // k) * k + r, present when digit 0 > r + 1
            return (0, L, k, r, 1, k, r + 1, n)
        return (base, L, k, r, k**level, k, r, n)  # node (u // k**(i+1)) * k + r, present when digit i > r


_BIG = 2**30  # the fused kernel's "never" (lmn.kernels.triton_sva, int32): a modulus larger than any position


@functools.lru_cache(maxsize=128)
def _level_slots(tree: "Tree", levels: int) -> list[int]:
    return [0] + [tree.node_slots(i) for i in range(1, levels + 1)]
_READ_RULES: dict[str, ReadRule] = {}


def register_read_rule(rule: ReadRule) -> ReadRule:
    """Make ``rule`` available as ``LMNConfig(read=rule.name)``."""
    if not isinstance(rule, ReadRule) or not rule.name:
        raise TypeError(f"register_read_rule takes a named ReadRule instance, got {rule!r}")
    if rule.name in _READ_RULES:
        raise ValueError(f"a read rule named {rule.name!r} is registered already")
    _READ_RULES[rule.name] = rule
    return rule


def read_rule_names() -> tuple[str, ...]:
    return tuple(_READ_RULES)


def read_rule(name) -> ReadRule:
    """The registered rule called ``name``; a clear error naming the choices otherwise."""
    rule = _READ_RULES.get(name) if isinstance(name, str) else None
    if rule is None:
        raise ValueError(f"read must be one of {read_rule_names()}, got {name!r}")
    return rule


register_read_rule(LatestRule())
register_read_rule(DigitsRule())
READ_RULES = read_rule_names()  # the built-in rules, in code order


def read_nodes(t: int, k: int, read: str, max_level: int | None = None) -> list[tuple[int, int]]:
    """*Plain.* ``(level, index)`` of every node position ``t`` reads besides itself, in
    slot order (levels ascending, then index); only levels ``<= max_level`` if given."""
    return read_rule(read).read_nodes(t, k, max_level)


def kept(pos: int, k: int, read: str, max_level: int | None = None) -> list[int]:
    """Nodes per level ``0 .. n_levels(pos)`` (at most ``max_level``) that the streaming
    state keeps after ``pos`` tokens (the last completed ones of each level); ``[]`` for
    ``pos = 0``."""
    return read_rule(read).kept(pos, k, max_level)


def read_counts(pos: int, k: int, read: str, max_level: int | None = None) -> list[int]:
    """Nodes per level ``0 .. n_levels(pos)`` (at most ``max_level``) read by position
    ``pos - 1`` besides itself (the slots the streaming state caches); ``[]`` for ``pos = 0``."""
    return read_rule(read).read_counts(pos, k, max_level)


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
        object.__setattr__(self, "rule", read_rule(self.read))  # the read rule component
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
        return self.rule.read_nodes(t, self.stride, self.max_level)

    def kept(self, pos: int) -> list[int]:
        return self.rule.kept(pos, self.stride, self.max_level)

    def read_counts(self, pos: int) -> list[int]:
        return self.rule.read_counts(pos, self.stride, self.max_level)

    def cached_ranges(self, pos: int) -> list[tuple[int, int]]:
        """Per level ``0 .. n_levels(pos)``, the range ``(lo, hi)`` of the kept nodes
        (:meth:`kept`) whose slots the state caches: the nodes position ``pos - 1`` read."""
        return [self.rule.cached_range(r, n) for r, n in zip(self.kept(pos), self.read_counts(pos))]

    def cached_slots(self, pos: int) -> list[int]:
        """Slots per level ``0 .. n_levels(pos)`` in the state's slot cache after ``pos``
        tokens (the memory slots position ``pos - 1`` read), in cache order."""
        memo = self.__dict__.get("_slots_at")  # the last position asked: every layer of a step asks it
        if memo is not None and memo[0] == pos:
            return memo[1]
        out = self.rule.cached_slots(self, pos)
        object.__setattr__(self, "_slots_at", (pos, out))
        return out

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
        return self.rule.read_groups(self.stride, n_local_levels)

    def block_length(self, level: int) -> int:
        """Positions (on the ``u = t + 1`` axis) over which one node of ``level`` is read."""
        return self.rule.block_length(level, self.stride)

    def block_node(self, q: int, level: int, r: int) -> int:
        """Index of the level-``level`` node read by block ``q`` of group ``(level, r)``
        (``-1``: the node before the sequence, for ``"latest"``)."""
        return self.rule.block_node(q, level, r, self.stride)

    def absent(self, u: Tensor, slot_level: Tensor, slot_r: Tensor) -> Tensor:
        """``(S, width)`` bool: slot ``s`` (of level ``slot_level[s]``, group index
        ``slot_r[s]``; level ``-1`` is the token itself) is not read at ``u = t + 1``.
        A slot is absent only because of its position, never because of its value."""
        return self.rule.absent(u, slot_level, slot_r, self.stride)

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
