"""A text corpus as a task: next-token prediction on every position (the paper's Table 1
protocol on Tiny Shakespeare, or any UTF-8 text file).

* tokenizer (``--task-opt tokenizer=SPEC``, :mod:`lmn.data.tokenizer`): ``char`` (the
  default: every character of the corpus, sorted), ``bytes`` (UTF-8 bytes) or ``bpe:N``
  (byte-level BPE fitted on the training split alone); saved as ``tokenizer.json``;
* split: the first ``train_frac`` of the characters train, the rest validates (each split
  encoded on its own: the same two texts whatever the tokenizer);
* batches: ``batch_size`` windows of ``block_size`` tokens at uniformly random offsets,
  targets shifted by one (:func:`lmn.data.batches.window_starts`);
* whole-split evaluation: non-overlapping windows covering every validation target once.

Losses are nats per token; bits per byte (:meth:`TextTask.bits_per_byte`, ``val_bpb`` in
the metrics) divide by the UTF-8 bytes the tokens stand for instead, so that runs with
different tokenizers compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from ..data import (CorpusError, check_split_sizes, encode_splits, fit_tokenizer, load_corpus, load_tokenizer,
                    parse_tokenizer_spec, sequential_windows)
from ..data.batches import gather_windows, window_starts
from ..data.corpus import sha256_file
from .base import Batch, Task

TOKENIZER_FILE = "tokenizer.json"


class TextTask(Task):
    """Next-token prediction on a text corpus (``--data``; see :mod:`lmn.data`).

    Args:
        data: corpus name or path (:func:`lmn.data.load_corpus`).
        train_frac: leading fraction of the characters that trains.
        block_size: tokens per window.
        tokenizer: ``char``, ``bytes`` or ``bpe:N`` (:func:`lmn.data.fit_tokenizer`).
    """

    name = "text"
    loss_kind = "next_token"
    whole_split = "val"
    record_key = "corpus"  # config.json's "corpus" entry, as runs have always had it
    OPTIONS = ("tokenizer",)  # --task-opt KEY=VALUE

    def __init__(self, data: str = "tinyshakespeare", train_frac: float = 0.9, block_size: int = 512,
                 tokenizer: str = "char"):
        parse_tokenizer_spec(tokenizer)  # a bad spec fails before the corpus is read
        path, text = load_corpus(data)
        self.tokenizer = fit_tokenizer(tokenizer, text, train_frac)
        if self.tokenizer.kind == "char" and self.tokenizer.vocab_size < 2:
            raise CorpusError(f"corpus {str(path)!r} holds a single distinct character "
                              f"({self.tokenizer.chars!r}, {len(text):,} times): there is nothing to predict; "
                              "give a text with at least 2 different characters")
        train, val = encode_splits(self.tokenizer, text, train_frac)
        unit = "characters" if self.tokenizer.kind == "char" else f"{self.tokenizer.spec} tokens"
        check_split_sizes(train, val, block_size, what=f"corpus {str(path)!r}", unit=unit)
        self.ids = {"train": train, "val": val}
        self.vocab_size, self.seq_len = self.tokenizer.vocab_size, block_size
        self._byte_lengths = self.tokenizer.byte_lengths()  # (V,) UTF-8 bytes per id
        self._byte_lengths_on = {}  # device -> the same table there (whole-split scoring)
        self.n_bytes = {split: int(self._byte_lengths[ids].sum()) for split, ids in self.ids.items()}
        self.info = {"path": str(path), "sha256": sha256_file(path), "n_chars": len(text),
                     "vocab_size": self.vocab_size, "n_train": len(train), "n_val": len(val),
                     "tokenizer": self.tokenizer.spec, "n_val_bytes": self.n_bytes["val"]}

    @classmethod
    def from_config(cls, cfg) -> "TextTask":
        """From a :class:`lmn.trainer.TrainConfig` (``data``, ``train_frac``, ``block_size``,
        and the task option ``tokenizer``)."""
        unknown = sorted(set(cfg.task_options) - set(cls.OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) of the text task: {', '.join(unknown)} (it takes tokenizer=SPEC)")
        return cls(cfg.data, cfg.train_frac, cfg.block_size, **cfg.task_options)

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        data = self.ids[split]
        starts = window_starts(len(data), self.seq_len, batch_size, generator)
        return Batch(*gather_windows(data, starts, self.seq_len))

    def whole(self, batch_size: int) -> Iterator[Batch]:
        for x, y in sequential_windows(self.ids[self.whole_split], self.seq_len, batch_size):
            yield Batch(x, y)

    def score(self, logits, batch: Batch) -> dict[str, float]:
        """The token sums, and ``bytes``: the UTF-8 bytes of the scored targets."""
        sums = super().score(logits, batch)
        device = batch.y.device
        if device not in self._byte_lengths_on:
            self._byte_lengths_on[device] = self._byte_lengths.to(device)
        sums["bytes"] = float(self._byte_lengths_on[device][batch.y].sum())
        return sums

    def score_keys(self) -> tuple[str, ...]:
        return (*super().score_keys(), "bytes")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Mean loss (nats per token), bits per byte of the scored targets (``bpb``), the
        tokens; a character vocabulary also gives ``bits_per_char`` (a token is a character)."""
        loss = sums["loss_sum"] / sums["count"]
        out = {"loss": loss}
        if self.tokenizer.kind == "char":
            out["bits_per_char"] = loss / math.log(2)
        out.update(bpb=sums["loss_sum"] / sums["bytes"] / math.log(2), tokens=int(sums["count"]))
        return out

    def bits_per_byte(self, split: str, loss: float) -> float:
        """``loss`` (mean nats per token on ``split``) in bits per UTF-8 byte of the split:
        ``loss * tokens / bytes / ln 2``, the split's tokens and the bytes they decode to."""
        return loss * len(self.ids[split]) / self.n_bytes[split] / math.log(2)

    def record(self) -> dict:
        return dict(self.info)

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / TOKENIZER_FILE)

    def check_resume(self, run_dir: Path, saved_record: dict) -> None:
        if saved_record.get("sha256") != self.info["sha256"]:
            raise ValueError(f"cannot resume {run_dir}: the corpus differs from the one it was trained on "
                             f"(sha256 {saved_record.get('sha256')} vs {self.info['sha256']})")
        saved = load_tokenizer(run_dir / TOKENIZER_FILE)
        if saved != self.tokenizer:
            if saved.kind != self.tokenizer.kind or saved.spec != self.tokenizer.spec:
                what = f"it was trained with tokenizer {saved.spec}, not {self.tokenizer.spec}"
            elif saved.kind == "char":
                what = "its tokenizer differs from the corpus's characters"
            else:
                what = f"its {saved.spec} tokenizer differs from the one fitted now on the training split"
            raise ValueError(f"cannot resume {run_dir}: {what} ({run_dir / TOKENIZER_FILE})")

    def describe(self) -> str:
        tok = "" if self.tokenizer.kind == "char" else f", tokenizer {self.tokenizer.spec}"
        return f"corpus {self.info['path']} ({self.info['n_chars']:,} chars{tok}, vocab {self.vocab_size})"
