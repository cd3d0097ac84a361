"""Sampling from an LMN over a step interface: prefill the prompt in parallel, then one
streaming step per new token, by :meth:`lmn.LMN.step` or by the native C step.

A *stepper* is anything with ``step(tokens (B,)) -> logits (B, vocab)`` that continues
a stream; :class:`ModelStepper` wraps a model and its state, and
:class:`lmn.native.NativeStepper` is the other one. This module imports neither the
model nor the native module at import time: ``lmn.model`` calls into it, not back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .validation import check_int


class ModelStepper:
    """The stepper of :meth:`lmn.LMN.step`: holds the model and its streaming state."""

    def __init__(self, model, state):
        self.model, self.state = model, state

    def step(self, tokens: Tensor) -> Tensor:
        logits, self.state = self.model.step(tokens, self.state)
        return logits


def _check_sampling(max_new_tokens, temperature, top_k) -> None:
    check_int("max_new_tokens", max_new_tokens, min=0)
    if not (temperature >= 0) or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    check_int("top_k", top_k, min=1, allow_none=True)


@torch.no_grad()
def generate_stream(model, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                    generator: torch.Generator | None = None, native: bool = False):
    """Prefill ``idx (B, T)`` in one parallel pass, then yield ``max_new_tokens`` sampled
    ``(B,)`` tokens, one streaming step each (memory O(log n)). ``temperature=0`` is
    greedy. ``native=True`` steps through :class:`lmn.native.NativeStepper` (CPU, a C
    compiler needed)."""
    _check_sampling(max_new_tokens, temperature, top_k)
    if max_new_tokens == 0:
        return
    logits, state = model(idx, return_state=True)
    logits = logits[:, -1]
    if native:
        from .native import NativeStepper

        stepper = NativeStepper(model, batch_size=idx.shape[0]).load_state(state)
    else:
        stepper = ModelStepper(model, state)
    for n in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_k, generator)
        yield tok
        if n + 1 < max_new_tokens:
            logits = stepper.step(tok)


@torch.no_grad()
def generate(model, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, native: bool = False) -> Tensor:
    """:func:`generate_stream` collected: returns ``(B, T + max_new_tokens)``."""
    pieces = [idx]
    for tok in generate_stream(model, idx, max_new_tokens, temperature, top_k, generator, native):
        pieces.append(tok[:, None])
    return torch.cat(pieces, dim=1)


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator=None) -> Tensor:
    """Sample ids ``(B,)`` from ``logits (B, V)``; greedy when ``temperature == 0``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
