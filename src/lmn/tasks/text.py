"""The character corpus as a task: next-character prediction on every position (the
paper's Table 1 protocol on Tiny Shakespeare, or any UTF-8 text file).

* vocabulary: every character of the corpus, sorted (saved as ``tokenizer.json``);
* split: the first ``train_frac`` of the characters train, the rest validates;
* batches: ``batch_size`` windows of ``block_size`` characters at uniformly random offsets,
  targets shifted by one (:func:`lmn.data.batches.window_starts`);
* whole-split evaluation: non-overlapping windows covering every validation target once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from ..data import CharTokenizer, CorpusError, check_split_sizes, load_corpus, sequential_windows, split_tokens
from ..data.batches import gather_windows, window_starts
from ..data.corpus import sha256_file
from .base import Batch, Task

TOKENIZER_FILE = "tokenizer.json"


class TextTask(Task):
    """Next-character prediction on a text corpus (``--data``; see :mod:`lmn.data`)."""

    name = "text"
    loss_kind = "next_token"
    whole_split = "val"
    record_key = "corpus"  # config.json's "corpus" entry, as runs have always had it

    def __init__(self, data: str = "tinyshakespeare", train_frac: float = 0.9, block_size: int = 512):
        path, text = load_corpus(data)
        self.tokenizer = CharTokenizer.from_text(text)
        if self.tokenizer.vocab_size < 2:
            raise CorpusError(f"corpus {str(path)!r} holds a single distinct character "
                              f"({self.tokenizer.chars!r}, {len(text):,} times): there is nothing to predict; "
                              "give a text with at least 2 different characters")
        train, val = split_tokens(self.tokenizer.encode(text), train_frac)
        check_split_sizes(train, val, block_size, what=f"corpus {str(path)!r}")
        self.ids = {"train": train, "val": val}
        self.vocab_size, self.seq_len = self.tokenizer.vocab_size, block_size
        self.info = {"path": str(path), "sha256": sha256_file(path), "n_chars": len(text),
                     "vocab_size": self.vocab_size, "n_train": len(train), "n_val": len(val)}

    @classmethod
    def from_config(cls, cfg) -> "TextTask":
        """From a :class:`lmn.trainer.TrainConfig` (``data``, ``train_frac``, ``block_size``)."""
        if cfg.task_options:
            raise ValueError(f"the text task takes no task options, got {', '.join(cfg.task_options)}")
        return cls(cfg.data, cfg.train_frac, cfg.block_size)

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        data = self.ids[split]
        starts = window_starts(len(data), self.seq_len, batch_size, generator)
        return Batch(*gather_windows(data, starts, self.seq_len))

    def whole(self, batch_size: int) -> Iterator[Batch]:
        for x, y in sequential_windows(self.ids[self.whole_split], self.seq_len, batch_size):
            yield Batch(x, y)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss_sum"] / sums["count"]
        return {"loss": loss, "bits_per_char": loss / math.log(2), "tokens": int(sums["count"])}

    def record(self) -> dict:
        return dict(self.info)

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / TOKENIZER_FILE)

    def check_resume(self, run_dir: Path, saved_record: dict) -> None:
        if saved_record.get("sha256") != self.info["sha256"]:
            raise ValueError(f"cannot resume {run_dir}: the corpus differs from the one it was trained on "
                             f"(sha256 {saved_record.get('sha256')} vs {self.info['sha256']})")
        if CharTokenizer.load(run_dir / TOKENIZER_FILE) != self.tokenizer:
            raise ValueError(f"cannot resume {run_dir}: its tokenizer differs from the corpus's characters")

    def describe(self) -> str:
        return f"corpus {self.info['path']} ({self.info['n_chars']:,} chars, vocab {self.vocab_size})"
