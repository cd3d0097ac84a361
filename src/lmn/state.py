"""The streaming state of an LMN: a base-k counter of tree nodes per layer.

After ``pos`` tokens a layer holds (see :mod:`lmn.tree` for which nodes and why)

* ``nodes[i]`` for levels ``i = 0 .. floor(log_k pos)``: the last ``r_i`` completed nodes
  of the level (:func:`lmn.tree.kept`), ``(B, n_banks, r_i, 1 + i*expand, d)`` (level 0:
  tokens, copied into every bank). For the paper's tree (stride 2, ``read="latest"``)
  that is the latest node of every level;
* ``slot_q``/``slot_v``: the attention's projections of the memory slots that position
  ``pos - 1`` read, ``(B, H, S, d_head)`` (levels ascending, then nodes oldest first, then
  bank-major), so that reading the memory never re-projects a node.

Its size is therefore O(log pos) (see :func:`state_nbytes`). The state carries its own
position; ``LMN.step`` updates it in place and returns it (``clone()`` to branch).
Saving uses plain tensors only (``torch.save``/``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .atomic import atomic_write
from .config import LMNConfig
from .mechanisms import mechanism_names, mechanisms_for, state_tensors
from .tree import read_rule


def state_nbytes(config: LMNConfig, batch_size: int, pos: int, element_size: int = 4) -> int:
    """Exact size in bytes of the tensors of a state after ``pos`` tokens
    (:meth:`lmn.tree.Tree.state_nbytes`)."""
    tree = config.tree.state_nbytes(config.d_model, config.n_layers, batch_size, pos, element_size)
    return tree + sum(m.state_nbytes(config, batch_size, pos, element_size) for m in mechanisms_for(config))


@dataclass
class LayerState:
    """One layer's state: the tree's kept ``nodes``, the slot cache ``slot_q``/``slot_v``, and
    ``extra``, the state record of each memory mechanism by name (:mod:`lmn.mechanisms`),
    also readable as an attribute (``layer.pinned``; ``None`` when the model has none)."""

    nodes: list[Tensor] = field(default_factory=list)
    slot_q: Tensor | None = None
    slot_v: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        if name in mechanism_names():
            return self.__dict__.get("extra", {}).get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_SHAPE_NAMES = "n_layers, n_banks, d_model, n_heads, expand, stride, read, pinned"


def _shape(c: LMNConfig) -> list[int]:
    """The config fields a state's tensors depend on, as integers (read: its index)."""
    return [c.n_layers, c.n_banks, c.d_model, c.n_heads, c.expand, c.stride, read_rule(c.read).code, c.pinned]


class LMNState:
    """Streaming state of a whole model (see module docstring)."""

    _VERSION = 2

    def __init__(self, config: LMNConfig, batch_size: int, pos: int, layers: list[LayerState]):
        self.config = config
        self.batch_size = batch_size
        self.pos = pos
        self.layers = layers

    # ------------------------------------------------------------------ inspection
    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for l, layer in enumerate(self.layers):
            for i, node in enumerate(layer.nodes):
                out[f"layers.{l}.nodes.{i}"] = node
            out[f"layers.{l}.slot_q"] = layer.slot_q
            out[f"layers.{l}.slot_v"] = layer.slot_v
            for mech, record in layer.extra.items():
                for name, t in state_tensors(record).items():
                    out[f"layers.{l}.{mech}.{name}"] = t
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors (grows as O(log pos))."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def n_levels(self) -> int:
        return self.config.tree.n_levels(self.pos)

    @property
    def device(self) -> torch.device:
        return self.layers[0].slot_q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].slot_q.dtype

    def __repr__(self) -> str:
        return (
            f"LMNState(batch_size={self.batch_size}, pos={self.pos}, levels={self.n_levels}, "
            f"nbytes={self.nbytes}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ copies / moves
    def _map(self, fn, fn_int=None, batch_size: int | None = None) -> "LMNState":
        fn_int = fn if fn_int is None else fn_int
        layers = []
        for layer in self.layers:
            extra = {name: type(rec)(**{f: (fn(t) if t.is_floating_point() else fn_int(t))
                                        for f, t in state_tensors(rec).items()})
                     for name, rec in layer.extra.items()}
            layers.append(LayerState([fn(n) for n in layer.nodes], fn(layer.slot_q), fn(layer.slot_v), extra))
        return LMNState(self.config, batch_size or self.batch_size, self.pos, layers)

    def to(self, *args, **kwargs) -> "LMNState":
        """Move/cast like ``Tensor.to`` (returns a new state; positions stay int64)."""
        device = torch.empty(0).to(*args, **kwargs).device
        return self._map(lambda t: t.to(*args, **kwargs), lambda t: t.to(device))

    def select(self, rows: Tensor) -> "LMNState":
        """The streams ``rows`` (int64 indices, e.g. a beam search's reorder) as a new state."""
        return self._map(lambda t: t.index_select(0, rows), batch_size=int(rows.numel()))

    def clone(self) -> "LMNState":
        return self._map(lambda t: t.clone())

    def detach(self) -> "LMNState":
        """The same state cut from the autograd graph (truncated backpropagation: the next
        window continues from it without differentiating into the previous one)."""
        return self._map(lambda t: t.detach())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        d = {k: v.detach() for k, v in self.tensors().items()}
        c = self.config
        d["meta"] = torch.tensor([self._VERSION, self.pos, self.batch_size, *_shape(c)], dtype=torch.int64)
        # the whole architecture, so that a state of another model is refused by name
        arch = json.dumps(c.architecture(), sort_keys=True).encode()
        d["architecture"] = torch.tensor(list(arch), dtype=torch.uint8)
        return d

    @classmethod
    def from_state_dict(cls, config: LMNConfig, data: dict[str, Tensor]) -> "LMNState":
        if "meta" not in data:
            raise ValueError("not an LMN state: the 'meta' entry is missing")
        meta = data["meta"].tolist()
        version, pos, batch_size, *shape = meta
        if version != cls._VERSION:
            raise ValueError(f"unsupported LMN state version {version} (expected {cls._VERSION})")
        if "architecture" in data:
            saved = json.loads(bytes(data["architecture"].tolist()).decode())
            mine = config.architecture()
            diff = [f"{k}={saved.get(k)!r} (this model: {mine.get(k)!r})" for k in sorted(set(saved) | set(mine))
                    if saved.get(k) != mine.get(k)]
            if diff:
                raise ValueError(f"state was saved for another model: {', '.join(diff)}")
        want = _shape(config)
        if shape != want:
            raise ValueError(f"state was saved for a model with ({_SHAPE_NAMES}) = {shape}, this model has {want}")
        layers = []
        n_node_levels = len(config.tree.kept(pos))
        for l in range(config.n_layers):
            nodes = [data[f"layers.{l}.nodes.{i}"] for i in range(n_node_levels)]
            extra = {m.name: m.state_class(**{f.name: data[f"layers.{l}.{m.name}.{f.name}"]
                                              for f in dataclasses.fields(m.state_class)})
                     for m in mechanisms_for(config)}
            layers.append(LayerState(nodes, data[f"layers.{l}.slot_q"], data[f"layers.{l}.slot_v"], extra))
        state = cls(config, batch_size, pos, layers)
        expected = state_nbytes(config, batch_size, pos, state.layers[0].slot_q.element_size())
        if state.nbytes != expected:
            raise ValueError(f"corrupt LMN state: {state.nbytes} bytes of tensors, expected {expected}")
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Write the state (tensors only) atomically to ``path``: a temporary file beside it,
        then one rename (:func:`lmn.atomic.atomic_write`); on any failure the temporary
        file is removed and ``path`` is left as it was."""
        with atomic_write(path, "wb") as f:
            torch.save(self.state_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike, config: LMNConfig, map_location=None) -> "LMNState":
        """Read a state written by :meth:`save` (no pickle code execution)."""
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception:  # truncated or foreign file (torch's advice to unpickle it is never right here)
            raise ValueError(
                f"could not read an LMN state from {os.fspath(path)!r}: not a file written by LMNState.save "
                "(truncated, or another format)"
            ) from None
        try:
            return cls.from_state_dict(config, data)
        except KeyError as exc:
            raise ValueError(f"corrupt LMN state in {os.fspath(path)!r}: missing {exc}") from exc
