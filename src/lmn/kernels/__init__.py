"""Optional fused kernels. Importing this package imports no Triton: :func:`use_fused`
decides from the setting and the tensor whether the Triton path
(:mod:`lmn.kernels.triton_sva`, imported only then) runs."""

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
    """Whether single-vector attention over ``x`` runs the Triton kernel.

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
        raise RuntimeError("fused_kernels=True needs triton (pip install 'lmn[gpu]')")
    if not x.is_cuda and not interpreting():
        raise RuntimeError("fused_kernels=True on a CPU tensor needs Triton's interpreter (TRITON_INTERPRET=1)")
    return True


def _DTYPES():
    import torch

    return (torch.float32, torch.bfloat16, torch.float16)
