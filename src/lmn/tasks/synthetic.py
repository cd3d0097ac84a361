"""Shared machinery of the synthetic probe tasks (:mod:`lmn.tasks.mqar`, ``passkey``,
``distance``, ``selective_copy``, ``listops``).

Every synthetic task is a pure generator: ``generate(n, generator) -> Batch`` draws ``n``
examples using the ``torch.Generator`` alone (nothing global), so

* a training batch is ``generate(batch_size, train_generator)`` (the trainer's seeded
  stream; a run is a function of its seed and resumes bit-exactly);
* the periodic ``val`` estimate draws fresh examples from the trainer's evaluation stream;
* the whole-split evaluation (``test``) is a fixed set of ``n_test`` examples generated
  from ``test_seed`` (a task option, the same for every model and run), in chunks of
  ``TEST_CHUNK`` so the set does not depend on the evaluation batch size.

All of them are classification tasks: targets are token ids, scored only where
``Batch.mask`` is True. Each task also puts every scored position into a *bucket* (a
distance in tokens, or a sequence length) computed from the inputs alone
(:meth:`SyntheticTask.buckets`), and the whole-split metrics add ``accuracy@B`` and
``count@B`` per bucket: the accuracy-vs-distance curves of ``lmn probe``.

Options come from ``--task-opt KEY=VALUE`` (``TrainConfig.task_options``); the sequence
length is ``--block-size`` (``TrainConfig.block_size``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from . import losses
from ..validation import check_int
from .base import Batch, Task

TEST_CHUNK = 256  # the fixed test set is generated in chunks of this many examples


def pow2_bucket(values: Tensor) -> Tensor:
    """``2**floor(log2(v))`` for ``v >= 1`` (1, 2, 4, 8, ...): the distance buckets."""
    v = values.clamp(min=1).to(torch.float64)
    return (2 ** torch.floor(torch.log2(v))).to(torch.int64)


def pow2_grid(lo: int, hi: int) -> tuple[int, ...]:
    """Powers of two from ``lo`` to ``hi`` inclusive (``lo`` a power of two)."""
    out, d = [], lo
    while d <= hi:
        out.append(d)
        d *= 2
    return tuple(out)


def seed_from(generator: torch.Generator) -> int:
    """A Python-level seed drawn from ``generator`` (for generators that use ``random``)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class SyntheticTask(Task):
    """Base of the synthetic tasks: splits ``train``/``val`` drawn from the trainer's
    generators, a fixed ``test`` set for the whole-split pass, per-bucket accuracy.

    Subclasses set ``name``, ``vocab_size``, ``seq_len``, ``bucket_values`` (the buckets
    reported, in order) and implement :meth:`generate` and :meth:`buckets`.
    """

    loss_kind = "classification"
    splits = ("train", "val")
    whole_split = "test"
    bucket_values: tuple[int, ...] = ()
    bucket_name = "distance"  # what a bucket measures, for the tables

    # options every synthetic task takes
    COMMON = {"n_test": 512, "test_seed": 20231208}

    def __init__(self, n_test: int = 512, test_seed: int = 20231208):
        self.n_test, self.test_seed = check_int("n_test", n_test, min=1), int(test_seed)
        self._test: Batch | None = None

    # ---- options
    @classmethod
    def options(cls, cfg, defaults: dict) -> dict:
        """``defaults`` and :attr:`COMMON` updated by ``cfg.task_options``; unknown keys raise."""
        allowed = {**cls.COMMON, **defaults}
        unknown = sorted(set(cfg.task_options) - set(allowed))
        if unknown:
            raise ValueError(f"task {cls.name!r} has no option(s) {', '.join(unknown)}; "
                             f"it takes {', '.join(sorted(allowed))}")
        return {**allowed, **cfg.task_options}

    # ---- data
    def generate(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` examples drawn with ``generator`` only."""
        raise NotImplementedError

    def buckets(self, x: Tensor) -> Tensor:
        """``(B, T)`` int64 bucket of every position of inputs ``x`` (read where scored)."""
        raise NotImplementedError

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        return self.generate(batch_size, generator)

    def test_set(self) -> Batch:
        """The fixed test set: ``n_test`` examples from ``test_seed`` (cached)."""
        if self._test is None:
            generator = torch.Generator().manual_seed(self.test_seed)
            parts, left = [], self.n_test
            while left > 0:
                parts.append(self.generate(min(TEST_CHUNK, left), generator))
                left -= TEST_CHUNK
            self._test = Batch(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                               torch.cat([p.mask for p in parts]))
        return self._test

    def whole(self, batch_size: int) -> Iterator[Batch]:
        test = self.test_set()
        for lo in range(0, self.n_test, batch_size):
            yield test.rows(lo, min(lo + batch_size, self.n_test))

    # ---- metrics
    def score_keys(self) -> tuple[str, ...]:
        keys = ["loss_sum", "count", "correct"]
        for b in self.bucket_values:
            keys += [f"correct@{b}", f"count@{b}"]
        return tuple(keys)

    def score(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        sums = losses.token_sums(logits, batch.y, batch.mask)
        hit = logits.argmax(-1) == batch.y  # (B, T)
        bucket = self.buckets(batch.x.cpu()).to(hit.device)
        for b in self.bucket_values:
            sel = batch.mask & (bucket == b)
            sums[f"correct@{b}"] = float((hit & sel).sum())
            sums[f"count@{b}"] = float(sel.sum())
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return losses.accuracy_summary(sums, self.bucket_values)

    def record(self) -> dict:
        return {"name": self.name, **self.config()}

    def config(self) -> dict:
        """The task's options as recorded in config.json (subclasses add theirs)."""
        return {"seq_len": self.seq_len, "vocab_size": self.vocab_size, "n_test": self.n_test,
                "test_seed": self.test_seed}

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in self.config().items())
        return f"task {self.name} ({shown})"


__all__ = ["TEST_CHUNK", "SyntheticTask", "pow2_bucket", "pow2_grid", "seed_from"]
