"""Log-linear Mamba-2: a peer that keeps O(log T) states, in plain PyTorch.

Log-linear attention (Guo, Yang, Goel, Xing, Dao, Kim 2025, arXiv 2506.04761) splits the
prefix of a query at position ``t`` into Fenwick buckets: the token itself (level 0) and one
bucket per set bit of ``t``, the most recent the smallest. Token ``s < t`` falls in level
``l(t, s) = msb(t xor s) + 1``. Each bucket is a Mamba-2 state (a sum of decayed outer
products), and the query reads every bucket with its own data-dependent weight
``lambda_t^(l)``::

    y_t = sum_{s <= t} lambda_t^(l(t, s)) * exp(sum_{r=s+1..t} a_r) * (C_t . B_s) * dt_s x_s + D x_t

with Mamba-2's ``a_r = -exp(A_log) * dt_r``. With every ``lambda`` equal it is Mamba-2. A
decoder keeps one ``(heads, head_dim, state)`` matrix per set bit of ``t``: O(log T) state.

One function, :meth:`LogLinearMixer.forward`, runs the layer over an *aligned chunk* -- ``L`` tokens
starting at a position ``p`` that a power of two ``C >= L`` divides (any length when
``p = 0``) -- given the buckets of the prefix ``[0, p)``: inside the chunk the masked
``L x L`` form, the older buckets read through their states, then the buckets of ``[0, p+L)``
by binary addition (adding a bucket carries into the next level as a counter does). Every
form is that function: the whole sequence as one chunk (the quadratic masked form,
``form="quadratic"``), chunks of ``chunk_size`` (the default training form: memory
O(T * chunk_size) per head instead of O(T^2)), prefill in aligned pieces, and the step
(``L = 1``). They are tested equal, logits and gradients (``tests/kinds/test_loglinear.py``).

What follows the paper: the Fenwick partition and level function, a per-level weight
computed from x_t by the input projection and passed through softplus with a learned
per-level scale (``lambda = softplus(scale_l * dl_t^(l))``), Mamba-2's block around it
(input projection to z, x, B, C, dt; causal depthwise conv + SiLU on x, B, C; D skip; gated
RMSNorm; output projection) and its initialisation as in transformers' Mamba-2 (normal 0.1
for linears and the embedding, A = 1..heads, dt log-uniform in [0.001, 0.1], D = 1).

Choices of lmn (named, not the paper's):

* ``lambda_per_head = False`` by default: one lambda per level shared by the heads (the
  paper has one per head and level); per-head lambdas cost ``heads x levels x d`` more
  parameters per layer, which at the paper budget (d 48) would add 34K to 70K;
* ``num_levels = 12``: levels from 11 up share the last weight, so any length runs (the
  reference code fixes 15 levels for 16K tokens); the state keeps every level;
* the paper's chunked kernel is Triton; here the chunked form is plain PyTorch with a Python
  loop over chunks of 16 (of 8 to 256, the fastest training step on CPU at T = 256; long
  windows pay for the loop, see docs/results/bench/loglinear_train.md).

Parameters for 65 symbols, tied head: ``paper`` (d 48, 4 layers, state 16, head_dim 8, 12
heads, 12 shared levels) 72,544 (Mamba-2 70,192, LMN 71,489).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..documents import check_doc_starts, run_documents
from ..kinds.base import BenchSpec, ModelKind
from ..validation import check_int
from ._common import ConfigMixin, StateDecoder, check_heads, check_idx, enable_checkpointing, state_stream

FORMS = ("chunked", "quadratic", "step")


@dataclass
class LogLinearMamba2Config(ConfigMixin):
    """Size of the log-linear Mamba-2 peer (Mamba-2's field names, plus the levels)."""

    vocab_size: int = 65
    hidden_size: int = 48
    num_hidden_layers: int = 4
    state_size: int = 16
    expand: int = 2
    head_dim: int = 8
    n_groups: int = 1
    conv_kernel: int = 4
    num_levels: int = 12  # lambda weights; levels >= num_levels - 1 share the last one
    lambda_per_head: bool = False  # the paper: True (one lambda per head and level)
    chunk_size: int = 16  # the training form's aligned chunk (a power of two; the fastest on CPU at T 256)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self._check_positive_ints("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand",
                                  "head_dim", "n_groups", "conv_kernel", "chunk_size")
        check_int(f"{type(self).__name__}.num_levels", self.num_levels, min=2)
        if not isinstance(self.lambda_per_head, bool):
            raise TypeError(f"LogLinearMamba2Config.lambda_per_head must be true or false, got {self.lambda_per_head!r}")
        if self.chunk_size & (self.chunk_size - 1):
            raise ValueError(f"LogLinearMamba2Config.chunk_size must be a power of two, got {self.chunk_size}")
        check_heads(self.expand, self.hidden_size, self.head_dim, self.n_groups)

    @property
    def inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def num_heads(self) -> int:
        return self.inner // self.head_dim

    @property
    def lambda_groups(self) -> int:
        return self.num_heads if self.lambda_per_head else 1


# ----------------------------------------------------------------------------- the Fenwick levels
@functools.lru_cache(maxsize=64)
def level_matrix(length: int, num_levels: int, device=None) -> Tensor:
    """``(L, L)`` int64: the lambda index of key ``j`` for query ``i`` inside an aligned chunk
    (``0`` on the diagonal, ``min(msb(i xor j) + 1, num_levels - 1)`` below it, 0 above).
    Cached: every chunk (and every decoded token) of a length reads the same one."""
    i = torch.arange(length, device=device)
    x = i[:, None] ^ i[None, :]
    msb = torch.zeros_like(x)
    nz = x > 0
    msb[nz] = torch.floor(torch.log2(x[nz].double())).long() + 1
    return msb.clamp(max=num_levels - 1)


@functools.lru_cache(maxsize=64)
def _causal(length: int, device=None) -> Tensor:
    """``(L, L)`` bool: key ``j <= i`` (cached like :func:`level_matrix`)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


@dataclass
class LayerCache:
    """One layer's decode state: the last ``conv_kernel - 1`` conv inputs, and one bucket
    state ``(B, heads, head_dim, state)`` per set bit of the position (``None`` elsewhere);
    ``buckets[b]`` covers the ``2**b`` tokens of that bit, decayed to the last token."""

    conv: Tensor
    buckets: list


@dataclass
class LogLinearState:
    """The decode state of the whole model at ``pos`` tokens."""

    pos: int
    layers: list

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in self.layers:
            total += layer.conv.numel() * layer.conv.element_size()
            total += sum(b.numel() * b.element_size() for b in layer.buckets if b is not None)
        return total


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``y * silu(z)`` (Mamba-2's gated norm, gate before the norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = y * F.silu(z)
        return self.weight * y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class LogLinearMixer(nn.Module):
    """Mamba-2's mixer with log-linear (Fenwick) buckets read by per-level weights."""

    def __init__(self, cfg: LogLinearMamba2Config):
        super().__init__()
        self.cfg = cfg
        H, G, N = cfg.num_heads, cfg.n_groups, cfg.state_size
        self.conv_dim = cfg.inner + 2 * G * N
        self.n_lambda = cfg.lambda_groups * cfg.num_levels
        self.in_proj = nn.Linear(cfg.hidden_size, cfg.inner + self.conv_dim + H + self.n_lambda, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.conv_kernel, groups=self.conv_dim)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.level_scale = nn.Parameter(torch.ones(cfg.lambda_groups, cfg.num_levels))
        self.norm = GatedRMSNorm(cfg.inner, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.inner, cfg.hidden_size, bias=False)

    def empty(self, batch: int, device, dtype) -> LayerCache:
        return LayerCache(torch.zeros(batch, self.conv_dim, self.cfg.conv_kernel - 1, device=device, dtype=dtype), [])

    def forward(self, u: Tensor, cache: LayerCache, pos: int) -> tuple[Tensor, LayerCache]:
        """``u (B, L, d)``, an aligned chunk at ``pos`` given ``cache`` (the prefix's buckets)."""
        cfg = self.cfg
        Bsz, L, _ = u.shape
        H, G, N, P = cfg.num_heads, cfg.n_groups, cfg.state_size, cfg.head_dim
        z, xbc, dt, dl = self.in_proj(u).split([cfg.inner, self.conv_dim, H, self.n_lambda], dim=-1)
        # causal depthwise conv over [the cached inputs, this chunk]
        seq = torch.cat([cache.conv, xbc.transpose(1, 2)], dim=2)  # (B, conv_dim, K-1+L)
        conv_next = seq[:, :, seq.shape[2] - (cfg.conv_kernel - 1):]
        xbc = F.silu(F.conv1d(seq, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)).transpose(1, 2)
        x, Bm, Cm = xbc.split([cfg.inner, G * N, G * N], dim=-1)
        x = x.reshape(Bsz, L, H, P)
        per = H // G
        Bm = Bm.reshape(Bsz, L, G, N).repeat_interleave(per, dim=2)  # (B, L, H, N)
        Cm = Cm.reshape(Bsz, L, G, N).repeat_interleave(per, dim=2)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H)
        cs = torch.cumsum(dt * -torch.exp(self.A_log), dim=1)  # (B, L, H): decay logs within the chunk
        lam = F.softplus(dl.reshape(Bsz, L, cfg.lambda_groups, cfg.num_levels) * self.level_scale)
        lam = lam.repeat_interleave(H // cfg.lambda_groups, dim=2)  # (B, L, H, levels)
        xdt = x * dt[..., None]  # (B, L, H, P)

        # inside the chunk: the masked L x L form
        levels = level_matrix(L, cfg.num_levels, device=u.device)
        causal = _causal(L, u.device)
        seg = (cs.transpose(1, 2)[..., :, None] - cs.transpose(1, 2)[..., None, :])  # (B, H, L, L)
        decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
        lam_ij = torch.gather(lam.permute(0, 2, 1, 3), 3, levels.expand(Bsz, H, L, L))  # (B, H, L, L)
        scores = torch.einsum("bihn,bjhn->bhij", Cm, Bm) * decay * lam_ij
        y = torch.einsum("bhij,bjhp->bihp", scores, xdt)

        # the prefix's buckets, read through their states (decayed on into the chunk)
        grow = torch.exp(cs)  # (B, L, H)
        for bit, state in enumerate(cache.buckets):
            if state is None:
                continue
            weight = lam[..., min(bit + 1, cfg.num_levels - 1)] * grow  # (B, L, H)
            y = y + torch.einsum("bhpn,blhn->blhp", state, Cm) * weight[..., None]
        y = y + x * self.D[:, None]
        out = self.out_proj(self.norm(y.reshape(Bsz, L, cfg.inner), z))

        # the buckets of [0, pos + L): old ones decayed to the chunk's end, then this chunk's
        # sub-buckets (the bits of L, highest first) added with carry
        end = cs[:, -1]  # (B, H)
        buckets = [None if s is None else s * torch.exp(end)[..., None, None] for s in cache.buckets]
        tail = xdt * torch.exp(end[:, None] - cs)[..., None]  # each token decayed to the chunk's end
        lo = 0
        for bit in reversed(range(L.bit_length())):
            if not L >> bit & 1:
                continue
            piece = torch.einsum("blhp,blhn->bhpn", tail[:, lo:lo + (1 << bit)], Bm[:, lo:lo + (1 << bit)])
            lo += 1 << bit
            b = bit
            while b < len(buckets) and buckets[b] is not None:  # carry
                piece = piece + buckets[b]
                buckets[b] = None
                b += 1
            buckets.extend([None] * (b + 1 - len(buckets)))
            buckets[b] = piece
        return out, LayerCache(conv_next, buckets)


class LogLinearBlock(nn.Module):
    def __init__(self, cfg: LogLinearMamba2Config):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mixer = LogLinearMixer(cfg)

    def forward(self, h: Tensor, cache: LayerCache, pos: int) -> tuple[Tensor, LayerCache]:
        out, cache = self.mixer(self.norm(h), cache, pos)
        return h + out, cache


def _pieces(pos: int, length: int, largest: int):
    """Aligned pieces ``(start, size)`` covering ``[pos, pos + length)``: each starts where a
    power of two ``>= size`` (and ``<= largest``, a power of two) divides it."""
    end = pos + length
    while pos < end:
        room = largest if pos == 0 else min(largest, pos & -pos)
        size = min(room, end - pos)
        yield pos, size
        pos += size


class LogLinearMamba2(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``; ``step``/``prefill`` decode with an
    O(log T) :class:`LogLinearState`."""

    def __init__(self, config: LogLinearMamba2Config):
        super().__init__()
        if not isinstance(config, LogLinearMamba2Config):
            raise TypeError(f"LogLinearMamba2 expects a LogLinearMamba2Config, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LogLinearBlock(config) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.norm_eps)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As transformers initialises Mamba-2 (initializer_range 0.1, no residual rescale)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.1)
        for block in self.layers:
            m = block.mixer
            H = self.config.num_heads
            with torch.no_grad():
                m.A_log.copy_(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))
                m.D.fill_(1.0)
                dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
                m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
                m.level_scale.fill_(1.0)
            nn.init.kaiming_uniform_(m.conv1d.weight, a=math.sqrt(5))
            nn.init.zeros_(m.conv1d.bias)
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> LogLinearState:
        weight = self.embed.weight
        device, dtype = device or weight.device, dtype or weight.dtype
        return LogLinearState(0, [blk.mixer.empty(batch_size, device, dtype) for blk in self.layers])

    def _run(self, idx: Tensor, state: LogLinearState, largest: int) -> tuple[Tensor, LogLinearState]:
        h = self.embed(idx)
        outs, pos = [], state.pos
        caches = list(state.layers)
        for start, size in _pieces(state.pos, idx.shape[1], largest):
            x = h[:, start - pos:start - pos + size]
            for i, block in enumerate(self.layers):
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    x, caches[i] = torch.utils.checkpoint.checkpoint(block, x, caches[i], start, use_reentrant=False)
                else:
                    x, caches[i] = block(x, caches[i], start)
            outs.append(x)
        logits = F.linear(self.norm_f(torch.cat(outs, dim=1)), self.embed.weight)
        return logits, LogLinearState(pos + idx.shape[1], caches)

    def forward(self, idx: Tensor, form: str = "chunked", doc_starts: Tensor | None = None) -> Tensor:
        """Logits ``(B, T, vocab)``; ``doc_starts`` (packed rows, :mod:`lmn.documents`):
        every document run alone (:func:`lmn.documents.run_documents`)."""
        check_idx(idx, self.config.vocab_size)
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        if doc_starts is not None:
            return run_documents(lambda ids: self(ids, form), idx, check_doc_starts(doc_starts, idx))
        state = self.init_state(idx.shape[0])
        if form == "step":
            return torch.cat([self.step(idx[:, t], state)[0][:, None] for t in range(idx.shape[1])], dim=1)
        largest = 1 << max(idx.shape[1] - 1, 0).bit_length() if form == "quadratic" else self.config.chunk_size
        return self._run(idx, state, largest)[0]

    def prefill(self, idx: Tensor, state: LogLinearState | None = None,
                max_chunk: int = 1024) -> tuple[Tensor, LogLinearState]:
        """Logits of ``idx (B, L)`` continuing ``state`` (a new stream when None), in aligned
        pieces of at most ``max_chunk`` tokens (rounded down to a power of two)."""
        check_idx(idx, self.config.vocab_size)
        check_int("max_chunk", max_chunk, min=1)
        state = state if state is not None else self.init_state(idx.shape[0])
        return self._run(idx, state, 1 << (max_chunk.bit_length() - 1))

    def step(self, token: Tensor, state: LogLinearState) -> tuple[Tensor, LogLinearState]:
        """Logits ``(B, vocab)`` of one token ``(B,)`` continuing ``state``; the state is
        updated in place (its layers replaced) and returned."""
        logits, new = self._run(token[:, None], state, 1)
        state.pos, state.layers = new.pos, new.layers
        return logits[:, 0], state


LogLinearDecoder = StateDecoder  # (lmn.baselines._common)


def _state_bytes(config: dict, positions: int) -> int:
    """Float32 bytes at batch 1 after ``positions`` tokens: conv inputs + one bucket per set bit."""
    cfg = LogLinearMamba2Config.from_dict(config)
    conv = (cfg.inner + 2 * cfg.n_groups * cfg.state_size) * (cfg.conv_kernel - 1)
    bucket = cfg.num_heads * cfg.head_dim * cfg.state_size
    return 4 * cfg.num_hidden_layers * (conv + bucket * bin(positions).count("1"))




KINDS = {"loglinear-mamba2": ModelKind(
    name="loglinear-mamba2",
    title="Log-linear Mamba-2",
    config_class=LogLinearMamba2Config,
    model_class=LogLinearMamba2,
    decoder=LogLinearDecoder,
    sizes={"paper": {}, "large": {"hidden_size": 416, "num_hidden_layers": 8, "head_dim": 64},
           "tiny": {"hidden_size": 16, "num_hidden_layers": 2}},
    state_bytes=_state_bytes,
    enable_checkpointing=enable_checkpointing,
    preset={},
    stream=state_stream("loglinear-mamba2"),
    bench=BenchSpec(describe={"decode": "`LogLinearMamba2.step` (PyTorch, one bucket per set bit)",
                              "bench-train": "chunked log-linear form (PyTorch)",
                              "state": "conv inputs + one Mamba-2 state per Fenwick level"}),
)}
