"""Evaluation: the periodic loss estimate on random batches, and the whole-split pass.

The estimate at step s draws its batches from a generator seeded by ``(seed, s)`` alone:
fresh random batches at each evaluation, yet independent of where a run was stopped.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from ..tasks import Batch, Task
from .distributed import Dist


def eval_seed(seed: int, step: int) -> int:
    """Seed of the batches of the estimate at ``step``: distinct for every (seed, step)."""
    return (seed + 1) * 2**32 + step


def local_batch(task: Task, split: str, batch_size: int, generator, dist: Dist, device) -> Batch:
    """This process's rows of the next global batch: every process draws the same one."""
    lo, hi = dist.share(batch_size)
    batch = task.batch(split, batch_size, generator)
    return (batch if (lo, hi) == (0, batch_size) else batch.rows(lo, hi)).to(device)


def model_outputs(model: nn.Module, batch: Batch) -> Tensor:
    """``model(batch.x)``, or ``model(batch.x, doc_starts=batch.doc_starts)`` when the batch
    holds packed documents (:attr:`lmn.tasks.Batch.doc_starts`)."""
    if batch.doc_starts is None:
        return model(batch.x)
    check_takes_documents(model)
    return model(batch.x, doc_starts=batch.doc_starts)


def check_takes_documents(model: nn.Module, remedy: str = "train this kind on unpacked rows") -> None:
    """A one-line error unless ``model`` (under its DDP / torch.compile wrappers) takes
    ``doc_starts`` (``remedy``: what to do, at the end of the message)."""
    inner = model
    while hasattr(inner, "module") or hasattr(inner, "_orig_mod"):
        inner = getattr(inner, "_orig_mod", None) or inner.module
    if "doc_starts" not in inspect.signature(inner.forward).parameters:
        raise ValueError(f"the task gives packed documents (Batch.doc_starts) but {type(inner).__name__} cannot reset "
                         f"at document boundaries (its forward takes no doc_starts); {remedy}")


def batch_loss(model: nn.Module, task: Task, batch: Batch, autocast) -> Tensor:
    """The task's loss of ``model`` on ``batch`` (logits in float32)."""
    with autocast:
        logits = model_outputs(model, batch)
    return task.loss(logits, batch)


@torch.no_grad()
def estimate_loss(model: nn.Module, task: Task, cfg, step: int, dist: Dist, device, autocast) -> dict:
    """``{split: mean loss}`` over ``cfg.eval_iters`` random global batches per split (the
    paper's estimate), for the task's splits."""
    generator = torch.Generator().manual_seed(eval_seed(cfg.seed, step))
    model.eval()
    out = {}
    for split in task.splits:
        total = 0.0
        for _ in range(cfg.eval_iters):
            batch = local_batch(task, split, cfg.batch_size, generator, dist, device)
            total += batch_loss(model, task, batch, autocast).item()
        out[split] = dist.mean(total / cfg.eval_iters)
    model.train()
    return out


@torch.no_grad()
def evaluate_whole(model: nn.Module, task: Task, batch_size: int, dist: Dist, device, autocast) -> dict:
    """The task's metrics over every example of its ``whole_split`` (e.g. every validation
    target of a corpus, in non-overlapping windows). Batches are shared out round-robin
    across processes and the sums added up."""
    from .fsdp import is_sharded

    model.eval()
    keys = task.score_keys()
    acc = torch.zeros(len(keys), dtype=torch.float64)  # one running sum per key
    batches = list(task.whole(batch_size)) if is_sharded(model) else task.whole(batch_size)
    for i, batch in enumerate(batches):
        if i % dist.world_size != dist.rank:
            # a sharded model's forward is a collective: the last round's idle processes run one too
            if is_sharded(model) and i == len(batches) - 1 and dist.rank > i % dist.world_size:
                with autocast:
                    model_outputs(model, batch.to(device))
            continue
        batch = batch.to(device)
        with autocast:
            logits = model_outputs(model, batch)
        sums = task.score(logits, batch)
        acc += torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.sum_(acc)
    model.train()
    return task.summarize(dict(zip(keys, acc.tolist())))
