"""Documents packed into rows: where they start, and running each one alone.

A packed row of ``T`` tokens holds several documents one after the other. Their boundaries
are given as ``doc_starts``: a ``(B, T)`` bool tensor, True at the first token of every
document (column 0 always starts one when no stream is continued). A model that takes it
computes, for every document, exactly what it computes on that document alone: nothing
from an earlier document of the row is read, and positions count from the document's
start. :func:`doc_starts_from_lengths` builds the tensor from document lengths.

:func:`run_documents` is the simple exact implementation any causal model can use: it
cuts the rows into their documents, right-pads each to the next power of two (at most
twice its length; a causal model's outputs at a position do not depend on later ones, so
the padding changes nothing), runs each group of equal padded length as one batch and puts
the outputs back in place. That is at most ``log2(T) + 1`` calls and at most twice the
tokens, whatever the documents' lengths; autograd runs through the gathers, so gradients
are those of the documents run alone. :func:`block_causal_mask` and
:func:`document_positions` are what an attention model (GPT-2) needs instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """A run of one document inside a row: columns ``start .. start + length - 1`` of
    ``row``; ``continues``: the run is the continuation of a stream (no new document
    starts at its column 0)."""

    row: int
    start: int
    length: int
    continues: bool = False


def check_doc_starts(doc_starts, idx: Tensor, who: str = "doc_starts") -> Tensor:
    """``doc_starts`` as a bool tensor of ``idx``'s shape, or a one-line error."""
    if not isinstance(doc_starts, Tensor):
        raise TypeError(f"{who} must be a (batch, time) bool tensor, True where a document starts; "
                        f"got {type(doc_starts).__name__}")
    if doc_starts.dtype != torch.bool:
        raise TypeError(f"{who} must be a bool tensor, True where a document starts; got dtype {doc_starts.dtype} "
                        "(segment ids s: torch.diff(s, prepend=s[:, :1]) != 0)")
    if tuple(doc_starts.shape) != tuple(idx.shape):
        raise ValueError(f"{who} must have the shape of the token ids {tuple(idx.shape)}, "
                         f"got {tuple(doc_starts.shape)}")
    return doc_starts


def doc_starts_from_lengths(lengths: list[list[int]], device=None) -> Tensor:
    """``doc_starts (B, T)`` of rows made of documents of the given lengths, one list per
    row, each summing to the same ``T``: ``[[3, 5], [8]]`` is two rows of 8 tokens."""
    totals = {sum(row) for row in lengths}
    if len(totals) != 1 or any(n < 1 for row in lengths for n in row):
        raise ValueError(f"every row's document lengths must be >= 1 and add up to the same T, got {lengths}")
    out = torch.zeros(len(lengths), totals.pop(), dtype=torch.bool)
    for r, row in enumerate(lengths):
        at = 0
        for n in row:
            out[r, at] = True
            at += n
    return out.to(device) if device is not None else out


def row_starts(doc_starts: Tensor, continuing: bool = False) -> list[list[int]]:
    """The columns where each row's runs begin, ascending. Column 0 always begins one; with
    ``continuing`` (a stream is continued) it is a new document only where marked."""
    flags = doc_starts.detach().to("cpu").clone()
    if not continuing:
        flags[:, 0] = True
    out = [[] for _ in range(flags.shape[0])]
    for r, c in torch.nonzero(flags).tolist():
        out[r].append(c)
    for r, starts in enumerate(out):
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
    return out


def segments(doc_starts: Tensor, continuing: bool = False) -> list[Segment]:
    """Every row's runs in row order (see :func:`row_starts`); with ``continuing`` a row's
    first run continues the stream unless ``doc_starts[row, 0]``."""
    T = doc_starts.shape[1]
    first_new = doc_starts[:, 0].tolist()
    out = []
    for r, starts in enumerate(row_starts(doc_starts, continuing)):
        for s, e in zip(starts, starts[1:] + [T]):
            out.append(Segment(r, s, e - s, continues=continuing and s == 0 and not first_new[r]))
    return out


def last_run(doc_starts: Tensor, who: str, continuing: bool = False) -> Segment:
    """Every row's last run, which must start at the same column in every row (and
    continue the stream in all or none): a state holds one position for its batch, so the
    state after packed rows is that of equally long last documents. Its ``row`` is 0."""
    last = {}
    for s in segments(doc_starts, continuing):
        last[s.row] = (s.start, s.continues)
    kinds = set(last.values())
    if len(kinds) > 1:
        shown = ", ".join(sorted({str(c) for c, _ in kinds}, key=int))
        mixed = " (some rows continue the stream, some start a document)" if len({c for c, _ in kinds}) == 1 else ""
        raise ValueError(f"{who} needs the last document to start at the same column in every row (a state holds "
                         f"one position for its batch), but the rows' last documents start at columns {shown}"
                         f"{mixed}; run those rows apart")
    start, continues = kinds.pop()
    return Segment(0, start, doc_starts.shape[1] - start, continues)


def _bucket(length: int, T: int) -> int:
    """The padded length of a run: the next power of two, at most ``T``."""
    return min(1 << (length - 1).bit_length(), T)


def run_documents(fn: Callable[[Tensor], Tensor], idx: Tensor, doc_starts: Tensor, pad_id: int = 0,
                  continue_fn: Callable[[list[int], Tensor], Tensor] | None = None) -> Tensor:
    """``fn`` run on every document of the packed rows ``idx (B, T)`` alone, outputs put back
    in place: ``(B, T, ...)``.

    Args:
        fn: ``fn(ids (n, L)) -> (n, L, ...)``, a causal model on new sequences.
        idx: the packed token ids.
        doc_starts: ``(B, T)`` bool, True where a document starts (:func:`check_doc_starts`).
        pad_id: the token id the padding holds (any valid id: it is never read).
        continue_fn: ``continue_fn(rows, ids (n, L)) -> (n, L, ...)``: the rows' streams
            continued by ``ids``; given, a row's first run continues its stream unless
            ``doc_starts[row, 0]`` (the continued-stream form of a prefill).
    """
    B, T = idx.shape
    runs = segments(doc_starts, continuing=continue_fn is not None)
    if len(runs) == B and not any(s.continues for s in runs):  # one new document per row
        return fn(idx)
    groups: dict[tuple[bool, int], list[Segment]] = defaultdict(list)
    for s in runs:
        groups[(s.continues, _bucket(s.length, T))].append(s)
    flat = idx.reshape(-1)
    outs, where = [], []
    for (continues, L), members in sorted(groups.items()):
        base = torch.tensor([s.row * T + s.start for s in members])
        lengths = torch.tensor([s.length for s in members])
        offsets = torch.arange(L)
        valid = offsets[None] < lengths[:, None]  # (n, L)
        index = torch.where(valid, base[:, None] + offsets[None], 0)
        valid_dev = valid.to(idx.device)
        ids = flat[index.to(idx.device)].masked_fill(~valid_dev, pad_id)
        out = continue_fn([s.row for s in members], ids) if continues else fn(ids)
        outs.append(out[valid_dev])  # (n_valid, ...), row-major: the order of index[valid]
        where.append(index[valid])
    where = torch.cat(where)
    inverse = torch.empty_like(where)
    inverse[where] = torch.arange(where.numel())
    out = torch.cat(outs)
    return out.index_select(0, inverse.to(out.device)).view(B, T, *out.shape[1:])


def document_ids(doc_starts: Tensor) -> Tensor:
    """``(B, T)`` int64: the index of the document each token belongs to within its row."""
    ids = doc_starts.long().cumsum(1)
    return ids - ids[:, :1]  # column 0 is document 0 whether it is marked or not


def document_positions(doc_starts: Tensor) -> Tensor:
    """``(B, T)`` int64: each token's position within its document (0 at every start)."""
    B, T = doc_starts.shape
    cols = torch.arange(T, device=doc_starts.device).expand(B, T)
    begins = torch.where(doc_starts, cols, torch.zeros_like(cols))
    begins[:, 0] = 0
    return cols - torch.cummax(begins, dim=1).values


def block_causal_mask(doc_starts: Tensor) -> Tensor:
    """``(B, 1, T, T)`` bool, True where query ``i`` may attend to key ``j``: ``j <= i``
    and both in the same document (a block-diagonal causal mask)."""
    T = doc_starts.shape[1]
    doc = document_ids(doc_starts)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_starts.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def reset_rows(reset, batch_size: int, who: str = "reset") -> list[int]:
    """The rows a step's ``reset`` restarts: ``True``/``False`` (every row or none) or a
    ``(B,)`` / ``(B, 1)`` bool tensor (or array), True where a new document begins."""
    if isinstance(reset, bool):
        return list(range(batch_size)) if reset else []
    flags = torch.as_tensor(reset)
    if flags.dim() == 2 and flags.shape[1] == 1:
        flags = flags[:, 0]
    if flags.dtype != torch.bool or flags.dim() != 1 or flags.shape[0] != batch_size:
        raise ValueError(f"{who} must be True/False or a ({batch_size},) bool tensor (one flag per stream), "
                         f"got {'dtype ' + str(flags.dtype) + ' ' if flags.dtype != torch.bool else ''}"
                         f"shape {tuple(flags.shape)}")
    return torch.nonzero(flags.detach().to("cpu")).flatten().tolist()


def format_rows(rows: list[int], most: int = 8) -> str:
    """``[1, 3, 4]`` as ``1, 3, 4`` (the first ``most``, then how many more)."""
    more = f" and {len(rows) - most} more" if len(rows) > most else ""
    return ", ".join(str(r) for r in rows[:most]) + more
