"""S4D: a diagonal state space model, in plain PyTorch.

S4D (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and Initialization of Diagonal State
Space Models", arXiv 2206.11893) runs, per channel ``h`` of ``H``, the linear ODE
``x'(t) = A x(t) + B u(t)``, ``y(t) = C x(t) + D u(t)`` with a *diagonal* complex ``A`` of
``N/2`` modes (the other ``N/2`` are their complex conjugates, so the output is twice the real
part of the ``N/2`` modes' sum). Discretised with step ``dt`` by zero-order hold (ZOH)::

    A_bar = exp(dt A),   B_bar = (A_bar - 1) / A * B
    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C . x_t) + D u_t

which unrolls into a causal convolution ``y = K * u + D u`` with the kernel

    K_l = 2 Re( sum_n C_n B_bar_n A_bar_n ** l ),   l = 0 .. L-1

(a Vandermonde product: ``A_bar ** l = exp(l dt A)``). One function, :meth:`S4DMixer.forward`,
runs a chunk of ``L`` tokens given the state ``x`` the prefix left: the convolution with
``K`` (by FFT padded to ``2L``, or directly for short chunks), plus the prefix state read
through ``2 Re(C . A_bar ** (t+1) x)``, and, when asked, the state after the chunk
(``A_bar ** L x + sum_s A_bar ** (L-1-s) B_bar u_s``). The training forward is that function
on the whole sequence from a zero state (``form="fft"`` / ``"direct"``; ``"conv"`` picks by
length); prefill is it on successive chunks; the decode step is the recurrence itself, O(1)
per token (``form="recurrent"`` runs it over the whole sequence). They are tested equal to
a plain loop over time written from the equations above, logits and gradients
(``tests/kinds/test_s4d.py``).

What follows the paper:

* the diagonal complex ``A`` with ``N/2`` conjugate-paired modes, parameterised as
  ``A = -exp(log_A_real) + i A_imag`` (real part kept negative), and its two initialisations:
  S4D-Lin ``A_n = -1/2 + i pi n`` (the default) and S4D-Inv
  ``A_n = -1/2 + i N/pi (N/(2n+1) - 1)`` (``init="inv"``);
* ``dt`` learned per channel as ``log dt``, initialised log-uniform in ``[dt_min, dt_max] =
  [1e-3, 1e-1]``; ZOH discretisation; ``B`` initialised to ones; ``C`` random complex normal
  (variance 1, i.e. 1/2 per real and imaginary part); the ``D`` skip; the output ``2 Re``;
* the standard S4 block: pre-norm (LayerNorm), the SSM, GELU, then a position-wise linear
  ``H -> 2H`` with a GLU, added to the residual stream.

Choices of lmn (named, not the paper's):

* ``B`` is not a separate parameter: with a diagonal ``A`` only the products ``B_n C_n`` enter
  the kernel and the recurrence's output, so ``B = 1`` is folded into ``C`` (a learned ``B``
  would add ``H x N`` parameters that change nothing the model can express);
* ``D ~ N(0, 1)``; the embedding is normal with std 0.02 and tied to the output head (as the
  other peers); a final LayerNorm before the head; no dropout;
* an optional MLP after each SSM block (``mlp_ratio``, pre-norm, GELU; 0 by default: the
  paper's block alone already matches the budget);
* the convolution is computed directly (a grouped ``conv1d``) for chunks of at most
  ``direct_max`` tokens and by FFT above (untimed: both forms are exact up to rounding);
* the kernel is a plain Vandermonde product (the paper's reference way), which holds an
  ``(H, N/2, L)`` complex tensor per layer: fine at the windows lmn trains, memory-heavy for
  very long ones (no Cauchy/KeOps kernel here). The kernel, the FFT and the state are computed
  in the parameters' dtype; under bf16 autocast the direct convolution runs in bf16, as
  autocast runs any ``conv1d``. In float32 both forms stay within 1e-5 of float64 over 4,096 tokens at
  the paper size and init (logits of order 0.6; measured once, not a test).

Parameters for 65 symbols, tied head: ``paper`` (d 64, 4 layers, N 64 = 32 complex modes per
channel) 71,360 (LMN 71,489; Mamba-2 70,192); ``large`` (d 692, 8 layers, N 64) 8,450,012
(LMN 8,449,089). The decode state is ``layers x H x N/2`` complex numbers: 64 KiB at the
paper size in float32, whatever the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..documents import check_doc_starts, run_documents
from ..kinds.base import BenchSpec, ModelKind
from ..validation import check_choice, check_int
from ._common import ConfigMixin, StateDecoder, check_idx, enable_checkpointing, state_stream

FORMS = ("conv", "fft", "direct", "recurrent")
INITS = ("lin", "inv")


@dataclass
class S4DConfig(ConfigMixin):
    """Size of the S4D peer: ``d_model`` channels ``H``, ``d_state`` ``N`` (``N/2`` complex modes)."""

    vocab_size: int = 65
    d_model: int = 64
    n_layers: int = 4
    d_state: int = 64  # N: the real state size; N/2 complex modes and their conjugates
    init: str = "lin"  # S4D-Lin ("lin") or S4D-Inv ("inv")
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    mlp_ratio: int = 0  # an MLP of width mlp_ratio * d_model after each SSM block (0: none)
    direct_max: int = 64  # chunks up to this length are convolved directly, longer ones by FFT
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self._check_positive_ints("vocab_size", "d_model", "n_layers", "d_state")
        check_int("S4DConfig.mlp_ratio", self.mlp_ratio, min=0)
        check_int("S4DConfig.direct_max", self.direct_max, min=0)
        if self.d_state % 2:
            raise ValueError(f"S4DConfig.d_state must be even (N/2 complex modes and their conjugates), "
                             f"got {self.d_state}")
        check_choice("S4DConfig.init", self.init, INITS)
        for name in ("dt_min", "dt_max", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"S4DConfig.{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"S4DConfig needs 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    @property
    def modes(self) -> int:
        return self.d_state // 2


@dataclass
class S4DState:
    """The decode state of the whole model after ``pos`` tokens: one complex ``(B, H, N/2)``
    SSM state per layer."""

    pos: int
    layers: list

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.layers)


def init_A(d_model: int, d_state: int, init: str) -> tuple[Tensor, Tensor]:
    """``(log_A_real, A_imag)``, each ``(H, N/2)``: S4D-Lin ``-1/2 + i pi n`` or S4D-Inv
    ``-1/2 + i N/pi (N/(2n+1) - 1)``, the same for every channel."""
    n = torch.arange(d_state // 2, dtype=torch.float64)
    imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (2 * n + 1) - 1)
    real = torch.full_like(n, 0.5)
    return torch.log(real).expand(d_model, -1).float().clone(), imag.expand(d_model, -1).float().clone()


class S4DMixer(nn.Module):
    """The S4D layer of one block: SSM over ``H`` channels, GELU, linear ``H -> 2H``, GLU."""

    def __init__(self, cfg: S4DConfig):
        super().__init__()
        self.cfg = cfg
        H, M = cfg.d_model, cfg.modes
        self.log_dt = nn.Parameter(torch.empty(H))
        self.log_A_real = nn.Parameter(torch.empty(H, M))
        self.A_imag = nn.Parameter(torch.empty(H, M))
        self.C = nn.Parameter(torch.empty(H, M, 2))  # complex C (times B = 1), as (real, imag)
        self.D = nn.Parameter(torch.empty(H))
        self.out_proj = nn.Linear(H, 2 * H)

    def reset_parameters(self) -> None:
        cfg = self.cfg
        with torch.no_grad():
            lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
            self.log_dt.copy_(torch.rand(cfg.d_model) * (hi - lo) + lo)
            log_real, imag = init_A(cfg.d_model, cfg.d_state, cfg.init)
            self.log_A_real.copy_(log_real)
            self.A_imag.copy_(imag)
            self.C.normal_(0.0, math.sqrt(0.5))
            self.D.normal_(0.0, 1.0)
        self.out_proj.reset_parameters()

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(dtA, A_bar, B_bar)``, each complex ``(H, N/2)``: ``dt A``, ``exp(dt A)`` and
        ``(A_bar - 1) / A`` (ZOH with ``B = 1``)."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dtA = A * torch.exp(self.log_dt)[:, None]
        A_bar = torch.exp(dtA)
        return dtA, A_bar, (A_bar - 1) / A

    def empty(self, batch: int, device, dtype) -> Tensor:
        return torch.zeros(batch, self.cfg.d_model, self.cfg.modes, device=device, dtype=dtype.to_complex())

    def ssm(self, u: Tensor, state: Tensor | None, want_state: bool, conv: str = "conv") -> tuple[Tensor, Tensor | None]:
        """``y (B, L, H)`` of the SSM over the chunk ``u (B, L, H)`` that continues ``state``
        (complex ``(B, H, N/2)``, None: zeros), and the state after it when ``want_state``."""
        Bsz, L, H = u.shape
        dtA, A_bar, B_bar = self.discrete()
        C = torch.view_as_complex(self.C)
        real = self.log_dt.dtype  # kernel, FFT and state in the parameters' dtype (autocast: conv1d in bf16)
        powers = torch.exp(dtA[..., None] * torch.arange(L, device=u.device, dtype=real))  # (H, M, L): A_bar^l
        K = 2 * torch.einsum("hm,hml->hl", C * B_bar, powers).real  # (H, L)
        x = u.transpose(1, 2).to(real)  # (B, H, L)
        if conv == "conv":
            conv = "direct" if L <= self.cfg.direct_max else "fft"
        if conv == "direct":
            y = F.conv1d(F.pad(x, (L - 1, 0)), K.flip(-1)[:, None, :], groups=H)
        else:
            n = 2 * L
            y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]
        y = y + x * self.D[:, None]
        if state is not None:  # the prefix, read through its state: 2 Re(C A_bar^(t+1) x)
            y = y + 2 * torch.einsum("hm,bhm,hml->bhl", C * A_bar, state, powers).real
        new = None
        if want_state:  # A_bar^L x + sum_s A_bar^(L-1-s) B_bar u_s
            new = torch.einsum("hm,hml,bhl->bhm", B_bar, powers.flip(-1), x.to(powers.dtype))
            if state is not None:
                new = new + state * (A_bar * powers[..., -1])
        return y.transpose(1, 2), new

    def step_ssm(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """The recurrence for one token ``u (B, H)``: ``x = A_bar x + B_bar u``,
        ``y = 2 Re(C . x) + D u``; returns ``(y (B, H), x)``."""
        _, A_bar, B_bar = self.discrete()
        u = u.to(self.log_dt.dtype)
        state = A_bar * state + B_bar * u[..., None]
        y = 2 * (torch.view_as_complex(self.C) * state).sum(-1).real + self.D * u
        return y, state

    def output(self, y: Tensor) -> Tensor:
        return F.glu(self.out_proj(F.gelu(y)), dim=-1)


class S4DBlock(nn.Module):
    """Pre-norm residual block: ``h + S4D(LN(h))``, then ``h + MLP(LN(h))`` when ``mlp_ratio``."""

    def __init__(self, cfg: S4DConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = S4DMixer(cfg)
        if cfg.mlp_ratio:
            self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                     nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))
        else:
            self.mlp = None

    def _mlp(self, h: Tensor) -> Tensor:
        return h if self.mlp is None else h + self.mlp(self.mlp_norm(h))

    def forward(self, h: Tensor, state: Tensor | None, want_state: bool, conv: str) -> tuple[Tensor, Tensor | None]:
        y, state = self.mixer.ssm(self.norm(h), state, want_state, conv)
        return self._mlp(h + self.mixer.output(y)), state

    def step(self, h: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self.mixer.step_ssm(self.norm(h), state)
        return self._mlp(h + self.mixer.output(y)), state


class S4D(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``; ``prefill``/``step`` decode with a
    constant-size :class:`S4DState`."""

    def __init__(self, config: S4DConfig):
        super().__init__()
        if not isinstance(config, S4DConfig):
            raise TypeError(f"S4D expects an S4DConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(S4DBlock(config) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        for block in self.layers:
            block.mixer.reset_parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> S4DState:
        weight = self.embed.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        return S4DState(0, [blk.mixer.empty(batch_size, device, dtype) for blk in self.layers])

    def _head(self, h: Tensor) -> Tensor:
        return F.linear(self.norm_f(h), self.embed.weight)

    def _run(self, idx: Tensor, states: list | None, want_state: bool, conv: str) -> tuple[Tensor, list]:
        h = self.embed(idx)
        states = list(states) if states is not None else [None] * len(self.layers)
        for i, block in enumerate(self.layers):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h, states[i] = torch.utils.checkpoint.checkpoint(block, h, states[i], want_state, conv,
                                                                 use_reentrant=False)
            else:
                h, states[i] = block(h, states[i], want_state, conv)
        return self._head(h), states

    def forward(self, idx: Tensor, form: str = "conv", doc_starts: Tensor | None = None) -> Tensor:
        """Logits ``(B, T, vocab)``; ``doc_starts`` (packed rows, :mod:`lmn.documents`):
        every document run alone (:func:`lmn.documents.run_documents`)."""
        check_idx(idx, self.config.vocab_size)
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        if doc_starts is not None:
            return run_documents(lambda ids: self(ids, form), idx, check_doc_starts(doc_starts, idx))
        if form == "recurrent":
            state = self.init_state(idx.shape[0])
            return torch.stack([self.step(idx[:, t], state)[0] for t in range(idx.shape[1])], dim=1)
        return self._run(idx, None, False, form)[0]

    def prefill(self, idx: Tensor, state: S4DState | None = None, max_chunk: int = 1024) -> tuple[Tensor, S4DState]:
        """Logits of ``idx (B, L)`` continuing ``state`` (a new stream when None), in chunks
        of at most ``max_chunk`` tokens; returns them and the state after the last token."""
        check_idx(idx, self.config.vocab_size)
        check_int("max_chunk", max_chunk, min=1)
        pos, layers = (0, None) if state is None else (state.pos, state.layers)
        outs = []
        for lo in range(0, idx.shape[1], max_chunk):
            logits, layers = self._run(idx[:, lo:lo + max_chunk], layers, True, "conv")
            outs.append(logits)
        return torch.cat(outs, dim=1), S4DState(pos + idx.shape[1], layers)

    def step(self, token: Tensor, state: S4DState) -> tuple[Tensor, S4DState]:
        """Logits ``(B, vocab)`` of one token ``(B,)`` continuing ``state`` by the recurrence;
        the state is updated in place (its layers replaced) and returned."""
        if not isinstance(token, Tensor) or token.dim() != 1:
            shape = tuple(token.shape) if isinstance(token, Tensor) else type(token).__name__
            raise ValueError(f"step takes one token per stream, a (batch,) tensor of ids, got {shape}")
        check_idx(token[:, None], self.config.vocab_size)
        h = self.embed(token)
        for i, block in enumerate(self.layers):
            h, state.layers[i] = block.step(h, state.layers[i])
        state.pos += 1
        return self._head(h), state


S4DDecoder = StateDecoder  # (lmn.baselines._common)


def _state_bytes(config: dict, positions: int) -> int:
    """Float32 bytes at batch 1: one complex64 ``(H, N/2)`` state per layer, whatever the context."""
    cfg = S4DConfig.from_dict(config)
    return 8 * cfg.n_layers * cfg.d_model * cfg.modes




KINDS = {"s4d": ModelKind(
    name="s4d",
    title="S4D",
    config_class=S4DConfig,
    model_class=S4D,
    decoder=S4DDecoder,
    sizes={"paper": {}, "large": {"d_model": 692, "n_layers": 8},
           "tiny": {"d_model": 16, "n_layers": 2, "d_state": 8}},
    state_bytes=_state_bytes,
    enable_checkpointing=enable_checkpointing,
    preset={},
    stream=state_stream("s4d"),
    bench=BenchSpec(describe={"decode": "`S4D.step` (PyTorch, the ZOH recurrence)",
                              "bench-train": "S4D convolution form (Vandermonde kernel, FFT; PyTorch)",
                              "state": "one complex (H, N/2) SSM state per layer"}),
)}
