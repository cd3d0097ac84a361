"""The task seam: what the trainer needs to know about a task, and nothing about models.

A :class:`Task` owns its data and says

* what goes in and what comes out: token ids ``x (B, T)`` in ``[0, vocab_size)``; targets
  ``y`` that are ids ``(B, T)`` (next-token or classification) or values
  ``(B, T, n_outputs)`` (regression, read from the first ``n_outputs`` model outputs);
* seeded batches: ``batch(split, batch_size, generator)`` is a function of the generator's
  state alone, so a run is a function of its seed and resumes bit-exactly;
* which positions count: ``Batch.mask (B, T)`` (None: every position, the next-token
  case; otherwise classification or regression on the chosen positions);
* the loss (:mod:`lmn.tasks.losses`) and the metrics of a whole-split evaluation.

Glossary: B batch rows, T positions (``seq_len``), V ``vocab_size`` (the model's input
and output table), O ``n_outputs`` (regression targets per position).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import losses

LOSS_KINDS = ("next_token", "classification", "regression")


@dataclass
class Batch:
    """Inputs, targets and the positions that are scored.

    Attributes:
        x: ``(B, T)`` int64 token ids.
        y: ``(B, T)`` int64 target ids, or ``(B, T, O)`` float targets (regression).
        mask: ``(B, T)`` bool, True where a position is scored; None scores every position.
        doc_starts: ``(B, T)`` bool, True where a new document starts in a packed row
            (:mod:`lmn.documents`); the trainer passes it to the model
            (``model(x, doc_starts=...)``), which computes every document as if alone.
            None (the default): each row is one stream, and the model is called as ``model(x)``.
    """

    x: Tensor
    y: Tensor
    mask: Tensor | None = None
    doc_starts: Tensor | None = None

    def rows(self, lo: int, hi: int) -> "Batch":
        """Rows ``lo:hi`` (one process's share of a global batch)."""
        def part(t):
            return None if t is None else t[lo:hi]

        return Batch(self.x[lo:hi], self.y[lo:hi], part(self.mask), part(self.doc_starts))

    def to(self, device) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.x), move(self.y), move(self.mask), move(self.doc_starts))


class Task:
    """Base class; a task sets the attributes and implements :meth:`batch`.

    Attributes:
        name: the task's registered name.
        loss_kind: one of ``next_token``, ``classification``, ``regression``.
        vocab_size: V, the size of the model's token table (inputs and class outputs).
        n_outputs: O, regression targets per position (regression only).
        seq_len: T of every training batch.
        splits: the splits the periodic estimate reports (``train`` first).
        whole_split: the split a whole-split evaluation covers, or None if the task has none.
        record_key: the key under which :meth:`record` is written in config.json.
        packs_documents: the task knows where documents start in its streams and gives
            ``Batch.doc_starts`` when made with ``packing`` (``lmn train --packing``); the
            others are refused with ``--packing`` (:func:`lmn.tasks.make_task`).
    """

    name = "task"
    loss_kind = "next_token"
    vocab_size: int
    n_outputs = 0
    seq_len: int
    splits: tuple[str, ...] = ("train", "val")
    whole_split: str | None = None
    record_key = "task"
    packs_documents = False

    # ---- data
    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` examples of ``split``, drawn with ``generator`` only."""
        raise NotImplementedError

    def whole(self, batch_size: int) -> Iterator[Batch]:
        """Every example of ``whole_split`` exactly once, in batches (deterministic)."""
        raise NotImplementedError(f"task {self.name!r} has no whole-split evaluation")

    # ---- loss and metrics
    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Mean loss over the scored positions (differentiable)."""
        if self.loss_kind == "regression":
            return losses.regression_loss(logits, batch.y, batch.mask)
        return losses.token_loss(logits, batch.y, batch.mask)

    def score(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        """Sums over one batch that :meth:`summarize` turns into metrics."""
        if self.loss_kind == "regression":
            return losses.regression_sums(logits, batch.y, batch.mask)
        return losses.token_sums(logits, batch.y, batch.mask)

    def score_keys(self) -> tuple[str, ...]:
        """The keys :meth:`score` returns (the same in every process)."""
        return ("loss_sum", "count") if self.loss_kind == "regression" else ("loss_sum", "count", "correct")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from the summed :meth:`score` of a whole split: the mean loss, and
        accuracy for classification."""
        out = {"loss": sums["loss_sum"] / sums["count"], "count": int(sums["count"])}
        if self.loss_kind == "classification":
            out["accuracy"] = sums["correct"] / sums["count"]
        return out

    def bits_per_byte(self, split: str, loss: float) -> float | None:
        """``loss`` (mean nats per token on ``split``) in bits per byte of the text its
        tokens stand for, or None for a task that is not text (the text task's
        ``val_bpb``, which compares across tokenizers)."""
        return None

    # ---- run directory
    def record(self) -> dict:
        """What the task trained on, written to config.json (and checked on resume)."""
        return {"name": self.name}

    def save(self, run_dir: Path) -> None:
        """Write the task's own files into a new run directory (e.g. a tokenizer)."""

    def check_resume(self, run_dir: Path, saved_record: dict) -> None:
        """Raise ValueError if the run in ``run_dir`` was trained on other data."""
        if saved_record != self.record():
            raise ValueError(f"cannot resume {run_dir}: it was trained on another task or data "
                             f"({saved_record} vs {self.record()})")

    def describe(self) -> str:
        """One phrase for the progress log."""
        return f"task {self.name} (vocab {self.vocab_size}, T {self.seq_len})"
