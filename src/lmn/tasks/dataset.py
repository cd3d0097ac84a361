"""A token dataset on disk as a task (``lmn train --dataset DIR``, i.e. ``--task dataset
--data DIR``): next-token prediction on the windows of a directory written by ``lmn data
prepare`` (:mod:`lmn.data.dataset`), read from disk a window at a time.

It is the text task on another store: the same batches (``batch_size`` windows of
``block_size`` tokens at offsets drawn by :func:`lmn.data.batches.window_starts` from the
trainer's generator, so ``--resume`` continues exactly), the same whole-split evaluation
(non-overlapping windows over the validation split) and the same metrics (nats per token,
``val_bpb`` from the UTF-8 bytes the manifest counts). The split is the dataset's own
(``--train-frac`` is not used).

Packing (``lmn train --packing``, ``TrainConfig.packing``; off by default). Off, windows run
across document boundaries as the text task's run across lines, and the model's memory reads
from one document into the next (nanoGPT-style training). On, each window -- for training,
the estimates and the whole-split evaluation alike -- carries ``Batch.doc_starts``, True at
every column where a document begins (from the split's document offsets,
:meth:`lmn.data.dataset.TokenSplit.document_starts`), so the model computes each document's
piece of a window as if it were alone: nothing crosses a boundary, positions count from the
document's start, and the prediction at a document's first token reads that token alone. A
window that starts mid-document sees that document from its column 0 only. The windows (and
the generator draws), the targets and the tokens scored are the same either way: a
document's first token is still a target, predicted at the last column of the document
before (there is no separator token). Packing changes only what each prediction may read.

The run records the manifest's sha256 and keeps a copy of it (``RUN/dataset.json``) and the
dataset's tokenizer (``RUN/tokenizer.json``, so that generate, convert and export work);
``--resume`` refuses a dataset whose manifest differs, naming what differs. The dataset may
move (``--resume --dataset NEWDIR``) as long as its manifest is the same. When the task is
made, each shard's size is checked against the manifest (a truncated shard is one line);
their sha256 are in the manifest but not checked then, since that would read the whole
corpus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from ..atomic import write_bytes
from ..data import check_split_sizes
from ..data.batches import sequential_starts, window_starts
from ..data.dataset import MANIFEST, TokenDataset, describe_difference
from .base import Batch
from .text import TOKENIZER_FILE, TextTask

MANIFEST_COPY = "dataset.json"


class DatasetTask(TextTask):
    """Next-token prediction on a token dataset (see the module doc).

    Args:
        data: the dataset directory.
        block_size: tokens per window.
    """

    name = "dataset"
    record_key = "dataset"
    OPTIONS = ()
    packs_documents = True

    def __init__(self, data: str, block_size: int = 512, packing: bool = False):
        # (TextTask.__init__ reads a corpus: not called)
        self.packing = packing
        self.dataset = TokenDataset(data)
        self.tokenizer = self.dataset.tokenizer()
        self.store = {split: self.dataset.split(split) for split in ("train", "val")}
        unit = "characters" if self.tokenizer.kind == "char" else f"{self.tokenizer.spec} tokens"
        check_split_sizes(self.store["train"], self.store["val"], block_size, what=f"dataset {str(data)!r}",
                          unit=unit)
        self.vocab_size, self.seq_len = self.tokenizer.vocab_size, block_size
        self._byte_lengths = self.tokenizer.byte_lengths()
        self._byte_lengths_on = {}
        splits = self.dataset.manifest["splits"]
        self.n_bytes = {split: int(splits[split]["bytes"]) for split in self.store}
        self.info = {"path": str(data), "manifest_sha256": self.dataset.sha256, "tokenizer": self.tokenizer.spec,
                     "vocab_size": self.vocab_size, "dtype": self.dataset.manifest["dtype"],
                     "n_train": len(self.store["train"]), "n_val": len(self.store["val"]),
                     "documents": self.dataset.manifest["documents"]["total"], "n_val_bytes": self.n_bytes["val"]}

    @classmethod
    def from_config(cls, cfg) -> "DatasetTask":
        """From a :class:`lmn.trainer.TrainConfig`: ``data`` (the directory), ``block_size``,
        ``packing``."""
        if cfg.task_options:
            raise ValueError(f"the dataset task takes no --task-opt (got {', '.join(sorted(cfg.task_options))}): its "
                             "tokenizer is the dataset's; choose one with lmn data prepare --tokenizer")
        return cls(cfg.data, cfg.block_size, packing=getattr(cfg, "packing", False))

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        data = self.store[split]
        starts = window_starts(len(data), self.seq_len, batch_size, generator)
        return self._batch(data, starts, self.seq_len)

    def whole(self, batch_size: int) -> Iterator[Batch]:
        data = self.store[self.whole_split]
        for starts, length in sequential_starts(len(data), self.seq_len, batch_size):
            yield self._batch(data, starts, length)

    def _batch(self, data, starts, length: int) -> Batch:
        """The windows of ``length`` tokens at ``starts``, with their document starts when packing."""
        x, y = data.windows(starts, length)
        return Batch(x, y, doc_starts=data.document_starts(starts, length) if self.packing else None)

    def bits_per_byte(self, split: str, loss: float) -> float:
        """``loss`` (mean nats per token on ``split``) in bits per UTF-8 byte of the split."""
        return loss * len(self.store[split]) / self.n_bytes[split] / math.log(2)

    def record(self) -> dict:
        return dict(self.info)

    def save(self, run_dir: Path) -> None:
        """The dataset's tokenizer file and a copy of its manifest, byte for byte."""
        info = self.dataset.manifest["tokenizer"]
        write_bytes(run_dir / TOKENIZER_FILE, (self.dataset.path / info["file"]).read_bytes())
        write_bytes(run_dir / MANIFEST_COPY, (self.dataset.path / MANIFEST).read_bytes())

    def check_resume(self, run_dir: Path, saved_record: dict) -> None:
        saved_sha = saved_record.get("manifest_sha256")
        if saved_sha == self.dataset.sha256:
            return
        try:
            saved = json.loads((run_dir / MANIFEST_COPY).read_text(encoding="utf-8"))
            what = describe_difference(saved, self.dataset.manifest)
        except (OSError, ValueError):
            what = f"manifest sha256 {saved_sha} vs {self.dataset.sha256}"
        raise ValueError(f"cannot resume {run_dir}: dataset {self.info['path']} is not the one it was trained on "
                         f"({what})")

    def describe(self) -> str:
        m = self.dataset.manifest
        return (f"dataset {self.info['path']} ({m['documents']['total']:,} documents, {self.info['n_train']:,} train / "
                f"{self.info['n_val']:,} val tokens of {self.tokenizer.spec}, vocab {self.vocab_size}"
                f"{', packed: no memory across documents' if self.packing else ''})")
