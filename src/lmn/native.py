"""A native (C) streaming step for inference: the whole model in one call per token.

At the paper's size (d = 32) a PyTorch streaming step is ~150 tiny tensor operations and
its time is framework dispatch, not arithmetic (see ``docs/results/efficiency.md``). This
module compiles ``kernels/lmn_step.c`` with the system C compiler on first use (cached per
machine under ``$LMN_KERNEL_CACHE`` or ``~/.cache/lmn/kernels``) and runs the same
computation as :meth:`lmn.LMN.step` in a single call::

    from lmn.native import NativeStepper

    stepper = NativeStepper(model, batch_size=1)     # snapshot of the weights
    _, state = model.prefill(prompt)                  # parallel prefill ...
    stepper.load_state(state)                         # ... continued natively
    logits = stepper.step(next_ids)                   # (B,) ids -> (B, vocab) logits
    state = stepper.to_state()                        # back to an LMNState at any time

Scope: CPU, float32 or float64, ``expand = 0`` (any summarizer, banks, heads, positional
encoding). The weights are copied when the stepper is made (like an exported model):
after changing the model's parameters make a new stepper. The state is a fixed-capacity
buffer of ``max_levels`` tree levels per layer (default 40: streams of up to 2**41 - 1
tokens); its meaningful part is the O(log n) state of :class:`lmn.LMNState`. A stepper
owns one scratch buffer: use one stepper per thread.

Tested against :meth:`lmn.LMN.step` and :func:`lmn.reference_forward` in
``tests/test_native.py``.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .model import LMN
from .state import LayerState, LMNState, n_levels, state_nbytes

_SOURCE = Path(__file__).with_name("kernels") / "lmn_step.c"
_CFLAGS = ["-O3", "-std=c99", "-fPIC", "-shared"]
_REAL = {torch.float32: "float", torch.float64: "double"}
_LIBS: dict[torch.dtype, ctypes.CDLL] = {}


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept: ``$LMN_KERNEL_CACHE``, else the user cache."""
    env = os.environ.get("LMN_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmn" / "kernels"


def find_compiler() -> str | None:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _load(dtype: torch.dtype) -> ctypes.CDLL:
    if dtype in _LIBS:
        return _LIBS[dtype]
    cc = find_compiler()
    source = _SOURCE.read_bytes()
    flags = [*_CFLAGS, f"-DREAL={_REAL[dtype]}"]
    # one build per source, compiler, flags and machine type (a home directory may be shared)
    tag = hashlib.sha256(source + " ".join([str(cc), *flags, platform.machine(), platform.system()]).encode())
    tag = tag.hexdigest()[:16]
    cache = kernel_cache_dir()
    lib_path = cache / f"lmn_step_{_REAL[dtype]}_{tag}.so"
    if not lib_path.exists():
        if cc is None:
            raise RuntimeError(
                "lmn.native needs a C compiler to build its kernel (none of $CC, cc, gcc, clang "
                "was found on the PATH); install one (e.g. `apt install gcc`) or use LMN.step"
            )
        try:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        except OSError as exc:
            raise RuntimeError(
                f"cannot write the compiled kernel to {cache} ({exc}); point $LMN_KERNEL_CACHE at a writable directory"
            ) from exc
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling {_SOURCE} with {cc} failed:\n{proc.stderr.strip()}")
            os.replace(tmp, lib_path)  # atomic: concurrent first uses never see half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(lib_path))
    p = ctypes.c_void_p
    lib.lmn_step.argtypes = [p, p, p, p, p, ctypes.c_int64, ctypes.c_int64, p, p]
    lib.lmn_step.restype = ctypes.c_int64
    lib.lmn_work_size.argtypes = [p]
    lib.lmn_work_size.restype = ctypes.c_int64
    _LIBS[dtype] = lib
    return lib


def _summarizer_matrix(memory, d: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The summarizer as one affine map ``[left; right] (2C) -> parent (C)``, C = n_banks*d.

    Every summarizer is affine in the concatenated pair, so its matrix is read off by
    applying a float64 copy of it to zero and to the unit vectors."""
    nb = memory.n_banks
    C = nb * d
    summ = copy.deepcopy(memory.summarizer).to(torch.float64)
    with torch.no_grad():
        inputs = torch.cat([torch.zeros(1, 2 * C, dtype=torch.float64), torch.eye(2 * C, dtype=torch.float64)])
        # (items, 2C) -> left / right (1, n_banks, items, d), bank-major within each half: the
        # probes ride on the summarizer's item axis (a leading batch axis would make a
        # batched matmul expand the weight once per probe)
        def banks(half: Tensor) -> Tensor:
            return half.reshape(-1, nb, d).transpose(0, 1)[None]

        out = summ(banks(inputs[:, :C]), banks(inputs[:, C:]))[0].transpose(0, 1).reshape(-1, C)
        bias = out[0]
        matrix = (out[1:] - bias).T  # (C, 2C)
    return matrix.to(dtype).contiguous(), bias.to(dtype).contiguous()


class NativeStepper:
    """Streaming inference of an :class:`lmn.LMN` through the C kernel (see module doc).

    Args:
        model: the model; its weights are copied now.
        batch_size: number of independent streams stepped together.
        max_levels: capacity of the state in tree levels (streams up to ``2**(max_levels+1) - 1``
            tokens).
    """

    def __init__(self, model: LMN, batch_size: int = 1, max_levels: int = 40):
        if not isinstance(model, LMN):
            raise TypeError(f"NativeStepper takes an lmn.LMN, got {type(model).__name__}")
        cfg = model.config
        ref = model.head.weight
        if ref.device.type != "cpu":
            raise ValueError(f"NativeStepper runs on the CPU; the model is on {ref.device} (use model.cpu())")
        if ref.dtype not in _REAL:
            raise ValueError(f"NativeStepper supports float32 and float64 models, got {ref.dtype}")
        if cfg.expand != 0:
            raise ValueError(f"NativeStepper supports expand = 0 only (this model has expand = {cfg.expand}); use LMN.step")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(max_levels, bool) or not isinstance(max_levels, int) or not 1 <= max_levels <= 61:
            raise ValueError(f"max_levels must be an integer in [1, 61], got {max_levels!r}")
        self.config, self.dtype = cfg, ref.dtype
        self.batch_size, self.max_levels = batch_size, max_levels
        self.pos = 0
        self._lib = _load(self.dtype)

        d, nb = cfg.d_model, cfg.n_banks
        self._C = nb * d
        parts = [model.tok_emb.weight]
        eps = []
        for block in model.blocks:
            sW, sb = _summarizer_matrix(block.memory, d, self.dtype)
            a, ff = block.attn, block.ff
            with torch.no_grad():
                qkv_w, qkv_b = a._fused("qkv")  # [W_q; W_k; W_v], as LMN.step uses it
            # matrices input-major (transposed against nn.Linear), as the kernel reads them
            parts += [
                block.norm1.weight, sW.T, sb, qkv_w.T, qkv_b,
                a.o.weight.T, a.o.bias, block.norm2.weight,
                ff.up.weight.T, ff.up.bias, ff.down.weight.T, ff.down.bias,
            ]
            for norm in (block.norm1, block.norm2):
                eps.append(torch.finfo(self.dtype).eps if norm.eps is None else norm.eps)
        parts += [model.ln_f.weight, model.ln_f.bias, model.head.weight.T, model.head.bias]
        eps.append(model.ln_f.eps)
        self._weights = torch.empty(sum(p.numel() for p in parts), dtype=self.dtype)
        with torch.no_grad():  # copied part by part: no second full-size copy of the weights
            offset = 0
            for part in parts:
                n = part.numel()
                self._weights[offset : offset + n].view(part.shape).copy_(part.detach())
                offset += n
        self._eps = torch.tensor(eps, dtype=torch.float64)
        self._dims = torch.tensor(
            [cfg.vocab_size, d, cfg.n_layers, cfg.n_heads, nb, cfg.ff_mult * d, max_levels,
             int(cfg.pos_encoding == "sinusoidal")],
            dtype=torch.int64,
        )
        # per stream and layer: max_levels + 1 nodes, then q and v of max_levels * n_banks slots
        self._layer_state = (3 * max_levels + 1) * self._C
        self._state = torch.zeros(batch_size, cfg.n_layers, self._layer_state, dtype=self.dtype)
        self._work = torch.zeros(self._lib.lmn_work_size(self._dims.data_ptr()), dtype=self.dtype)
        self._ptrs = (self._weights.data_ptr(), self._state.data_ptr(), self._work.data_ptr())
        self._tail = (self._dims.data_ptr(), self._eps.data_ptr())

    # ------------------------------------------------------------------ stepping
    @property
    def capacity(self) -> int:
        """Longest stream the state can hold, in tokens."""
        return (1 << (self.max_levels + 1)) - 1

    def step(self, tokens: Tensor) -> Tensor:
        """Consume one token per stream: ``(B,)`` or ``(B, 1)`` integer ids -> logits ``(B, vocab)``."""
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.dim() == 2 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if tokens.dim() != 1 or tokens.shape[0] != self.batch_size:
            raise ValueError(
                f"tokens must have shape ({self.batch_size},) or ({self.batch_size}, 1) for this stepper, "
                f"got {tuple(tokens.shape)}"
            )
        if tokens.dtype != torch.int64:
            if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
                raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
            tokens = tokens.to(torch.int64)
        if tokens.device.type != "cpu":
            raise ValueError(f"tokens are on {tokens.device}; NativeStepper runs on the CPU")
        if self.pos >= self.capacity:
            raise RuntimeError(f"stream is full: {self.pos} tokens is the capacity of max_levels={self.max_levels}")
        tokens = tokens.contiguous()
        logits = torch.empty(self.batch_size, self.config.vocab_size, dtype=self.dtype)
        rc = self._lib.lmn_step(*self._ptrs, tokens.data_ptr(), logits.data_ptr(), self.batch_size, self.pos, *self._tail)
        if rc != 0:
            r = -rc - 1
            raise ValueError(
                f"tokens contains token id {int(tokens[r])} (stream {r}), outside [0, {self.config.vocab_size})"
            )
        self.pos += 1
        return logits

    # ------------------------------------------------------------------ state exchange
    def _views(self, layer: int):
        C, nb, d, Lc = self._C, self.config.n_banks, self.config.d_model, self.max_levels
        s = self._state[:, layer]
        nodes = s[:, : (Lc + 1) * C].view(self.batch_size, Lc + 1, nb, d)
        sq = s[:, (Lc + 1) * C : (Lc + 1) * C + Lc * nb * d].view(self.batch_size, Lc * nb, d)
        sv = s[:, (Lc + 1) * C + Lc * nb * d :].view(self.batch_size, Lc * nb, d)
        return nodes, sq, sv

    def load_state(self, state: LMNState) -> "NativeStepper":
        """Continue the stream held by ``state`` (e.g. after ``model.prefill``); copies it."""
        if not isinstance(state, LMNState):
            raise TypeError(f"state must be an LMNState, got {type(state).__name__}")
        if state.config.architecture() != self.config.architecture():
            raise ValueError("state belongs to a model with a different configuration")
        if state.batch_size != self.batch_size:
            raise ValueError(f"state has batch size {state.batch_size}, this stepper {self.batch_size}")
        if state.pos > self.capacity:
            raise ValueError(f"state holds {state.pos} tokens, more than max_levels={self.max_levels} allows")
        H, dh = self.config.n_heads, self.config.d_head
        with torch.no_grad():
            self._state.zero_()
            for l, layer in enumerate(state.layers):
                nodes, sq, sv = self._views(l)
                for i, node in enumerate(layer.nodes):  # (B, nb, 1, d)
                    nodes[:, i] = node[:, :, 0].to(self.dtype)
                S = layer.slot_q.shape[2]
                # (B, H, S, dh) -> (B, S, H*dh)
                sq[:, :S] = layer.slot_q.to(self.dtype).permute(0, 2, 1, 3).reshape(self.batch_size, S, H * dh)
                sv[:, :S] = layer.slot_v.to(self.dtype).permute(0, 2, 1, 3).reshape(self.batch_size, S, H * dh)
        self.pos = state.pos
        return self

    def to_state(self) -> LMNState:
        """The current stream as an :class:`lmn.LMNState` (a copy)."""
        cfg, B = self.config, self.batch_size
        L = n_levels(self.pos)
        S = cfg.n_banks * L
        layers = []
        for l in range(cfg.n_layers):
            nodes, sq, sv = self._views(l)
            node_list = [nodes[:, i, :, None, :].clone() for i in range(L + 1)] if self.pos else []
            q = sq[:, :S].reshape(B, S, cfg.n_heads, cfg.d_head).permute(0, 2, 1, 3).contiguous()
            v = sv[:, :S].reshape(B, S, cfg.n_heads, cfg.d_head).permute(0, 2, 1, 3).contiguous()
            layers.append(LayerState(node_list, q, v))
        return LMNState(cfg, B, self.pos, layers)

    def reset(self) -> None:
        """Start new, empty streams."""
        self._state.zero_()
        self.pos = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the stream's meaningful state (as :attr:`lmn.LMNState.nbytes`); the
        buffer itself has the fixed size of ``max_levels``."""
        return state_nbytes(self.config, self.batch_size, self.pos, self._state.element_size())
