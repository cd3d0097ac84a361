"""The LMN language model: blocks, LM head and the three forms (parallel, streaming,
prefill); sampling lives in :mod:`lmn.generation`.

    h = h + SVA(memory(RMSNorm(h)))
    h = h + FF(RMSNorm(h)),   FF = Linear(d, ff_mult*d) -> SiLU -> Linear(ff_mult*d, d)
    logits = Linear(LayerNorm(h))          (untied, with bias)

No positional embedding unless ``pos_encoding="sinusoidal"``: position is implicit in
which tree nodes a token reads.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CachedRead, ParallelRead, SingleVectorAttention, StreamPrefix, gate_entries, plain_linear, vjp
from .config import LMNConfig
from .documents import check_doc_starts, format_rows, last_run, reset_rows, run_documents
from .memory import LogMemory
from .mechanisms import ExtraSlots, Slots, mechanism_names, mechanisms_for
from .state import LayerState, LMNState
from .tree import ceil_log, piece_lengths
from .validation import check_int


def sinusoidal_encoding(positions: Tensor, d_model: int, dtype: torch.dtype) -> Tensor:
    """Transformer sinusoids: ``pe[t, 2i] = sin(t w_i)``, ``pe[t, 2i+1] = cos(t w_i)``,
    ``w_i = 10000^(-2i/d)``. Computed in float64 so that any position (a million and
    beyond) is encoded identically by the parallel and the streaming form."""
    half = (d_model + 1) // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float64, device=positions.device) * (-2.0 * math.log(10000.0) / d_model)
    )
    angles = positions.to(torch.float64)[..., None] * freqs  # (..., half)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., :d_model]
    return pe.to(dtype)


class _ChunkedFeedForward(torch.autograd.Function):
    """``W_down silu(W_up y + b_up) + b_down`` over rows of ``y``, ``rows`` at a time, saving
    only ``y``: backward recomputes each chunk's hidden layer. Training memory then holds
    no ``(T, ff_mult*d)`` tensor (16 MiB each at T = 32K for the paper model), only
    chunk-sized ones; on CPU that also keeps glibc from raising its mmap threshold to their
    size, which is what fragmented the heap (see docs/results/efficiency.md)."""

    @staticmethod
    def forward(ctx, y, w_up, b_up, w_down, b_down, rows: int):
        ctx.save_for_backward(y, w_up, b_up, w_down, b_down)
        ctx.rows = rows
        yf = y.reshape(-1, y.shape[-1])
        out = torch.empty(yf.shape[0], w_down.shape[0], dtype=y.dtype, device=y.device)
        for s in range(0, yf.shape[0], rows):
            hidden = F.silu(F.linear(yf[s : s + rows], w_up, b_up), inplace=True)
            torch.addmm(b_down, hidden, w_down.t(), out=out[s : s + rows])
        return out.view(*y.shape[:-1], w_down.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        y, w_up, b_up, w_down, b_down = ctx.saved_tensors
        yf = y.reshape(-1, y.shape[-1])
        gf = grad_out.reshape(-1, grad_out.shape[-1])
        grad_y = torch.empty_like(yf)
        grad_w_up, grad_b_up = torch.zeros_like(w_up), torch.zeros_like(b_up)
        grad_w_down = torch.zeros_like(w_down)
        for s in range(0, yf.shape[0], ctx.rows):
            yc, gc = yf[s : s + ctx.rows], gf[s : s + ctx.rows]
            u = F.linear(yc, w_up, b_up)
            grad_w_down.addmm_(gc.t(), F.silu(u))
            # the kernels autograd itself uses: one chunk gives bit-identical gradients
            grad_u = torch.ops.aten.silu_backward(gc @ w_down, u)
            grad_w_up.addmm_(grad_u.t(), yc)
            grad_b_up += grad_u.sum(0)
            torch.mm(grad_u, w_up, out=grad_y[s : s + ctx.rows])
        return grad_y.view_as(y), grad_w_up, grad_b_up, grad_w_down, gf.sum(0), None


class FeedForward(nn.Module):
    # rows of the (T, d) input per chunk when recomputing: 4096 x ff_mult*d floats at a time
    chunk_rows = 4096

    def __init__(self, config: LMNConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.ff_mult * config.d_model)
        self.down = nn.Linear(config.ff_mult * config.d_model, config.d_model)
        # set by LMN.gradient_checkpointing: trade the hidden layer's memory for a recompute
        # (~5 % slower at 16 x 512, less memory at long T)
        self.recompute = False

    def forward(self, x: Tensor) -> Tensor:
        # (the chunked recompute reads the weights as tensors: plain linears only; an adapted
        # or quantized one runs as modules)
        if self.recompute and torch.is_grad_enabled() and plain_linear(self.up, self.down):
            return _ChunkedFeedForward.apply(
                x, self.up.weight, self.up.bias, self.down.weight, self.down.bias, self.chunk_rows
            )
        # in place when nothing is recorded for backward: saves a (T, ff_mult*d) buffer
        return self.down(F.silu(self.up(x), inplace=not torch.is_grad_enabled()))

    def plain(self, y: Tensor) -> Tensor:
        """The feed-forward as one formula of functional calls (no module calls): what the
        streaming step, the exported step and the reference compute (module calls where a
        linear is not a plain ``nn.Linear``: :func:`lmn.attention.plain_linear`)."""
        up, down = self.up, self.down
        if type(up) is nn.Linear and type(down) is nn.Linear:  # (plain_linear, inlined: per token)
            return F.linear(F.silu(F.linear(y, up.weight, up.bias)), down.weight, down.bias)
        return down(F.silu(up(y)))


class _CheckpointedBlock(torch.autograd.Function):
    """Run a block without recording it; in backward, run it again under autograd from its
    saved input and differentiate that. Its only randomness is dropout (training mode): the
    random-number state is saved before the forward and restored for the recomputation, so
    both draw the same masks and the recomputation is the same function. Written out rather
    than taken from ``torch.utils.checkpoint``, whose first call imports ~800 modules (sympy,
    dynamo: ~68 MiB of resident memory)."""

    @staticmethod
    def forward(ctx, block, chunk: int, h, *params):
        ctx.block, ctx.chunk = block, chunk
        ctx.rng = _rng_state(h.device) if block.training and block.config.dropout > 0 else None
        ctx.save_for_backward(h)
        with torch.no_grad():
            out, _ = block(h, chunk=chunk)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (h,) = ctx.saved_tensors
        inputs = [h.detach().requires_grad_(ctx.needs_input_grad[2]), *ctx.block.parameters()]
        with torch.enable_grad(), _replayed_rng(h.device, ctx.rng):
            out, _ = ctx.block(inputs[0], chunk=ctx.chunk)
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        grads = vjp(out, [inputs[i] for i in wanted], grad_out)
        result = [None] * len(inputs)
        for i, g in zip(wanted, grads):
            result[i] = g
        return (None, None, *result)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _replayed_rng(device: torch.device, saved):
    """Run the body from the random-number state ``saved`` (from :func:`_rng_state`; None:
    as it is); ``torch.random.fork_rng`` puts the current state back afterwards."""
    if saved is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(saved[0])
        if saved[1] is not None:
            torch.cuda.set_rng_state(saved[1], device)
        yield


class LMNBlock(nn.Module):
    """One layer: ``h += SVA(memory(RMSNorm(h)))``, then ``h += FF(RMSNorm(h))``.

    Components: ``memory`` (the tree: :class:`lmn.memory.LogMemory`, its read rule
    ``memory.tree.rule``), the memory mechanisms the config enables (:mod:`lmn.mechanisms`),
    each an attribute by its name (``block.pinned``: :class:`lmn.pinned.PinnedMemory`, or
    ``None``), ``attn`` (:class:`lmn.attention.SingleVectorAttention`), ``ff``.
    """

    def __init__(self, config: LMNConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.memory = LogMemory(config)
        # the mechanisms beside the tree, each under its name (None where not enabled); made
        # before the attention, as the pinned memory always was: the same seed, the same weights
        for name in mechanism_names():
            setattr(self, name, None)
        self.mechanisms = tuple(m.name for m in mechanisms_for(config))
        for m in mechanisms_for(config):
            setattr(self, m.name, m.build(config))
        self.attn = SingleVectorAttention(config)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.ff = FeedForward(config)
        self.config = config  # the model's own object: a later change of ``dropout`` reaches every block
        self._entries_memo: dict = {}  # level-gate entries of the slot cache by its per-level counts

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved before the pinned memory became its own component kept its write
        # score under the tree memory: read them from there
        old, new = f"{prefix}memory.write.", f"{prefix}pinned.write."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[new + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _drop(self, branch: Tensor) -> Tensor:
        """Dropout of a residual branch (``config.dropout``; in training mode only)."""
        p = self.config.dropout
        return F.dropout(branch, p, training=True) if p > 0 and self.training else branch

    def forward(self, h: Tensor, state: LayerState | None = None, pos: int = 0, return_state: bool = False,
                chunk: int | None = None):
        """The one call of every form.

        Args:
            h: ``(B, T, d)``, the residual stream of tokens ``pos .. pos + T - 1`` (or
                ``(B, d)``: one token continuing a stream, returned as ``(B, d)``).
            state: the layer's streaming state after ``pos`` tokens, or ``None`` for a new
                stream (then ``pos`` is 0). It is consumed: the returned state may be the
                same object, updated in place (``LMNState.clone()`` to branch).
            pos: tokens the stream has seen before ``h``.
            return_state: also return the state after the last token (implied by ``state``).
            chunk: positions the parallel attention processes at once (a power of the stride;
                default: the model's ``config.chunk_size`` rounded down to one).
        Returns:
            ``(h, new_state or None)``.

        Which form runs follows from the arguments: a new stream (``pos = 0``) runs the
        parallel form, one token continuing a stream the streaming step, several tokens
        continuing a stream a chunked prefill (``pos`` a multiple of ``k**p``, ``p`` the
        smallest with ``T <= k**p``: :func:`lmn.tree.piece_lengths`). All compute the same
        function (``tests/core/test_parity.py``).
        """
        if h.dim() == 2:  # (B, d): one token continuing a stream, in the shape LMN.step keeps it
            if pos == 0 or state is None:
                raise ValueError("a (batch, d_model) input is one token continuing a stream: give its state and pos >= 1")
            return self._step(h, state, pos), state
        if pos > 0 and h.shape[1] == 1 and state is not None:  # one token continuing a stream
            return self._step(h.squeeze(1), state, pos).unsqueeze(1), state  # (methods: cheaper than indexing)
        chunk = self.memory.tree.chunk(self.config.chunk_size) if chunk is None else chunk
        if pos == 0:  # a new stream
            return self._parallel(h, return_state or state is not None, chunk)
        if state is None:
            raise ValueError(f"continuing a stream at pos={pos} needs its state (state=None is a new stream)")
        return self._extend(h, state, pos, chunk), state  # several tokens continuing a stream

    # ------------------------------------------------------------------ the three forms
    def _parallel(self, h: Tensor, return_state: bool, chunk: int):
        x = self.norm1(h)
        tree = self.memory.tree
        levels, nodes = self.memory(x, None, 0, return_state)
        reads = [getattr(self, n).read_piece(x, None, 0, self.attn.project_tokens, return_state) for n in self.mechanisms]
        read = ParallelRead(levels, tree, chunk, None, _join_extra([r.slots for r in reads]))
        h = h + self._drop(self.attn(x, read))
        h = h + self._drop(self.ff(self.norm2(h)))
        if not return_state:
            return h, None
        T = x.shape[1]
        extra = {n: r.state for n, r in zip(self.mechanisms, reads)}
        return h, LayerState(nodes, *self._slot_cache(nodes, T), extra)

    def _extend(self, h: Tensor, layer: LayerState, c0: int, chunk: int) -> Tensor:
        """Continue a stream of ``c0`` tokens with ``h: (B, C, d)``, ``C >= 2``, in one
        parallel pass whose tree is aligned with the stream's; updates ``layer`` in place."""
        x = self.norm1(h)
        C = x.shape[1]
        tree = self.memory.tree
        p = ceil_log(C, tree.stride)
        if c0 % tree.stride**p:
            raise ValueError(f"a piece of {C} tokens continues a stream only at a multiple of "
                             f"{tree.stride**p}, not at pos={c0} (lmn.tree.piece_lengths splits a prompt)")
        bounds = list(itertools.accumulate(tree.cached_slots(c0), initial=0))
        cached = [(layer.slot_q[:, :, lo:hi], layer.slot_v[:, :, lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
        levels, _ = self.memory(x, layer.nodes, c0)  # the piece's tree; the stream's nodes move on
        reads = [getattr(self, n).read_piece(x, layer.extra[n], c0, self.attn.project_tokens, True)
                 for n in self.mechanisms]
        read = ParallelRead(levels, tree, chunk, StreamPrefix(c0, cached), _join_extra([r.slots for r in reads]))
        a = self.attn(x, read)
        layer.slot_q, layer.slot_v = self._slot_cache(layer.nodes, c0 + C)
        for n, r in zip(self.mechanisms, reads):
            layer.extra[n] = r.state

        # the last position may read nodes completed by itself: redo it as a streaming step
        last = _join_one([r.last for r in reads])
        a_last = self.attn.forward(x[:, -1], CachedRead(layer.slot_q, layer.slot_v, last, self._gate_entries(c0 + C, x)))
        h = h + self._drop(torch.cat([a[:, :-1], a_last[:, None]], dim=1))
        return h + self._drop(self.ff(self.norm2(h)))

    def _step(self, h: Tensor, layer: LayerState, pos: int) -> Tensor:
        """``h: (B, d)``, token ``pos`` (0-based); updates ``layer`` in place.

        Functional calls throughout: nn.Module.__call__ costs more than these tiny ops."""
        # (submodules looked up once: nn.Module.__getattr__ is a slow path, and this runs per token)
        norm1, norm2, mem, attn = self.norm1, self.norm2, self.memory, self.attn
        x = F.rms_norm(h, norm1.normalized_shape, norm1.weight, norm1.eps)
        tree = mem.tree
        before = tree.cached_slots(pos)
        completed, _ = mem.forward(x, layer.nodes, pos)  # the token (B, d) carries through the counter
        tree.rule.update_cache(tree, layer, completed, pos + 1, before, attn.project_nodes)
        extra = None
        if self.mechanisms:  # each gives this position's slots and moves its state on
            slots = []
            for n in self.mechanisms:
                s, layer.extra[n] = getattr(self, n).read_one(x, layer.extra[n], pos, attn.project_tokens)
                slots.append(s)
            extra = _join_one(slots)
        h = h + self._drop(attn.forward(x, CachedRead(layer.slot_q, layer.slot_v, extra, self._gate_entries(pos + 1, x))))
        y = F.rms_norm(h, norm2.normalized_shape, norm2.weight, norm2.eps)
        return h + self._drop(self.ff.plain(y))

    def _gate_entries(self, count: int, x: Tensor) -> Tensor | None:
        """The level-gate entry of the token and of every slot in the slot cache after
        ``count`` tokens, ``(1 + S,)`` (:func:`lmn.attention.gate_entries`; ``None`` without
        ``level_gate``), memoised by the cache's per-level counts."""
        if self.attn.level_gate == "none":
            return None
        counts = tuple(self.memory.tree.cached_slots(count))
        key = (counts, x.device)
        entries = self._entries_memo.get(key)
        if entries is None:
            if len(self._entries_memo) > 1024:  # ("digits" has many layouts on a long stream)
                self._entries_memo.clear()
            entries = self._entries_memo[key] = gate_entries(counts, x.device)
        return entries

    def _slot_cache(self, nodes: list[Tensor], pos: int) -> tuple[Tensor, Tensor]:
        """q/v ``(B, H, S, d_head)`` of the slots that position ``pos - 1`` read, projected
        from the kept ``nodes`` of a state after ``pos`` tokens."""
        qs, vs = [], []
        for i, (lo, hi) in enumerate(self.memory.tree.cached_ranges(pos)):
            if hi > lo:
                sel = nodes[i][:, :1, lo:hi] if i == 0 else nodes[i][:, :, lo:hi]  # a token: one slot
                q, v = self.attn.project_nodes(sel)  # (B, H, n, G, dh)
                qs.append(q.flatten(2, 3))
                vs.append(v.flatten(2, 3))
        if not qs:
            B, H, dh = nodes[0].shape[0], self.attn.n_heads, self.attn.d_head
            empty = nodes[0].new_zeros(B, H, 0, dh)
            return empty, empty.clone()
        return torch.cat(qs, dim=2), torch.cat(vs, dim=2)

    def init_state(self, batch_size: int, device, dtype) -> LayerState:
        """The layer's state of ``batch_size`` new streams."""
        c = self.config
        empty = torch.zeros(batch_size, c.n_heads, 0, c.d_head, device=device, dtype=dtype)
        extra = {n: getattr(self, n).empty(batch_size, device, dtype) for n in self.mechanisms}
        return LayerState([], empty, empty.clone(), extra)


def _join_extra(parts: list[ExtraSlots]) -> ExtraSlots | None:
    """The mechanisms' slots of every position as one set (``None``: no mechanism)."""
    if len(parts) < 2:
        return parts[0] if parts else None
    return ExtraSlots(torch.cat([p.q for p in parts], 2), torch.cat([p.v for p in parts], 2),
                      torch.cat([p.bias for p in parts], 1))


def _join_one(parts: list[Slots | None]) -> Slots | None:
    """The mechanisms' slots of one position as one set."""
    parts = [p for p in parts if p is not None]
    if len(parts) < 2:
        return parts[0] if parts else None
    return Slots(torch.cat([p.q for p in parts], 2), torch.cat([p.v for p in parts], 2),
                 torch.cat([p.bias for p in parts], 1))


class LMN(nn.Module):
    """Logarithmic Memory Network language model (Taha, arXiv 2501.07905).

    Three forms of one definition:

    * ``model(idx)`` -- parallel form, logits ``(B, T, vocab)``;
    * ``model(idx, return_state=True)`` -- prefill: ``(logits, state)``;
    * ``model.step(tokens, state)`` -- streaming: one token per sequence.

    :func:`lmn.reference.reference_forward` is the plain specification all three are
    tested against.
    """

    def __init__(self, config: LMNConfig):
        super().__init__()
        if not isinstance(config, LMNConfig):
            raise TypeError(f"LMN expects an LMNConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(LMNBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps if config.norm_eps is not None else 1e-5)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.gradient_checkpointing = False
        self.fused_kernels = "auto"

    @property
    def fused_kernels(self):
        """Single-vector attention of the parallel form and the tree build through fused
        Triton kernels (:mod:`lmn.kernels.triton_sva`, :mod:`lmn.kernels.triton_tree`,
        forward and backward): ``"auto"`` (default: on CUDA tensors when ``triton``
        imports), ``True`` (whenever the kernel covers the input; on CPU only under
        ``TRITON_INTERPRET=1``) or ``False`` (the PyTorch path, the CPU default). Prefill
        continuing a stream and float64 always take the PyTorch path for attention; the
        tree build is fused for the Linear summarizer without expander only. A runtime
        knob: results agree to float32 rounding."""
        return self._fused_kernels

    @fused_kernels.setter
    def fused_kernels(self, value) -> None:
        from .kernels import check_setting

        check_setting(value)
        self._fused_kernels = value
        for block in self.blocks:
            block.attn.fused_kernels = value
            block.memory.fused_kernels = value

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute each block in backward instead of keeping its activations, and compute
        the feed-forward layers in chunks whose hidden layer is recomputed too: training
        memory becomes O(T * d * n_layers) + one block's (chunked) activations. A runtime
        knob: results are the same (bit for bit up to 4096 positions per batch; beyond, the
        feed-forward weight gradients are summed chunk by chunk, so they agree to rounding)."""
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self._gradient_checkpointing = bool(value)
        for block in self.blocks:
            block.ff.recompute = self._gradient_checkpointing

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def with_max_level(self, max_level: int | None) -> "LMN":
        """A copy of this model (same weights, device, dtype and runtime knobs, same
        train/eval mode) whose tree builds and reads only levels ``1 .. max_level``
        (``None``: all). For a model trained on ``T``-token windows,
        ``max_level = Tree.of(config).n_levels_in(T)`` keeps long streams within the
        levels it was trained with (``docs/results/probes/context.md``)."""
        import dataclasses

        config = dataclasses.replace(self.config, max_level=max_level)  # validates max_level
        ref = next(self.parameters())
        capped = LMN(config).to(device=ref.device, dtype=ref.dtype)
        capped.load_state_dict(self.state_dict())
        capped.fused_kernels = self.fused_kernels
        capped.gradient_checkpointing = self.gradient_checkpointing
        return capped.train(self.training)

    def adapted_modules(self) -> list[str]:
        """Names of the submodules that are no longer the class the model made there: a PEFT
        LoRA layer, a dynamically quantized linear, a parametrized one. Every form of the
        model calls them as modules; the fixed-layout forms, which copy plain weights (the
        native step, the exported step, CUDA graphs), cannot, and refuse such a model
        (:meth:`refuse_adapted`)."""
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            made = {name: type(m) for name, m in LMN(self.config).named_modules()}
        return [name for name, m in self.named_modules() if name in made and type(m) is not made[name]]

    def refuse_adapted(self, who: str, instead: str = "use LMN.step") -> None:
        """Raise a ValueError naming the adapted submodules (:meth:`adapted_modules`), if any:
        ``who`` reads plain weights."""
        names = self.adapted_modules()
        if names:
            kind = lambda m: f"{type(m).__module__}.{type(m).__qualname__}"  # noqa: E731  (peft's is "Linear" too)
            shown = ", ".join(f"{n} ({kind(self.get_submodule(n))})" for n in names[:3])
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise ValueError(f"{who} copies the weights of plain modules, but {shown}{more} are adapted or "
                             f"quantized layers; merge them first (PEFT: merge_and_unload()) or {instead}")

    # ------------------------------------------------------------------ validation
    def _reference_tensor(self) -> Tensor:
        """A parameter of the model's device and compute dtype: the head's weight, or (a
        head without a float weight tensor, e.g. a dynamically quantized one) the final norm's."""
        w = getattr(self.head, "weight", None)
        return w if isinstance(w, Tensor) and w.is_floating_point() else self.ln_f.weight

    def _check_tokens(self, idx: Tensor, what: str) -> None:
        if not isinstance(idx, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"{what} must hold integer token ids (e.g. torch.long), got dtype {idx.dtype}")
        if idx.numel() == 0:
            raise ValueError(f"{what} is empty (shape {tuple(idx.shape)}); give at least one token")
        if torch.compiler.is_compiling():  # a data-dependent check has no graph: skipped when
            # compiled (eager calls keep it; the compiled embedding's own bounds check remains)
            return
        lo, hi = (int(v) for v in torch.aminmax(idx))
        V = self.config.vocab_size
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} contains token id {bad}, outside [0, {V}) (vocab_size={V})")

    def _check_idx(self, idx: Tensor) -> None:
        if isinstance(idx, Tensor) and idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {idx.dim()}-D shape {tuple(idx.shape)}")
        self._check_tokens(idx, "idx")

    def _check_state(self, state, batch_size: int, device) -> None:
        if not isinstance(state, LMNState):
            raise TypeError(f"state must be an LMNState (from init_state or a prefill), got {type(state).__name__}")
        if batch_size != state.batch_size:
            raise ValueError(
                f"tokens has batch size {batch_size} but the state was made for batch size {state.batch_size}"
            )
        if state.config is not self.config and state.config.architecture() != self.config.architecture():
            raise ValueError("state belongs to a model with a different configuration")
        if state.device != device:
            raise ValueError(f"state is on {state.device} but tokens are on {device}; use state.to(device)")
        dtype = self._reference_tensor().dtype
        if state.dtype != dtype:
            raise ValueError(f"state holds {state.dtype} tensors but the model computes in {dtype}; use state.to({dtype})")

    def _embed(self, idx: Tensor, start: int) -> Tensor:
        """Token embedding (+ sinusoids for positions ``start, start+1, ...``)."""
        if idx.dtype not in (torch.int64, torch.int32):  # e.g. uint8 ids (checked in range already)
            idx = idx.long()
        emb = self.tok_emb
        h = F.embedding(idx, emb.weight) if type(emb) is nn.Embedding else emb(idx)  # (an adapted one: its call)
        if self.config.pos_encoding == "sinusoidal":
            T = idx.shape[1] if idx.dim() == 2 else 1
            pos = torch.arange(start, start + T, device=idx.device)
            h = h + sinusoidal_encoding(pos if idx.dim() == 2 else pos[0], self.config.d_model, h.dtype)
        if self.config.dropout > 0 and self.training:
            h = F.dropout(h, self.config.dropout, training=True)
        return h

    # ------------------------------------------------------------------ parallel / prefill
    def forward(self, idx: Tensor, return_state: bool = False, state: LMNState | None = None,
                doc_starts: Tensor | None = None):
        """Parallel form.

        Args:
            idx: ``(B, T)`` integer token ids in ``[0, vocab_size)``.
            return_state: also return the streaming state after the last token (prefill).
            state: continue this stream (updated in place) instead of starting a new one;
                implies ``return_state``. The new tokens are processed in parallel, in
                pieces aligned to the stream's position (see :meth:`prefill`).
            doc_starts: packed rows: ``(B, T)`` bool, True where a new document starts
                (:mod:`lmn.documents`). Every document is computed exactly as if run
                alone: the tree, the memory mechanisms and the positions restart at its
                first token. Column 0 starts a document; with a ``state`` only where
                marked (unmarked, the row's first run continues the stream). A returned
                state is that of the rows' last documents, which must then start at the
                same column in every row (one position per batch).
        Returns:
            logits ``(B, T, vocab_size)``, or ``(logits, state)``.
        """
        self._check_idx(idx)
        if doc_starts is not None:
            return self._forward_documents(idx, check_doc_starts(doc_starts, idx), return_state, state)
        if state is not None:
            logits = []
            for piece in self._pieces(idx, state, max_chunk=None):
                logits.append(self._extend(piece, state))
            return torch.cat(logits, dim=1), state
        B, T = idx.shape
        h = self._embed(idx, 0)
        layers = []
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled() and not return_state:
                h = _CheckpointedBlock.apply(block, self._chunk, h, *block.parameters())
                layer_state = None
            else:
                h, layer_state = block(h, None, 0, return_state, chunk=self._chunk)
            layers.append(layer_state)
        logits = self.head(self.ln_f(h))
        if not return_state:
            return logits
        return logits, LMNState(self.config, B, T, layers)

    def _forward_documents(self, idx: Tensor, doc_starts: Tensor, return_state: bool, state: LMNState | None):
        """:meth:`forward` of packed rows: every document run alone by the parallel form
        (:func:`lmn.documents.run_documents`), a row's first run continuing ``state``
        where one is given and column 0 is not marked."""
        continuing = state is not None
        if continuing:
            self._check_state(state, idx.shape[0], idx.device)
        if not (return_state or continuing):
            return run_documents(self, idx, doc_starts)
        last = last_run(doc_starts, "LMN.forward returning a state", continuing)
        if last.continues:  # no document starts in any row: the stream goes on
            return self(idx, state=state)
        c, parts = last.start, []
        if c > 0:  # the documents before the last ones (the state is that of the last ones)
            def go_on(rows: list[int], ids: Tensor) -> Tensor:
                return self(ids, state=state.select(torch.tensor(rows, device=idx.device)))[0]

            parts.append(run_documents(self, idx[:, :c], doc_starts[:, :c], continue_fn=go_on if continuing else None))
        logits, fresh = self(idx[:, c:], return_state=True)
        parts.append(logits)
        if continuing:  # the caller's state object becomes the new stream's
            state.layers, state.pos = fresh.layers, fresh.pos
            fresh = state
        return torch.cat(parts, dim=1), fresh

    def prefill(self, idx: Tensor, state: LMNState | None = None, max_chunk: int | None = 4096,
                doc_starts: Tensor | None = None):
        """Consume a (long) prompt with bounded memory: parallel passes over pieces of at
        most ``max_chunk`` tokens (best a power of the stride), each continuing the stream.

        ``doc_starts`` (``(B, T)`` bool, as in :meth:`forward`): the prompt holds several
        documents; the stream restarts at the last one (positions from its start), which
        must start at the same column in every row. Column 0 continues ``state`` unless
        marked. The earlier documents change nothing that a prefill returns, so they are
        not computed.

        Returns ``(logits of the last position (B, vocab_size), state)``. Peak memory
        depends on ``max_chunk``, not on the prompt length.
        """
        self._check_idx(idx)
        check_int("max_chunk", max_chunk, min=1, allow_none=True)
        if doc_starts is not None:
            check_doc_starts(doc_starts, idx)
            if state is not None:
                self._check_state(state, idx.shape[0], idx.device)
            last = last_run(doc_starts, "LMN.prefill", continuing=state is not None)
            if not last.continues:
                idx = idx[:, last.start:]
                if state is not None:
                    self.restart(state)
        state = self.init_state(idx.shape[0], device=idx.device) if state is None else state
        for piece in self._pieces(idx, state, max_chunk):
            last = self._extend(piece, state)[:, -1]
        return last, state

    @property
    def _chunk(self) -> int:
        return self.config.tree.chunk(self.config.chunk_size)

    def _pieces(self, idx: Tensor, state: LMNState, max_chunk: int | None):
        """Pieces of ``idx`` whose trees align with the stream's (:func:`lmn.tree.piece_lengths`)."""
        self._check_state(state, idx.shape[0], idx.device)
        t = 0
        for n in piece_lengths(state.pos, idx.shape[1], self.config.stride, max_chunk):
            yield idx[:, t : t + n]
            t += n

    def _extend(self, piece: Tensor, state: LMNState) -> Tensor:
        if state.pos == 0:  # a fresh stream: a plain prefill
            logits, fresh = self(piece, return_state=True)
            state.layers, state.pos = fresh.layers, fresh.pos
            return logits
        c0, C = state.pos, piece.shape[1]
        if C == 1:  # one token: the streaming step is the parallel form of one position
            return self.step(piece[:, 0], state)[0][:, None]
        h = self._embed(piece, c0)
        for l, block in enumerate(self.blocks):
            h, state.layers[l] = block(h, state.layers[l], c0, chunk=self._chunk)
        state.pos = c0 + C
        return self.head(self.ln_f(h))

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch_size: int, device=None, dtype=None) -> LMNState:
        """Empty state for ``batch_size`` streams (position 0)."""
        check_int("batch_size", batch_size, min=1)
        ref = self._reference_tensor()
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return LMNState(self.config, batch_size, 0, [block.init_state(batch_size, device, dtype) for block in self.blocks])

    def restart(self, state: LMNState) -> LMNState:
        """Empty ``state`` in place: every stream back at position 0 (a new document)."""
        ref = state.layers[0].slot_q
        state.layers = [block.init_state(state.batch_size, ref.device, ref.dtype) for block in self.blocks]
        state.pos = 0
        return state

    def step(self, tokens: Tensor, state: LMNState, reset=None):
        """Streaming form: consume one token per sequence.

        Args:
            tokens: ``(B,)`` or ``(B, 1)`` integer ids.
            state: from :meth:`init_state` or a prefill; updated in place.
            reset: the token starts a new document: the stream restarts before it
                (positions and memory from the document's start, :meth:`restart`).
                ``True`` or a ``(B,)`` bool tensor; the state holds one position for its
                batch, so it restarts every row or none (the exported step,
                :mod:`lmn.export`, keeps a position per row and resets rows apart).
        Returns:
            ``(logits (B, vocab_size), state)``.
        """
        if not isinstance(state, LMNState):
            raise TypeError(f"state must be an LMNState (from init_state or a prefill), got {type(state).__name__}")
        if torch.compiler.is_compiling():
            raise RuntimeError("LMN.step is not compiled: its per-token control flow (which tree levels a token "
                               "completes) would recompile at every position. Compile the parallel form "
                               "(torch.compile(model)) and step the eager model, or use lmn.native / lmn.graphs")
        if isinstance(tokens, Tensor) and tokens.dim() == 2 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if isinstance(tokens, Tensor) and tokens.dim() != 1:
            raise ValueError(
                f"step takes one token per sequence, shape (batch,) or (batch, 1); got shape {tuple(tokens.shape)}"
            )
        self._check_tokens(tokens, "tokens")
        self._check_state(state, tokens.shape[0], tokens.device)
        if reset is not None and reset is not False:
            rows = reset_rows(reset, tokens.shape[0], "LMN.step's reset")
            if rows and len(rows) < tokens.shape[0]:
                raise ValueError(f"LMN.step restarts every stream or none (its state holds one position for the "
                                 f"batch), but reset marks rows {format_rows(rows)} of {tokens.shape[0]}; step those "
                                 "rows in a state of their own (state.select) or use the exported step (lmn.export), "
                                 "which resets rows apart")
            if rows:
                self.restart(state)
        pos = state.pos
        h = self._embed(tokens, pos)  # (B, d)
        layers = state.layers
        if pos == 0:  # a new stream: the parallel form of one position
            h = h.unsqueeze(1)
        for l, block in enumerate(self.blocks):
            # the block's one call (its forward, without nn.Module.__call__'s per-token overhead):
            # one token continuing the stream is the streaming step (pos 0: the parallel form)
            h, layers[l] = block.forward(h, layers[l], pos)
        state.pos = pos + 1
        h = F.layer_norm(h if pos else h.squeeze(1), self.ln_f.normalized_shape, self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        head = self.head
        if type(head) is nn.Linear:
            return F.linear(h, head.weight, head.bias), state
        return head(h), state  # an adapted or quantized head: its own call

    # ------------------------------------------------------------------ generation
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, native: bool = False) -> Tensor:
        """Sample a continuation of ``idx (B, T)``: see :func:`lmn.generation.generate`."""
        from .generation import generate

        return generate(self, idx, max_new_tokens, temperature, top_k, generator, native)

    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, native=False):
        """Like :meth:`generate` but yields each new ``(B,)`` token as soon as it exists."""
        from .generation import generate_stream

        return generate_stream(self, idx, max_new_tokens, temperature, top_k, generator, native)
