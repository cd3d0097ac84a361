"""The bench kinds of LMN's runtime forms: the exported step in onnxruntime and the step
captured as one CUDA graph.

==================  =========================================================================
kind                what it is
==================  =========================================================================
``lmn-onnx``        PyTorch prefill, then every step through the exported ONNX step
                    (:func:`lmn.export.export_onnx`) in onnxruntime (:class:`lmn.export.OrtStepper`)
``lmn-graph``       PyTorch prefill, then every step a replay of the fixed-shape step captured
                    as one CUDA graph (:class:`lmn.graphs.GraphStepper`)
==================  =========================================================================

The runtime modules (:mod:`lmn.export`, :mod:`lmn.graphs`) sit below the registry and know
nothing of it: the kinds are defined here, from them (``tests/project/test_layers.py``).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ..config import LMNConfig
from ..export import DEFAULT_MAX_TOKENS, OrtStepper, StreamStep, export_onnx, levels_for
from ..graphs import GraphStepper
from ..model import LMN
from .lmn import LMNDecoder, lmn_variant


# ----------------------------------------------------------------------------- lmn-onnx
def _onnx_unavailable() -> str | None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)} (pip install 'torch-lmn[export]')" if missing else None


class OnnxDecoder:
    """``lmn bench decode`` adapter: PyTorch prefill (``LMN.prefill``), then every step through
    the exported ONNX step in onnxruntime (exported when the decoder is made, before timing).
    Its state is the fixed-capacity one of :class:`~lmn.export.StreamStep` for ``max_tokens``."""

    def __init__(self, model: LMN, max_chunk: int = 1024, max_tokens: int = DEFAULT_MAX_TOKENS):
        self.model, self.max_chunk, self.state = model, max_chunk, None
        self.step_fn = StreamStep(model, max_tokens)
        self._dir = tempfile.TemporaryDirectory(prefix="lmn-onnx-")
        path = export_onnx(model, Path(self._dir.name) / "step.onnx", max_tokens)
        self.ort = OrtStepper(path, threads=torch.get_num_threads())
        self.handed_over = False

    def prefill(self, chunk: Tensor) -> None:
        if self.handed_over:
            raise RuntimeError("prefill after onnxruntime decode steps is not supported by this benchmark")
        _, self.state = self.model.prefill(chunk, self.state, max_chunk=self.max_chunk)

    def step(self, token: Tensor) -> Tensor:
        if not self.handed_over:
            if self.state is not None:
                self.ort.load(self.step_fn.state_from(self.state))
            self.state, self.handed_over = None, True
        return torch.from_numpy(self.ort.step(token.reshape(-1).cpu().numpy()))

    def state_bytes(self) -> int:
        return self.ort.nbytes  # the fixed-capacity buffers: what a deployed stream holds


def _fixed_state_bytes(config: dict, positions: int) -> int:
    """Bytes of the fixed-capacity state (``StreamStep`` for ``DEFAULT_MAX_TOKENS``, float32)
    of one stream, whatever ``positions``: what ``lmn-onnx`` and ``lmn-graph`` hold."""
    cfg = LMNConfig.from_dict(config)
    levels = levels_for(DEFAULT_MAX_TOKENS, cfg.stride)
    cap = getattr(cfg, "max_level", None)
    levels = min(levels, cap) if cap is not None else levels
    return 3 * cfg.n_layers * (levels + 1) * (cfg.stride - 1) * cfg.n_banks * cfg.d_model * 4 + 8


# ----------------------------------------------------------------------------- lmn-graph
class GraphDecoder(LMNDecoder):
    """``lmn bench decode`` adapter: PyTorch prefill (``LMN.prefill``), then every step a
    replay of the captured step (captured at the first step, i.e. in the warm-up)."""

    def __init__(self, model, max_chunk: int = 1024):
        if model.head.weight.device.type != "cuda":
            raise ValueError("lmn-graph decodes on a CUDA device only (CUDA graphs); use --device cuda")
        super().__init__(model, max_chunk)
        self.hands_over = True

    def _take_over(self, token: Tensor) -> None:
        self.stepper = GraphStepper(self.model, batch_size=token.reshape(-1).shape[0]).load(self.state)


def _graph_unavailable() -> str | None:
    return None if torch.cuda.is_available() else "needs a CUDA device (CUDA graphs)"


KINDS = {
    "lmn-onnx": lmn_variant(
        "lmn-onnx", {"decode"}, cpu_only=True, unavailable=_onnx_unavailable, state_bytes=_fixed_state_bytes,
        decoder=lambda model, max_chunk: OnnxDecoder(model, max_chunk),
        describe={"decode": "the exported ONNX step (`lmn export`, fixed-capacity state for 2**31 - 1 tokens) in "
                            "onnxruntime, one thread, after the same PyTorch prefill",
                  "state": "the exported step's fixed-capacity state tensors"}),
    "lmn-graph": lmn_variant(
        "lmn-graph", {"decode"}, unavailable=_graph_unavailable, state_bytes=_fixed_state_bytes,
        decoder=lambda model, max_chunk: GraphDecoder(model, max_chunk),
        describe={"decode": "the fixed-shape streaming step (`lmn.export.StreamStep`) captured as one CUDA graph "
                            "(`lmn.graphs`), after the same PyTorch prefill",
                  "state": "the fixed-capacity state tensors of the captured step"}),
}
