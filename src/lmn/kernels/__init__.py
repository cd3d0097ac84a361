"""Optional fused kernels. Importing this package imports no Triton: :func:`use_fused`
decides from the setting and the tensor whether a Triton path runs (its module is
imported only then):

* :mod:`lmn.kernels.triton_sva`: single-vector attention of the parallel form
  (:meth:`lmn.attention.SingleVectorAttention.forward` without a prefix), every stride,
  read rule, bank count and expander.
* :mod:`lmn.kernels.triton_tree`: the tree build (:meth:`lmn.memory.LogMemory.build`) for
  the Linear summarizer without expander, every stride and bank count. One launch builds
  ``S = floor(log_k 256)`` levels (one program per aligned segment of ``k**S`` tokens,
  batch and bank, each level written and read back after a barrier), so a length-``T``
  build takes ``ceil(log_k T / S)`` launches instead of one summarizer call per level;
  backward walks the same segments top-down, then one launch forms the weight and bias
  gradients of all levels. Other summarizers and the expander take the PyTorch loop.

Both are switched by ``LMN.fused_kernels`` and give the PyTorch path's results to
float32 rounding."""

from __future__ import annotations

import importlib.util
import os

FUSED_SETTINGS = ("auto", True, False)


def check_setting(value) -> None:
    if value not in FUSED_SETTINGS or (value not in ("auto",) and not isinstance(value, bool)):
        raise ValueError(f"fused_kernels must be 'auto', True or False, got {value!r}")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_fused(setting, x, d_head: int) -> bool:
    """Whether a fused kernel runs on ``x`` (single-vector attention with heads of width
    ``d_head``; the tree build passes 0, its kernel tiles the width).

    ``"auto"``: on CUDA tensors when Triton imports. ``True``: whenever the kernel covers
    the input (on CPU only under Triton's interpreter, ``TRITON_INTERPRET=1``; a clear
    error otherwise). ``False``: never. Inputs the kernel does not cover (float64, a head
    wider than 256, more than 2**30 positions) always take the PyTorch path."""
    if setting is False:
        return False
    covered = x.dtype in _DTYPES() and d_head <= 256 and x.shape[1] < 2**30
    if not covered:
        return False
    if setting == "auto":
        return x.is_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("fused_kernels=True needs triton (pip install 'torch-lmn[gpu]')")
    if not x.is_cuda and not interpreting():
        raise RuntimeError("fused_kernels=True on a CPU tensor needs Triton's interpreter (TRITON_INTERPRET=1)")
    return True


def _DTYPES():
    import torch

    return (torch.float32, torch.bfloat16, torch.float16)
