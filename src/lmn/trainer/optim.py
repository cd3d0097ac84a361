"""The optimizer of a run: AdamW over one or two parameter groups, the learning-rate
schedule and gradient clipping (:class:`~lmn.trainer.config.TrainConfig`'s ``lr*``,
``beta*``, ``weight_decay``/``decay`` and ``grad_clip`` fields)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """``decay="all"``: one group, every parameter decayed (torch's default). ``"matrices"``:
    tensors of two or more dimensions (weights, embeddings) decayed, the rest (biases,
    norm scales) not, as nanoGPT does. The grouping depends on shapes alone, so it is the
    same before and after FSDP2 sharding (a DTensor keeps its global shape)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay == "all":
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr_at(0), betas=(cfg.beta1, cfg.beta2))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor | None:
    """Clip the global gradient norm to ``max_norm`` (0: leave the gradients alone); returns
    the norm before clipping (a 0-d tensor, not synchronised), or None when not clipping."""
    if max_norm <= 0:
        return None
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm
