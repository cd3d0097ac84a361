"""LMN's parallel form the obvious way: gather every position's slots into one tensor.

Position t attends over itself and the nodes the read rule picks (:mod:`lmn.tree`): for
the paper's tree, at each level ``i = 1 .. floor(log2(t+1))`` node ``j = (t+1) // 2**i - 1``
of every bank. Here those slots are gathered into

    slots: (B, T, S, d)        S = 1 + the slots of every read group of the sequence's tree

(slots a position does not read are masked), projected by W_q and W_v *per position*,
and attended. That is O(T * log T * d) memory and O(T * log T * d^2) work per layer, held
for the backward pass -- exactly what :class:`lmn.attention.SingleVectorAttention` avoids
by projecting each node once and broadcasting it over the block of positions that reads
it. The benchmark trains both to show the difference; the test checks they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmn.model import LMN, sinusoidal_encoding
from lmn.documents import check_doc_starts, run_documents
from lmn.mechanisms import refuse
from lmn.tree import Tree


def gather_slots(x: Tensor, levels: list[Tensor], tree: Tree | None = None) -> tuple[Tensor, Tensor]:
    """Every position's slots, materialised.

    Args:
        x: ``(B, T, d)`` normalised layer input (slot 0 of position t is ``x[:, t]``).
        levels: ``[N_1, ..., N_L]``, ``N_i: (B, n_banks, T // k**i, E_i, d)`` from
            :meth:`lmn.memory.LogMemory.build`.
        tree: the model's tree (default: the paper's, stride 2, ``read="latest"``).
    Returns:
        ``slots (B, T, S, d)`` and ``present (T, S)`` (False where position t does not
        read the slot, e.g. for the paper's tree ``t + 1 < 2**i`` at level i).
    """
    B, T, d = x.shape
    tree = tree or Tree(2, "latest", levels[0].shape[1] if levels else 1)
    u = torch.arange(1, T + 1, device=x.device)  # t + 1
    slots = [x[:, :, None]]
    for level, r in tree.read_groups(len(levels)):
        src = x[:, None, :, None, :] if level == 0 else levels[level - 1]  # (B, nb, n, E, d)
        _, nb, n, e, _ = src.shape
        j = tree.block_node(u // tree.block_length(level), level, r)  # node read by position t
        g = src[:, :, j.clamp(0, n - 1)]  # (B, nb, T, E, d); out-of-range ones are absent
        slots.append(g.permute(0, 2, 1, 3, 4).reshape(B, T, nb * e, d))  # bank-major, as the reference
    slot_level, slot_r = slot_specs(tree, levels)
    absent = tree.absent(u, torch.tensor(slot_level, device=x.device), torch.tensor(slot_r, device=x.device))
    return torch.cat(slots, dim=2), ~absent.T


def slot_specs(tree: Tree, levels: list[Tensor]) -> tuple[list[int], list[int]]:
    """Level (-1: the token itself) and group index of every slot :func:`gather_slots` forms."""
    slot_level, slot_r = [-1], [0]
    for level, r in tree.read_groups(len(levels)):
        n = 1 if level == 0 else levels[level - 1].shape[1] * levels[level - 1].shape[3]  # banks x set
        slot_level += [level] * n
        slot_r += [r] * n
    return slot_level, slot_r


def materialized_forward(model: LMN, idx: Tensor, doc_starts: Tensor | None = None) -> Tensor:
    """Logits ``(B, T, vocab)`` of ``model`` on ``idx (B, T)``, slots materialised;
    ``doc_starts``: packed rows (as :meth:`lmn.LMN.forward`), each document run alone."""
    cfg = model.config
    refuse(cfg, "the materialised benchmark form", "use the model's parallel form")
    if doc_starts is not None:
        return run_documents(lambda ids: materialized_forward(model, ids), idx, check_doc_starts(doc_starts, idx))
    B, T = idx.shape
    H, dh = cfg.n_heads, cfg.d_head
    h = F.embedding(idx, model.tok_emb.weight)  # (B, T, d)
    if cfg.pos_encoding == "sinusoidal":
        h = h + sinusoidal_encoding(torch.arange(T, device=idx.device), cfg.d_model, h.dtype)

    for block in model.blocks:
        x = block.norm1(h)
        slots, present = gather_slots(x, block.memory.build(x), cfg.tree)  # (B, T, S, d), (T, S)
        S = slots.shape[2]
        attn = block.attn
        q = attn.q(slots).view(B, T, S, H, dh)  # every slot projected at every position
        v = attn.v(slots).view(B, T, S, H, dh)
        k = attn.k(x).view(B, T, H, dh) * attn.scale
        scores = torch.einsum("btshe,bthe->bths", q, k)  # (B, T, H, S)
        scores = scores.masked_fill(~present[:, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("bths,btshe->bthe", probs, v).reshape(B, T, H * dh)
        h = h + attn.o(out)
        h = h + block.ff(block.norm2(h))
    return model.head(model.ln_f(h))


def slots_count(config, T: int) -> int:
    """S of :func:`gather_slots` for a length-T sequence."""
    tree = config.tree
    return 1 + sum(tree.node_slots(level) for level, _ in tree.read_groups(tree.n_levels_in(T)))
