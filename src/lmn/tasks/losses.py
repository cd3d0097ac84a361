"""Losses and per-batch metric sums of the three task kinds.

``logits (B, T, V)`` come from any model kind; targets are ids ``(B, T)`` or values
``(B, T, O)``; ``mask (B, T)`` picks the scored positions (None: all of them).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # target id of a position that is not scored


def _masked_targets(y: Tensor, mask: Tensor | None) -> Tensor:
    return y if mask is None else y.masked_fill(~mask, IGNORE)


def token_loss(logits: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy over the scored positions: next-token (``mask`` None: every position,
    computed exactly as the paper's protocol always has) or classification."""
    flat = logits.float().reshape(-1, logits.shape[-1])  # (B*T, V)
    if mask is None:
        return F.cross_entropy(flat, y.reshape(-1))
    return F.cross_entropy(flat, _masked_targets(y, mask).reshape(-1), ignore_index=IGNORE)


def token_sums(logits: Tensor, y: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """``{"loss_sum", "count", "correct"}`` over the scored positions."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    target = _masked_targets(y, mask).reshape(-1)
    nll = F.cross_entropy(flat, target, reduction="sum", ignore_index=IGNORE)
    scored = target != IGNORE
    correct = (flat.argmax(-1) == target) & scored
    return {"loss_sum": nll.item(), "count": float(scored.sum()), "correct": float(correct.sum())}


def regression_loss(outputs: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of the first ``O = y.shape[-1]`` outputs at the scored positions."""
    diff = outputs[..., : y.shape[-1]].float() - y.float()  # (B, T, O)
    if mask is None:
        return diff.square().mean()
    return diff[mask].square().mean()


def regression_sums(outputs: Tensor, y: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """``{"loss_sum", "count"}``: summed squared error and the number of scored values."""
    diff = outputs[..., : y.shape[-1]].float() - y.float()
    picked = diff if mask is None else diff[mask]
    return {"loss_sum": picked.square().sum().item(), "count": float(picked.numel())}


__all__ = ["IGNORE", "regression_loss", "regression_sums", "token_loss", "token_sums"]


def accuracy_summary(sums: dict[str, float], buckets) -> dict[str, float]:
    """Loss and accuracy of summed evaluation counts, and ``accuracy@B`` / ``count@B`` for
    every bucket ``B`` that had scored targets (keys ``correct@B``, ``count@B`` in ``sums``)."""
    out = {"loss": sums["loss_sum"] / sums["count"], "count": int(sums["count"]),
           "accuracy": sums["correct"] / sums["count"]}
    for b in buckets:
        n = sums.get(f"count@{b}", 0.0)
        if n:
            out[f"accuracy@{b}"] = sums[f"correct@{b}"] / n
            out[f"count@{b}"] = int(n)
    return out

