"""LMN as a model kind, and its bench variants.

==================  =========================================================================
kind                what it is
==================  =========================================================================
``lmn``             :class:`lmn.LMN` (parallel form to train; ``LMN.step`` to decode)
``lmn-native``      the same model decoding through :class:`lmn.native.NativeStepper` (C, CPU)
``lmn-ckpt``        the same model with ``gradient_checkpointing`` (``lmn bench train`` only)
``lmn-materialized``  the forward that gathers every slot into a ``(B, T, slots, d)`` tensor
                    (:mod:`lmn.materialized`; ``lmn bench train`` only)
==================  =========================================================================

Sizes: ``paper`` = ``LMNConfig()`` (d 32, 4 layers, 4 heads, 2 banks: 71,489 parameters
for 65 symbols); ``large`` = d 256, 8 layers, 8 heads, 2 banks: 8,449,089; ``tiny`` (the
``smoke`` preset) = d 16, 2 layers, 2 heads.
"""

from __future__ import annotations

from dataclasses import fields, replace

from torch import Tensor, nn

from ..config import LMNConfig
from ..model import LMN
from .base import BenchSpec, Decoder, ModelKind

SIZES = {"paper": {}, "large": {"d_model": 256, "n_layers": 8, "n_heads": 8, "n_banks": 2},
         "tiny": {"d_model": 16, "n_layers": 2, "n_heads": 2},
         # nanoGPT's Shakespeare-char shape (d 384, 6 layers, 6 heads), ff 2 x d to match its
         # ~10.7M parameters with the paper's two banks (issue 13; preset nanogpt-lmn)
         "nanogpt": {"d_model": 384, "n_layers": 6, "n_heads": 6, "n_banks": 2, "ff_mult": 2}}


class LMNDecoder(Decoder):
    """Chunked ``model.prefill`` then ``model.step``; with ``native`` the steps run through
    the C stepper, which takes over the prefilled state at the first step. Subclasses hand
    over to another stepper by overriding :meth:`_take_over` (``lmn.kinds.lmn_runtimes.GraphDecoder``)."""

    def __init__(self, model, max_chunk: int = 1024, native: bool = False):
        self.model, self.max_chunk, self.state = model, max_chunk, None
        self.stepper = None
        self.hands_over = native  # the steps run through another stepper after the prefill
        if native:
            from ..native import NativeStepper

            self.stepper = NativeStepper(model, batch_size=1)  # compiles the kernel once, before timing
        self.handed_over = False  # the prefilled state moved into that stepper

    def prefill(self, chunk: Tensor) -> None:
        if self.handed_over:
            raise RuntimeError("prefill after the decode steps began is not supported by this benchmark")
        _, self.state = self.model.prefill(chunk, self.state, max_chunk=self.max_chunk)

    def _take_over(self, token: Tensor) -> None:
        """Move the prefilled state (None: nothing prefilled) into ``self.stepper``."""
        if self.state is not None:
            self.stepper.load_state(self.state)

    def step(self, token: Tensor) -> Tensor:
        if self.hands_over:
            if not self.handed_over:
                self._take_over(token)
                self.state, self.handed_over = None, True
            return self.stepper.step(token)
        if self.state is None:
            self.state = self.model.init_state(1, device=token.device)
        return self.model.step(token, self.state)[0]

    def state_bytes(self) -> int:
        if self.handed_over:
            nbytes = getattr(self.stepper, "nbytes", None)
            return nbytes if nbytes is not None else self.stepper.to_state().nbytes
        return 0 if self.state is None else self.state.nbytes


def _state_bytes(config: dict, positions: int) -> int:
    from ..state import state_nbytes

    return state_nbytes(LMNConfig.from_dict(config), 1, positions, 4)


def _checkpointing(model: nn.Module) -> None:
    model.gradient_checkpointing = True  # a runtime switch of lmn.LMN


def _with_checkpointing(model: nn.Module) -> nn.Module:
    _checkpointing(model)
    return model


def _materialized_forward(model: nn.Module, idx: Tensor) -> Tensor:
    from ..materialized import materialized_forward

    return materialized_forward(model, idx)


def _no_compiler() -> str | None:
    from ..native import find_compiler

    return None if find_compiler() is not None else "no C compiler found (the native step is compiled on first use)"


def _stream(model, idx, max_new_tokens, temperature, top_k, generator, native):
    """Tokens sampled by the model's streaming generation, one ``(B,)`` tensor at a time."""
    stream = getattr(model, "generate_stream", None)
    if stream is not None:
        yield from stream(idx, max_new_tokens, temperature, top_k, generator, native)
        return
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                         native=native)
    yield from out[:, idx.shape[1]:].unbind(1)


LMN_KIND = ModelKind(
    name="lmn",
    title="LMN",
    config_class=LMNConfig,
    model_class=LMN,
    decoder=lambda model, max_chunk: LMNDecoder(model, max_chunk),
    sizes=SIZES,
    state_bytes=_state_bytes,
    enable_checkpointing=_checkpointing,
    paper={"params": 71_489, "val_loss": 1.7742},
    preset={},
    stream=_stream,
    bench=BenchSpec(
        long_decode=True,
        compare_to="gpt2",
        describe={"decode": "steps with `LMN.step` (PyTorch)", "bench-train": "parallel form",
                  "state": "LMN's streaming state (`state.nbytes`)"}),
)

_BENCH_FIELDS = frozenset(f.name for f in fields(BenchSpec))


def lmn_variant(name: str, uses: set, describe: dict, **changes) -> ModelKind:
    """A bench variant of the ``lmn`` kind: same model and sizes, no preset, no Table 1
    (here and in ``lmn.kinds.lmn_runtimes``: ``lmn-onnx``, ``lmn-graph``). ``describe``
    and the ``changes`` named after :class:`BenchSpec` fields change its ``bench`` record, the
    others the kind itself."""
    bench = {k: changes.pop(k) for k in list(changes) if k in _BENCH_FIELDS}
    return replace(LMN_KIND, name=name, uses=frozenset(uses), paper=None, preset=None, stream=None,
                   bench=replace(LMN_KIND.bench, describe=describe, **bench), **changes)


KINDS = {
    "lmn": LMN_KIND,
    "lmn-native": lmn_variant(
        "lmn-native", {"decode"}, cpu_only=True, unavailable=_no_compiler,
        decoder=lambda model, max_chunk: LMNDecoder(model, max_chunk, native=True),
        describe={"decode": "with `lmn.native.NativeStepper` (the same computation as one C call per token, "
                            "after the same PyTorch prefill)"}),
    "lmn-ckpt": lmn_variant(
        "lmn-ckpt", {"bench-train"}, prepare=_with_checkpointing, compare_to=None,
        describe={"bench-train": "the same with `gradient_checkpointing` (blocks recomputed in backward; from "
                                 "commit 8974a17 on, feed-forward layers also in recomputed row chunks)"}),
    "lmn-materialized": lmn_variant(
        "lmn-materialized", {"bench-train"}, bench_forward=_materialized_forward, compare_to=None,
        describe={"bench-train": "gathers every position's slots into a (B, T, slots, d) tensor"}),
}
