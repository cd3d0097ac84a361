"""Decoding with the whole streaming step replayed as one CUDA graph (issue 13, item 3).

    from lmn.graphs import GraphStepper

    stepper = GraphStepper(model, batch_size=1)      # captures on the model's CUDA device
    _, state = model.prefill(prompt)                 # any LMN prefill (or none)
    stepper.load(state)
    logits = stepper.step(tokens)                    # (B,) ids -> (B, vocab), one graph replay

On a GPU, :meth:`lmn.LMN.step` is bound by kernel launches: a few hundred small kernels
per token (~3 ms at the paper size whatever the batch, see ``docs/results/efficiency.md``),
and it cannot be captured as it is, because the state's per-level tensors change shape as
the counter carries. :class:`lmn.export.StreamStep` computes the same step as a pure
function of fixed-shape tensors (the exported step's state layout, every stream carrying
its own position), so it is captured here once -- the step and the copy of the next state
into the graph's own input buffers -- and each token then costs one graph launch.

Without a CUDA device (or with ``capture=False``) the stepper runs the same buffers and
the same function eagerly: that is how it is tested on a CPU (``tests/runtime/test_graphs.py``,
against ``LMN.step``); the captured graph replays exactly these kernels. It covers what
:class:`~lmn.export.StreamStep` covers (any stride and read rule; no expander, no pinned
memory) and refuses the rest, and streams of at most ``max_tokens`` tokens (its
``capacity``; a model with ``max_level`` has none).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .documents import reset_rows
from .export import DEFAULT_MAX_TOKENS, StreamStep, restart_rows
from .validation import check_int

WARMUP_CALLS = 3  # eager calls on a side stream before capture (CUDA's allocator and lazy inits settle)


class GraphStepper:
    """A fixed batch of streams decoded one token per call through a captured step.

    Args:
        model: an :class:`lmn.LMN` in eval mode (its weights are read at capture time:
            capture again after changing them).
        batch_size: streams per call (fixed: a graph has fixed shapes).
        max_tokens: the longest stream the state must hold (sets the state's levels).
        capture: capture a CUDA graph (default: when the model is on a CUDA device);
            ``False`` runs the same step eagerly on the same buffers.
    """

    def __init__(self, model, batch_size: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS, capture: bool | None = None):
        check_int("batch_size", batch_size, min=1)
        self.fn = StreamStep(model, max_tokens)  # refuses what it cannot run (expander, memory mechanisms)
        device = model.head.weight.device
        if capture is None:
            capture = device.type == "cuda"
        if capture and device.type != "cuda":
            raise ValueError(f"capture=True needs the model on a CUDA device, it is on {device}")
        if model.training:
            raise ValueError("GraphStepper decodes: put the model in eval mode first (model.eval())")
        self.batch_size, self.capture, self.capacity = batch_size, capture, self.fn.capacity
        self.buffers = self.fn.initial_state(batch_size)  # pos, nodes, slot_q, slot_v: the graph's inputs
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.count = 0  # tokens consumed (host side: no synchronisation per step)
        self.graph, self.logits = None, None
        if capture:
            self._capture()

    @torch.no_grad()
    def _advance(self) -> Tensor:
        """One step on the buffers: run the step, copy the next state into its inputs."""
        b = self.buffers
        logits, pos, nodes, slot_q, slot_v = self.fn(self.token, b["pos"], b["nodes"], b["slot_q"], b["slot_v"])
        for name, new in (("pos", pos), ("nodes", nodes), ("slot_q", slot_q), ("slot_v", slot_v)):
            b[name].copy_(new)
        return logits

    def _capture(self) -> None:
        saved = {name: t.clone() for name, t in self.buffers.items()}
        side = torch.cuda.Stream(device=self.token.device)
        side.wait_stream(torch.cuda.current_stream(self.token.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._advance()
        torch.cuda.current_stream(self.token.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._advance()
        for name, t in saved.items():  # the warm-up calls and the capture touched the state
            self.buffers[name].copy_(t)

    @torch.no_grad()
    def load(self, state=None) -> "GraphStepper":
        """Start from an :class:`lmn.LMNState` (e.g. after ``model.prefill``) of this batch
        size, or from empty streams (``None``)."""
        if state is None:
            fresh = self.fn.initial_state(self.batch_size)
            count = 0
        else:
            if getattr(state, "batch_size", None) != self.batch_size:
                raise ValueError(f"state holds {getattr(state, 'batch_size', '?')} streams; this stepper was "
                                 f"made for batch_size={self.batch_size}")
            fresh, count = self.fn.state_from(state), state.pos
        for name, t in fresh.items():
            self.buffers[name].copy_(t)
        self.count = count
        return self

    @torch.no_grad()
    def step(self, tokens: Tensor, reset=None) -> Tensor:
        """Consume one token per stream (``(B,)`` ids); returns the logits ``(B, vocab)``.

        ``reset``: rows whose token starts a new document (``True`` or a ``(B,)`` bool
        tensor): those streams restart before it (:func:`lmn.export.restart_rows`; the
        step keeps a position per row), the others go on."""
        tokens = torch.as_tensor(tokens).reshape(-1)
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"step takes {self.batch_size} tokens (one per stream), got {tokens.shape[0]}")
        if reset is not None and reset is not False:
            rows = reset_rows(reset, self.batch_size, "GraphStepper.step's reset")
            restart_rows(self.buffers, rows)  # (in place: the graph reads these buffers)
            if len(rows) == self.batch_size:
                self.count = 0  # (otherwise the longest stream's count stays: the capacity check is per batch)
        if self.capacity is not None and self.count >= self.capacity:
            raise ValueError(f"the streams are full: this stepper holds {self.capacity} tokens (max_tokens); "
                             "make one with a larger max_tokens")
        self.token.copy_(tokens)
        self.count += 1
        if self.graph is None:
            return self._advance()
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is overwritten by the next replay

    @property
    def nbytes(self) -> int:
        """Bytes of the state buffers (what the streams hold)."""
        return sum(t.numel() * t.element_size() for t in self.buffers.values())
