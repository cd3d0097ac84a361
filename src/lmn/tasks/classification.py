"""What the sequence-classification tasks on real data share (:mod:`lmn.tasks.fashion_mnist`,
:mod:`lmn.tasks.ucr`): a fixed set of examples read from files, scored as ListOps is
(:mod:`lmn.tasks.listops`).

* an example is a sequence of T tokens ``x`` and one class ``c`` in ``[0, n_classes)``; the
  class is read from the model's output at the **last position** only (``Batch.mask`` is
  True there; ``y`` holds ``c`` there and 0 elsewhere), over the same token table as the
  inputs (``vocab_size >= n_classes``): a causal model's last position has seen the whole
  sequence, the counterpart of LRA's pooled representation;
* splits: ``train`` and ``test`` as the data set ships them; ``val`` is carved from the
  shipped training split by :func:`stratified_split` (per class, a seeded permutation; the
  rest stays ``train``); with ``val_frac=0`` nothing is carved and ``val`` is the training
  split itself (no held-out estimate, every training example trains);
* batches: ``train`` and the periodic ``val`` estimate draw examples uniformly with
  replacement with the trainer's generator (a run is a function of its seed); the whole-split
  evaluation covers every ``test`` example once, in file order;
* metrics: loss and accuracy over the test split, and ``accuracy@C`` / ``count@C`` per class.

Tokens are kept as uint8 (levels <= 256) and widened per batch, so 60,000 x 784 pixels take
47 MB, not 376.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from . import losses
from .base import Batch, Task

DEFAULT_BLOCK_SIZE = 512  # TrainConfig's default: taken to mean "not given" (the data fixes T)


def stratified_split(labels: Tensor, n_classes: int, val_frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)`` of a shipped training split: for each class c in order, a
    permutation of its examples (file order) drawn from ``torch.Generator().manual_seed(seed)``
    (one generator, classes in turn), the first ``k_c = min(floor(val_frac * n_c + 0.5), n_c - 1)``
    of them to ``val``; both index lists sorted (file order). ``val_frac = 0``: no ``val``."""
    generator = torch.Generator().manual_seed(int(seed))
    train, val = [], []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c).flatten()
        n = idx.numel()
        if n == 0:
            continue
        k = min(int(math.floor(val_frac * n + 0.5)), n - 1)
        perm = idx[torch.randperm(n, generator=generator)]
        val.append(perm[:k])
        train.append(perm[k:])
    train_idx = torch.sort(torch.cat(train)).values
    val_idx = torch.sort(torch.cat(val)).values if val else torch.zeros(0, dtype=torch.int64)
    return train_idx, val_idx


def block_size_for(task_name: str, cfg_block_size: int, length: int) -> int:
    """T: the data's sequence length; ``--block-size`` may state it (and must then agree)."""
    if cfg_block_size not in (DEFAULT_BLOCK_SIZE, length):
        raise ValueError(f"{task_name} task: its sequences are {length} tokens; pass --block-size {length} "
                         f"(or leave it out), not {cfg_block_size}")
    return length


def check_val_frac(task_name: str, val_frac) -> float:
    try:
        value = float(val_frac)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{task_name} task: val_frac must be a number in [0, 1), got {val_frac!r}")
    return value


class FixedClassificationTask(Task):
    """A classification task over fixed examples (see the module docstring).

    Subclasses load their data and call :meth:`set_data` with the token tensors (uint8,
    ``(N, T)``) and labels (int64, ``(N,)``) of the shipped ``train`` and ``test`` splits.
    """

    loss_kind = "classification"
    splits = ("train", "val")
    whole_split = "test"
    n_classes: int
    class_names: tuple[str, ...] = ()

    def set_data(self, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, val_frac: float,
                 split_seed: int) -> None:
        self.seq_len = int(train_x.shape[1])
        self.val_frac, self.split_seed = float(val_frac), int(split_seed)
        train_idx, val_idx = stratified_split(train_y, self.n_classes, self.val_frac, self.split_seed)
        if val_idx.numel() == 0:
            if self.val_frac > 0:
                raise ValueError(f"{self.name} task: val_frac {self.val_frac:g} carves no validation example from "
                                 f"{train_y.numel()} training examples; raise it, or pass val_frac=0 (train on all)")
            val_idx = train_idx  # val_frac 0: the estimate is on the training examples
        self.data = {"train": (train_x[train_idx], train_y[train_idx]), "val": (train_x[val_idx], train_y[val_idx]),
                     "test": (test_x, test_y)}
        self.held_out = self.val_frac > 0

    def size(self, split: str) -> int:
        return int(self.data[split][1].shape[0])

    # ---- data
    def examples(self, split: str, idx: Tensor) -> Batch:
        """The examples ``idx`` of ``split`` as a batch (class at the last position)."""
        xs, ys = self.data[split]
        x = xs[idx].to(torch.int64)
        n, T = x.shape
        y = torch.zeros(n, T, dtype=torch.int64)
        y[:, T - 1] = ys[idx]
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask[:, T - 1] = True
        return Batch(x, y, mask)

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        return self.examples(split, torch.randint(self.size(split), (batch_size,), generator=generator))

    def whole(self, batch_size: int) -> Iterator[Batch]:
        n = self.size(self.whole_split)
        for lo in range(0, n, batch_size):
            yield self.examples(self.whole_split, torch.arange(lo, min(lo + batch_size, n)))

    # ---- metrics: loss, accuracy, accuracy per class
    def score_keys(self) -> tuple[str, ...]:
        keys = ["loss_sum", "count", "correct"]
        for c in range(self.n_classes):
            keys += [f"correct@{c}", f"count@{c}"]
        return tuple(keys)

    def score(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        sums = losses.token_sums(logits, batch.y, batch.mask)
        hit = (logits.argmax(-1) == batch.y) & batch.mask
        for c in range(self.n_classes):
            sel = batch.mask & (batch.y == c)
            sums[f"correct@{c}"] = float((hit & sel).sum())
            sums[f"count@{c}"] = float(sel.sum())
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return losses.accuracy_summary(sums, range(self.n_classes))

    # ---- run directory
    def record(self) -> dict:
        return dict(self.info)

    def check_resume(self, run_dir: Path, saved_record: dict) -> None:
        if saved_record != self.record():
            raise ValueError(f"cannot resume {run_dir}: it was trained on other {self.name} data or settings "
                             f"({saved_record} vs {self.record()})")

    def split_info(self) -> dict:
        return {"train": self.size("train"), "val": self.size("val") if self.held_out else 0, "test": self.size("test"),
                "val_frac": self.val_frac, "split_seed": self.split_seed}


__all__ = ["DEFAULT_BLOCK_SIZE", "FixedClassificationTask", "block_size_for", "check_val_frac", "stratified_split"]
