"""The fixed-capacity layout of a streaming state, and its one converter to and from
:class:`lmn.state.LMNState`.

The native step (:mod:`lmn.native`), the exported step (:mod:`lmn.export`) and the CUDA
graph stepper (:mod:`lmn.graphs`) hold a stream's state in tensors whose shape does not
change with the position. Per layer and stream there are three ``(levels + 1, k - 1, C)``
arrays, ``C = n_banks * d_model``:

* ``nodes[i, j]``: position ``j`` of the kept nodes of tree level ``i``
  (:meth:`lmn.tree.Tree.kept`; a token, level 0, is copied into every bank);
* ``slot_q[i, j]``, ``slot_v[i, j]``: the attention's ``W_q``/``W_v`` projections of that
  node, bank ``b`` at ``[b*d, (b+1)*d)`` (a token's projection in bank 0's place only).

Entries the counter does not hold are zero and never read (the read rule masks by
position, not value). Both directions below go through the same walk of the state's
slot cache (:func:`cache_walk`), so the layouts cannot drift apart.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .state import LayerState, LMNState

# (nodes, slot_q, slot_v) of one layer: (B, levels + 1, k - 1, n_banks * d_model) each
LayerViews = tuple[Tensor, Tensor, Tensor]


def cache_walk(tree, pos: int):
    """``(level, index, slots, offset)`` of each kept node whose slots the state's slot cache
    holds after ``pos`` tokens, in cache order."""
    offset = 0
    for i, (lo, hi) in enumerate(tree.cached_ranges(pos)):
        per = tree.node_slots(i)
        for j in range(lo, hi):
            yield i, j, per, offset
            offset += per


@torch.no_grad()
def fill_fixed(state: LMNState, views: list[LayerViews], project: Callable[[int, Tensor], tuple[Tensor, Tensor]]) -> None:
    """Write ``state`` into ``views`` (one triple per layer, zeroed by the caller).

    Cached slots are copied from the state's slot cache; a kept node the cache does not
    hold (one that will be read later, such as the last token for a rule that reads
    tokens) is projected by ``project(layer, vectors (B, r, C)) -> (q, v)``, each
    ``(B, r, C)``."""
    cfg, tree, B, pos = state.config, state.config.tree, state.batch_size, state.pos
    d, C = cfg.d_model, cfg.n_banks * cfg.d_model
    kept = tree.kept(pos)
    ranges = tree.cached_ranges(pos)
    for l, (layer, (nodes, sq, sv)) in enumerate(zip(state.layers, views)):
        for i, r in enumerate(kept):  # (B, nb, r, 1, d) -> (B, r, nb*d)
            if r == 0:
                continue
            vec = layer.nodes[i][:, :, :, 0].transpose(1, 2).reshape(B, r, C).to(nodes.dtype)
            nodes[:, i, :r] = vec
            lo, hi = ranges[i]
            rest = [j for j in range(r) if not lo <= j < hi]
            if rest:
                q, v = project(l, vec[:, rest])
                width = d if i == 0 else C  # a token is one slot, in bank 0's place
                sq[:, i, rest, :width], sv[:, i, rest, :width] = q[..., :width], v[..., :width]
        for i, j, per, off in cache_walk(tree, pos):  # (B, H, per, dh) -> (B, per*d)
            sq[:, i, j, : per * d] = layer.slot_q[:, :, off : off + per].transpose(1, 2).reshape(B, -1)
            sv[:, i, j, : per * d] = layer.slot_v[:, :, off : off + per].transpose(1, 2).reshape(B, -1)


def state_from_fixed(config, batch_size: int, pos: int, views: list[LayerViews]) -> LMNState:
    """The :class:`lmn.state.LMNState` held by ``views`` after ``pos`` tokens (copies)."""
    tree, B = config.tree, batch_size
    H, dh, d, nb = config.n_heads, config.d_head, config.d_model, config.n_banks
    layers = []
    for nodes, sq, sv in views:
        node_list = [nodes[:, i, :r].reshape(B, r, nb, 1, d).transpose(1, 2).contiguous()
                     for i, r in enumerate(tree.kept(pos))]
        qs, vs = [], []
        for i, j, per, _ in cache_walk(tree, pos):
            qs.append(sq[:, i, j, : per * d].reshape(B, per, H, dh))
            vs.append(sv[:, i, j, : per * d].reshape(B, per, H, dh))
        q = torch.cat(qs, dim=1) if qs else sq.new_zeros(B, 0, H, dh)
        v = torch.cat(vs, dim=1) if vs else sv.new_zeros(B, 0, H, dh)
        layers.append(LayerState(node_list, q.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()))
    return LMNState(config, B, pos, layers)
