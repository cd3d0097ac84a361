"""Train/validation split and batches of the paper's protocol.

* split: the first ``train_frac`` (90%) of the token stream trains, the rest validates;
* training and the periodic estimate: ``batch_size`` windows of ``block_size`` tokens at
  uniformly random offsets, targets shifted by one (nanoGPT's ``get_batch``), drawn from
  an explicit ``torch.Generator`` so that a run is a function of its seed;
* whole-split evaluation: consecutive non-overlapping windows covering every target of
  the split once (the last window may be shorter).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .corpus import CorpusError


def split_tokens(ids: Tensor, train_frac: float = 0.9) -> tuple[Tensor, Tensor]:
    """``ids (N,)`` -> ``(train, val)``: the first ``int(train_frac * N)`` tokens and the rest."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac!r}")
    n = int(train_frac * len(ids))
    return ids[:n], ids[n:]


def check_split_sizes(train: Tensor, val: Tensor, block_size: int, what: str = "corpus",
                      unit: str = "characters") -> None:
    """Each split must hold at least one full window plus its shifted target (``unit``: what
    the ids are, in the message: characters, or tokens of a byte or BPE tokenizer).

    Raises:
        CorpusError: naming the sizes and what to change.
    """
    need = block_size + 1
    if len(train) < need or len(val) < need:
        total = len(train) + len(val)
        raise CorpusError(
            f"{what} is too short: {total} {unit} give a train split of {len(train)} and a validation "
            f"split of {len(val)}, but each needs at least block_size + 1 = {need}; use a longer corpus "
            f"(at least about {need * 10 + 10} {unit}) or a smaller --block-size"
        )


def window_starts(n_tokens: int, block_size: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """Random window offsets ``(batch_size,)`` in ``[0, n_tokens - block_size)``."""
    return torch.randint(n_tokens - block_size, (batch_size,), generator=generator)


def gather_windows(data: Tensor, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs and targets ``(B, block_size)`` beginning at ``starts (B,)``."""
    offsets = starts[:, None] + torch.arange(block_size)  # (B, T)
    return data[offsets], data[offsets + 1]


def get_batch(
    data: Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``data``: ``x, y (B, T)`` with ``y[:, t] = x[:, t + 1]``
    in the stream."""
    return gather_windows(data, window_starts(len(data), block_size, batch_size, generator), block_size)


def sequential_starts(n_tokens: int, block_size: int, batch_size: int) -> Iterator[tuple[Tensor, int]]:
    """``(starts (b,), length)`` of the non-overlapping windows that cover every target of a
    stream of ``n_tokens`` tokens once (targets ``1 .. n_tokens - 1``): full windows of
    ``block_size``, ``batch_size`` at a time, then one shorter window holding the remainder
    (what :func:`sequential_windows` gathers; :class:`lmn.data.dataset.TokenSplit` reads the
    same windows from disk)."""
    n_targets = n_tokens - 1
    n_full = n_targets // block_size
    for first in range(0, n_full, batch_size):
        yield torch.arange(first, min(first + batch_size, n_full)) * block_size, block_size
    rest = n_targets - n_full * block_size
    if rest:
        yield torch.tensor([n_full * block_size]), rest


def sequential_windows(data: Tensor, block_size: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Non-overlapping windows covering every target ``data[1:]`` exactly once, batched.

    Full windows come ``batch_size`` at a time; a final shorter window holds the remainder.
    """
    for starts, length in sequential_starts(len(data), block_size, batch_size):
        yield gather_windows(data, starts, length)
