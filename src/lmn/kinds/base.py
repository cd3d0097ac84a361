"""What a model kind is: :class:`ModelKind`, and the decode interface bench uses.

A *kind* is everything the trainer, ``lmn bench``, ``lmn generate`` and the results code
need to know about one model family, so that none of them names a kind:

* ``config_class`` / ``model_class``: a dataclass config (``to_dict``/``from_dict``,
  defaults = the paper's parameter budget) and a module ``model_class(config)`` with
  ``forward(idx (B, T) int64) -> logits (B, T, vocab)``;
* ``sizes``: overrides of the defaults per named size: ``"paper"`` (the defaults) and
  ``"large"`` for bench, chosen to match LMN's parameter count, ``"tiny"`` for smoke runs
  (``lmn train --model-size``);
* ``decoder``: the adapter that prefills a context in chunks and then decodes one token at
  a time, reporting its state's (or cache's) bytes (``lmn bench decode``, ``lmn probe``);
* ``max_positions``: the longest sequence the model takes;
* ``bench``: a :class:`BenchSpec`, what only ``lmn bench`` reads (how a config is widened
  to a benchmarked context, the parameters its tables report, the phrases that describe it,
  where it cannot run, ...).

Kind files import heavy dependencies (``transformers``) only when a model is built, so
reading the registry is cheap and ``import lmn`` stays free of training extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

BENCHES = ("train", "decode", "bench-train")


class Decoder:
    """Feed a context in chunks, then one token at a time; report the state's bytes."""

    def prefill(self, chunk: Tensor) -> None:  # (1, C) ids
        raise NotImplementedError

    def step(self, token: Tensor) -> Tensor:  # (1,) ids -> (1, vocab) logits
        raise NotImplementedError

    def state_bytes(self) -> int:
        raise NotImplementedError


def _no_limit(config) -> int | None:
    return None


def _same_config(config: dict, positions: int | None) -> dict:
    return config


def _available() -> str | None:
    return None


def _call_forward(model: nn.Module, idx: Tensor) -> Tensor:
    return model(idx)


def count_parameters(model: nn.Module, config) -> int:
    """Every distinct parameter (a tied weight once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class BenchSpec:
    """What ``lmn bench`` (and only it) needs to know about a kind, attached to the kind's
    record as ``ModelKind.bench`` so that a kind stays one file.

    Attributes:
        describe: ``{bench: phrase}``: how ``decode`` / ``bench-train`` run it, for the
            rendered tables; ``describe["state"]``: what its decode state is.
        compare_to: bench tables add a ratio column/table against this kind.
        with_positions: ``with_positions(config_dict, n) -> config_dict`` able to reach n
            positions (``n=None``: the config as counted in ``params``).
        reported_params: ``reported_params(model, config) -> int`` for bench tables.
        bench_forward: ``bench_forward(model, idx) -> logits`` timed by ``lmn bench train``.
        prepare: ``prepare(model) -> model`` applied after building (bench variants).
        unavailable: ``unavailable() -> str | None``: why it cannot run here, if it cannot.
        cpu_only: decode runs on the CPU only.
        long_decode: decode points get ``--lmn-timeout`` instead of ``--timeout``.
    """

    describe: dict = field(default_factory=dict)
    compare_to: str | None = None
    with_positions: Callable[[dict, int | None], dict] = _same_config
    reported_params: Callable[[nn.Module, Any], int] = count_parameters
    bench_forward: Callable[[nn.Module, Tensor], Tensor] = _call_forward
    prepare: Callable[[nn.Module], nn.Module] | None = None
    unavailable: Callable[[], str | None] = _available
    cpu_only: bool = False
    long_decode: bool = False


@dataclass(frozen=True)
class ModelKind:
    """One registered model kind (see the module docstring for the contract).

    Attributes:
        name: the kind's name on the command line (``--model NAME``).
        title: its name in tables ("GPT-2").
        config_class, model_class: the config dataclass and the module built from it
            (which keeps its config as ``.config``, with ``vocab_size``).
        decoder: ``decoder(model, max_chunk) -> Decoder``: chunked prefill, then one token
            at a time (``lmn bench decode``, the state sizes of ``lmn probe``).
        sizes: ``{size: config overrides}``: ``paper`` (= the defaults), ``large``, ``tiny``.
        uses: where it may be used: ``train`` (``lmn train``), ``decode``
            (``lmn bench decode``), ``bench-train`` (``lmn bench train``).
        max_positions: ``max_positions(config_dict) -> int | None``, the longest input.
        state_bytes: ``state_bytes(config_dict, positions) -> int`` predicted decode state/cache
            bytes at batch 1, float32 (None: not known in advance).
        enable_checkpointing: switch the model to recompute activations in backward.
        requires: extra packages whose versions a run records.
        paper: the paper's Table 1 figures for this kind (``{"params", "val_loss"}``).
        preset: overrides of the paper's training protocol for the preset ``paper-<name>``
            of ``lmn train`` (``{}``: the protocol as it is; None: no preset).
        stream: ``stream(model, idx, n, temperature, top_k, generator, native)`` yielding
            sampled ``(B,)`` tokens for ``lmn generate`` (None: not supported).
        bench: what only ``lmn bench`` reads (:class:`BenchSpec`).
    """

    name: str
    title: str
    config_class: type
    model_class: type
    decoder: Callable[[nn.Module, int], Decoder]
    sizes: dict = field(default_factory=lambda: {"paper": {}})
    uses: frozenset = frozenset(BENCHES)
    max_positions: Callable[[dict], int | None] = _no_limit
    state_bytes: Callable[[dict, int], int] | None = None
    enable_checkpointing: Callable[[nn.Module], None] | None = None
    requires: tuple = ()
    paper: dict | None = None
    preset: dict | None = None
    stream: Callable | None = None
    bench: BenchSpec = field(default_factory=BenchSpec)

    def build(self, config) -> nn.Module:
        """A freshly initialised model (seed torch's global RNG first to reproduce it)."""
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        return self.model_class(config)

    def size_config(self, size: str) -> dict:
        """The full config dict at the named ``size``."""
        if size not in self.sizes:
            raise ValueError(f"model {self.name!r} has no size {size!r}; it has {', '.join(self.sizes)}")
        return self.config_class(**self.sizes[size]).to_dict()

    def normalize(self, config: dict) -> dict:
        """``config`` completed with the defaults of the config class and validated, so that
        configs saved before a field was added compare equal."""
        return self.config_class.from_dict({**self.config_class().to_dict(), **config}).to_dict()


def hf_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing of a wrapper around a transformers model (``model.hf``)."""
    inner = getattr(model, "hf", model)
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.x spelling
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"gradient_checkpointing is not supported for model {type(model).__name__}")
