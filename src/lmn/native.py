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

Scope: CPU, float32 or float64, ``expand = 0``, any stride, read rule, banks, heads and
positional encoding, and any summarizer that states its affine form
(:func:`lmn.summarizers.affine_form`; the built-in ones do): the kernel runs the
summarizer as that matrix, so a summarizer without one is refused, never approximated.
The weights are copied when the stepper is made (like an exported model): after changing
the model's parameters make a new stepper. The state is a fixed-capacity buffer of
``max_levels`` tree levels per layer (default 40: streams of up to ``k**41 - 1`` tokens);
its meaningful part is the O(log n) state of :class:`lmn.LMNState`. The tree's arithmetic
comes from :class:`lmn.tree.Counter`, which hands the kernel each step's plan. A stepper
owns one scratch buffer: use one stepper per thread.

Tested against :meth:`lmn.LMN.step` and :func:`lmn.reference_forward` in
``tests/runtime/test_native.py``.
"""

from __future__ import annotations

import copy
import ctypes
import math
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch
from torch import Tensor

from . import atomic
from .config import LMNConfig
from .documents import format_rows, reset_rows
from .layout import fill_fixed, state_from_fixed
from .mechanisms import refuse
from .state import LMNState, state_nbytes
from .summarizers import affine_form
from .tree import Counter
from .validation import check_int

# the read rules the C kernel implements, by their code (lmn.tree.ReadRule.code): its plan flag D_DIGITS
KERNEL_RULES = {0: "latest", 1: "digits"}
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
        def unwritable(exc: OSError) -> RuntimeError:
            return RuntimeError(f"cannot write the compiled kernel to {cache} ({exc}); point $LMN_KERNEL_CACHE at a "
                                "writable directory")

        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(exc) from exc
        # atomic (lmn.atomic): concurrent first uses never see half a file
        with atomic.atomic_path(lib_path) as tmp:
            try:
                tmp.touch()
            except OSError as exc:
                raise unwritable(exc) from exc
            proc = subprocess.run([cc, *flags, "-o", str(tmp), str(_SOURCE), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                said = " | ".join(ln.strip() for ln in proc.stderr.splitlines() if ln.strip())[-1500:]
                raise RuntimeError(f"compiling {_SOURCE} with {cc} failed (exit {proc.returncode}): "
                                   f"{said or 'no message'}")  # one line: the CLI shows an error's first line
    lib = ctypes.CDLL(str(lib_path))
    p = ctypes.c_void_p
    lib.lmn_step.argtypes = [p, p, p, p, p, ctypes.c_int64, ctypes.c_int64, p, p, p, p]
    lib.lmn_step.restype = ctypes.c_int64
    for fn in (lib.lmn_work_size, lib.lmn_max_slots):
        fn.argtypes = [p]
        fn.restype = ctypes.c_int64
    _LIBS[dtype] = lib
    return lib


def _summarizer_matrix(memory, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The summarizer's own affine form ``W (C, k*C)``, ``b (C)`` (``C = n_banks * d``), cast
    to ``dtype``; a clear error when it states none."""
    form = affine_form(memory.summarizer)
    if form is None:
        raise ValueError(
            f"NativeStepper runs the summarizer as an affine map, but {type(memory.summarizer).__name__} "
            "states no affine form (an affine() method returning (W, b)); use LMN.step for this model"
        )
    W, b = form
    return W.to(dtype).contiguous(), b.to(dtype).contiguous()


class NativeStepper:
    """Streaming inference of an :class:`lmn.LMN` through the C kernel (see module doc).

    Args:
        model: the model; its weights are copied now.
        batch_size: number of independent streams stepped together.
        max_levels: capacity of the state in tree levels (streams up to
            ``stride**(max_levels+1) - 1`` tokens); a model with ``max_level`` set uses that
            and takes streams of any length.
    """

    def __init__(self, model, batch_size: int = 1, max_levels: int = 40):
        cfg = getattr(model, "config", None)
        if not isinstance(cfg, LMNConfig) or not hasattr(model, "blocks"):
            raise TypeError(f"NativeStepper takes an lmn.LMN, got {type(model).__name__}")
        ref = model.head.weight
        if ref.device.type != "cpu":
            raise ValueError(f"NativeStepper runs on the CPU; the model is on {ref.device} (use model.cpu())")
        if ref.dtype not in _REAL:
            raise ValueError(f"NativeStepper supports float32 and float64 models, got {ref.dtype}")
        refuse(cfg, "NativeStepper", "use LMN.step")  # a memory mechanism beside the tree (lmn.mechanisms)
        if KERNEL_RULES.get(cfg.tree.rule.code) != cfg.read:  # (a rule of its own refused, never approximated)
            raise ValueError(f"NativeStepper's kernel knows the read rules {sorted(KERNEL_RULES.values())}, not "
                             f"{cfg.read!r}; use LMN.step for this model")
        if cfg.expand != 0:
            raise ValueError(f"NativeStepper supports expand = 0 only (this model has expand = {cfg.expand}); use LMN.step")
        check_int("batch_size", batch_size, min=1)
        check_int("max_levels", max_levels, min=1, max=61)
        if cfg.max_level is not None:  # a capped tree: a fixed state for a stream of any length
            max_levels = cfg.max_level
        self.config, self.dtype = cfg, ref.dtype
        self.tree = cfg.tree
        self.batch_size, self.max_levels = batch_size, max_levels
        summarizers = [_summarizer_matrix(block.memory, self.dtype) for block in model.blocks]  # refuse early
        self._lib = _load(self.dtype)

        d, nb = cfg.d_model, cfg.n_banks
        self._C = nb * d
        parts = [model.tok_emb.weight]
        eps = []
        self._qkv = []  # per layer: [W_q; W_k; W_v] and bias, to project a token in load_state
        for block, (sW, sb) in zip(model.blocks, summarizers):
            a, ff = block.attn, block.ff
            with torch.no_grad():
                qkv_w, qkv_b = a._fused("qkv")  # [W_q; W_k; W_v], as LMN.step uses it
            self._qkv.append((qkv_w.detach().to(self.dtype).clone(), qkv_b.detach().to(self.dtype).clone()))
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
             int(cfg.pos_encoding == "sinusoidal"), cfg.stride, self.tree.rule.code],
            dtype=torch.int64,
        )
        # per stream and layer: kept nodes, their W_q and W_v projections; (levels + 1, k - 1, C) each
        self._store = (max_levels + 1) * (cfg.stride - 1) * self._C
        self._state = torch.zeros(batch_size, cfg.n_layers, 3 * self._store, dtype=self.dtype)
        self._work = torch.zeros(self._lib.lmn_work_size(self._dims.data_ptr()), dtype=self.dtype)
        self._slots = torch.zeros(self._lib.lmn_max_slots(self._dims.data_ptr()), dtype=torch.int64)
        self._counter = Counter(cfg.stride, max_levels, wrap=cfg.max_level is not None)
        plan_ptr = self._counter.plan.buffer_info()[0]
        self._ptrs = (self._weights.data_ptr(), self._state.data_ptr(), self._work.data_ptr())
        self._tail = (self._dims.data_ptr(), self._eps.data_ptr(), plan_ptr, self._slots.data_ptr())

    @property
    def pos(self) -> int:
        """Tokens consumed so far."""
        return self._counter.count

    # ------------------------------------------------------------------ stepping
    @property
    def capacity(self) -> int | float:
        """Longest stream the state can hold, in tokens."""
        if self.config.max_level is not None:
            return math.inf
        return self.config.stride ** (self.max_levels + 1) - 1

    def step(self, tokens: Tensor, reset=None) -> Tensor:
        """Consume one token per stream: ``(B,)`` or ``(B, 1)`` integer ids -> logits ``(B, vocab)``.

        ``reset``: the token starts a new document (``True`` or a ``(B,)`` bool tensor): the
        streams restart before it (:meth:`reset`). The kernel steps every stream at one
        position, so it restarts every row or none, like :meth:`lmn.LMN.step`."""
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
        if reset is not None and reset is not False:
            rows = reset_rows(reset, self.batch_size, "NativeStepper.step's reset")
            if rows and len(rows) < self.batch_size:
                raise ValueError(f"the native step restarts every stream or none (its kernel steps the batch at one "
                                 f"position), but reset marks rows {format_rows(rows)} of {self.batch_size}; use a "
                                 "stepper per stream or the exported step (lmn.export), which resets rows apart")
            if rows:
                self.reset()
        if self.pos >= self.capacity:
            raise RuntimeError(f"stream is full: {self.pos} tokens is the capacity of max_levels={self.max_levels}")
        tokens = tokens.contiguous()
        logits = torch.empty(self.batch_size, self.config.vocab_size, dtype=self.dtype)
        pos = self.pos
        self._counter.increment()  # the plan of this step, read by the kernel
        rc = self._lib.lmn_step(*self._ptrs, tokens.data_ptr(), logits.data_ptr(), self.batch_size, pos, *self._tail)
        if rc != 0:  # (checked before the kernel touched the state)
            self._counter.set(pos)
            r = -rc - 1
            raise ValueError(
                f"tokens contains token id {int(tokens[r])} (stream {r}), outside [0, {self.config.vocab_size})"
            )
        return logits

    # ------------------------------------------------------------------ state exchange
    def _views(self, layer: int):
        """``nodes``, ``slot_q``, ``slot_v`` of a layer: ``(B, levels + 1, k - 1, C)`` each."""
        shape = (self.batch_size, self.max_levels + 1, self.config.stride - 1, self._C)
        return self._state[:, layer].view(self.batch_size, 3, *shape[1:]).unbind(1)

    def _project(self, layer: int, vec: Tensor) -> tuple[Tensor, Tensor]:
        """W_q / W_v (of the weights copied at creation) of node vectors ``(B, r, n_banks*d)``."""
        d = self.config.d_model
        w, b = self._qkv[layer]
        x = vec.unflatten(-1, (-1, d))
        q = torch.nn.functional.linear(x, w[:d], b[:d]).flatten(-2)
        v = torch.nn.functional.linear(x, w[2 * d :], b[2 * d :]).flatten(-2)
        return q, v

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
        with torch.no_grad():
            self._state.zero_()
            fill_fixed(state, [self._views(l) for l in range(self.config.n_layers)], self._project)
        self._counter.set(state.pos)
        return self

    def to_state(self) -> LMNState:
        """The current stream as an :class:`lmn.LMNState` (a copy)."""
        views = [self._views(l) for l in range(self.config.n_layers)]
        return state_from_fixed(self.config, self.batch_size, self.pos, views)

    def reset(self) -> None:
        """Start new, empty streams."""
        self._state.zero_()
        self._counter.set(0)

    @property
    def nbytes(self) -> int:
        """Bytes of the stream's meaningful state (as :attr:`lmn.LMNState.nbytes`); the
        buffer itself has the fixed size of ``max_levels``."""
        return state_nbytes(self.config, self.batch_size, self.pos, self._state.element_size())
