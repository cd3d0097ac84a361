"""The specification of an LMN forward pass, written as plainly as possible.

This is the oracle every fast path (parallel, streaming, prefill, native) is tested
against. It uses the model's parameters but none of its fast code paths: an explicit loop
over positions, nodes built by the recursive definition (memoised in a dict), the nodes
each position reads listed by :func:`lmn.tree.read_nodes`, every slot projected again at
every position, float32 throughout. It is O(T * slots * d^2) and only meant for tests and
for reading.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import GATE_LEVELS
from .documents import check_doc_starts, last_run
from .model import LMN, sinusoidal_encoding
from .state import LayerState, LMNState
from .tree import kept, read_nodes


def _reference_documents(model: LMN, idx: Tensor, doc_starts: Tensor, return_state: bool):
    """:func:`reference_forward` of packed rows: a loop over rows and their documents."""
    T = idx.shape[1]
    rows = []
    for r in range(idx.shape[0]):
        cols = [0] + [c for c in range(1, T) if bool(doc_starts[r, c])]
        rows.append(torch.cat([reference_forward(model, idx[r : r + 1, s:e])
                               for s, e in zip(cols, cols[1:] + [T])], dim=1))
    logits = torch.cat(rows, dim=0)
    if not return_state:
        return logits
    c = last_run(doc_starts, "reference_forward returning a state").start
    return logits, reference_forward(model, idx[:, c:], return_state=True)[1]


def _rms_norm(x: Tensor, weight: Tensor, eps: float | None) -> Tensor:
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_forward(model: LMN, idx: Tensor, return_state: bool = False, doc_starts: Tensor | None = None):
    """Logits ``(B, T, vocab)`` of ``model`` on ``idx (B, T)`` by the plain definition;
    with ``return_state=True`` also the streaming state after the last token, made by the
    definition of :mod:`lmn.state` (kept nodes and the projected slots of position T-1).

    ``doc_starts`` (``(B, T)`` bool, True where a document starts; column 0 always does):
    packed rows, by definition each document run alone, one after the other; the state is
    that of the rows' last documents, which must then start at the same column."""
    if doc_starts is not None:
        return _reference_documents(model, idx, check_doc_starts(doc_starts, idx), return_state)
    cfg = model.config
    B, T = idx.shape
    H, dh, nb, k = cfg.n_heads, cfg.d_head, cfg.n_banks, cfg.stride

    h = model.tok_emb.weight[idx]  # (B, T, d)
    if cfg.pos_encoding == "sinusoidal":
        h = h + sinusoidal_encoding(torch.arange(T, device=idx.device), cfg.d_model, h.dtype)

    layers = []
    for block in model.blocks:
        x = _rms_norm(h, block.norm1.weight, cfg.norm_eps)
        summarizer, expander = block.memory.summarizer, block.memory.expander
        summarize = getattr(summarizer, "reference", summarizer)
        memo: dict[tuple[int, int], Tensor] = {}

        def node(i: int, j: int) -> Tensor:
            """N[:, i, j] for all banks: (B, n_banks, 1 + i*expand, d)."""
            if i == 0:
                return x[:, j, None, None, :].expand(B, nb, 1, cfg.d_model)
            if (i, j) not in memo:
                children = [node(i - 1, k * j + r) for r in range(k)]
                if expander is not None:
                    children = [expander.reference(c) for c in children]
                memo[(i, j)] = summarize(torch.stack(children, dim=-2))  # (B, nb, E, k, d) -> (B, nb, E, d)
            return memo[(i, j)]

        def slots_of(i: int, j: int) -> Tensor:
            # a token is one slot; a node one per bank and vector of its set
            return x[:, j, None] if i == 0 else node(i, j).flatten(1, 2)

        attn = block.attn
        mechanisms = [getattr(block, name) for name in block.mechanisms]  # memories beside the tree

        outs = []
        for t in range(T):
            read = read_nodes(t, k, cfg.read, cfg.max_level)
            S = torch.cat([x[:, t, None]] + [slots_of(i, j) for i, j in read], dim=1)
            q = F.linear(S, attn.q.weight, attn.q.bias)  # slots -> W_q,  (B, n_slots, d)
            v = F.linear(S, attn.v.weight, attn.v.bias)
            bias = S.new_zeros(B, S.shape[1])
            n_tree = S.shape[1]  # slots of position t: self, tree, then the mechanisms'
            for mech in mechanisms:  # their slots follow the tree's, each with its score bias
                mq, mv, g = mech.reference_read(x, t, attn)  # (B, n, d) twice, (B, n)
                q, v, bias = torch.cat([q, mq], dim=1), torch.cat([v, mv], dim=1), torch.cat([bias, g], dim=1)
            key = F.linear(x[:, t], attn.k.weight, attn.k.bias)  # token -> W_k
            if cfg.level_gate != "none":  # the tree slots' per-level bias: the token entry 0, level i entry i + 1
                gate = attn.level_bias[None].expand(B, -1, -1)  # (B, H, GATE_LEVELS)
                if cfg.level_gate == "data":
                    gate = gate + F.linear(x[:, t], attn.level_proj.weight, attn.level_proj.bias)[:, None, :]
                entries = [0] + [min(i + 1, GATE_LEVELS - 1) for i, j in read for _ in range(slots_of(i, j).shape[1])]
            heads = []
            for hd in range(H):
                sl = slice(hd * dh, (hd + 1) * dh)
                score = (q[:, :, sl] * key[:, None, sl]).sum(-1) / math.sqrt(dh) + bias  # (B, n_slots)
                if cfg.level_gate != "none":
                    score = score + F.pad(gate[:, hd, entries], (0, score.shape[1] - len(entries)))
                p = torch.softmax(score, dim=-1)
                heads.append((p[:, :, None] * v[:, :, sl]).sum(1))  # (B, dh)
            outs.append(F.linear(torch.cat(heads, dim=-1), attn.o.weight, attn.o.bias))
        h = h + torch.stack(outs, dim=1)
        if return_state:  # the last completed nodes of every level, and what position T-1 read
            nodes = []  # level i: the last r_i of its T // k**i completed nodes, (B, nb, r_i, E_i, d)
            for i, r in enumerate(kept(T, k, cfg.read, cfg.max_level)):
                last = T // k**i
                stacked = torch.stack([node(i, j) for j in range(last - max(r, 1), last)], dim=2)
                nodes.append(stacked[:, :, stacked.shape[2] - r :])
            heads_of = lambda z: z.unflatten(-1, (H, dh)).transpose(1, 2)  # (B, n, d) -> (B, H, n, dh)  # noqa: E731
            extra = {name: mech.reference_state(x, T, attn.project_tokens) for name, mech in zip(block.mechanisms, mechanisms)}
            layers.append(LayerState(nodes, heads_of(q[:, 1:n_tree]), heads_of(v[:, 1:n_tree]), extra))

        y = _rms_norm(h, block.norm2.weight, cfg.norm_eps)
        h = h + block.ff.plain(y)  # (the feed-forward's one definition)

    h = F.layer_norm(h, (cfg.d_model,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
    logits = F.linear(h, model.head.weight, model.head.bias)
    return (logits, LMNState(cfg, B, T, layers)) if return_state else logits
