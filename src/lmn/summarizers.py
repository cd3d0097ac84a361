"""Summarizers S_b: the learned functions that merge ``k`` level i-1 nodes into one level i node.

Every summarizer takes the children of a batch of nodes, ``children`` shaped
``(..., n_banks, m, k, d)`` -- ``m`` is any number of independent items (nodes of a level,
times the vectors of each node's set when the expander is on), ``k`` the stride -- and
returns the merged nodes ``(..., n_banks, m, d)``. Each has three views of one function:

* ``forward``: the fast, batched version used by the parallel and streaming forms.
* ``reference``: the plain version used by :mod:`lmn.reference`, written as directly as
  possible from the definition (for the convolutions it literally calls the
  ``nn.Conv1d`` modules on the length-k sequence of children).
* ``affine()``: the summarizer as one affine map ``(W, b)`` in float64, ``W: (C, k*C)``
  with ``C = n_banks * d``, acting on the children's vectors laid out child-major then
  bank-major (``[child_0 bank_0, child_0 bank_1, ..., child_1 bank_0, ...]``), or ``None``
  for a summarizer that is not affine. Fast paths that need a matrix (the native step)
  are built from it and refuse a summarizer whose ``affine()`` is ``None`` or missing.

The expander (paper Sec. "Expander summarizer") grows each node's *set* of vectors by
``k`` with a transposed 1-D convolution (kernel ``1 + k``) along the set axis before
merging, so that a level i node holds ``1 + i*k`` vectors per bank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # lmn.config validates against this module's registry, so it is not imported here
    from .config import LMNConfig


class LinearSummarizer(nn.Module):
    """One ``Linear(k*d -> d)`` with bias per bank, shared across levels (the paper's, k = 2).

    Weights are stored in the paper's layout ``(n_banks, k*d, d)`` (rows: child 0's
    features, then child 1's, ...) and initialised as in its code: ``xavier_normal_`` on
    that 3-D tensor, then scaled by 0.1 (same for the ``(n_banks, 1, d)`` bias).
    """

    def __init__(self, d_model: int, n_banks: int, stride: int = 2):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_banks, stride * d_model, d_model))
        self.bias = nn.Parameter(torch.empty(n_banks, 1, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.weight).mul_(0.1)
            nn.init.xavier_normal_(self.bias).mul_(0.1)

    def forward(self, children: Tensor) -> Tensor:
        return _per_bank(children, self.weight, self.bias)  # the children side by side, one Linear per bank

    def reference(self, children: Tensor) -> Tensor:
        return _per_bank_reference(children, self.weight, self.bias)

    def affine(self) -> tuple[Tensor, Tensor]:
        C = self.weight.shape[0] * self.weight.shape[2]
        return _bank_matrix(self.weight.detach().to(torch.float64)), self.bias.detach().to(torch.float64).reshape(C)


def _plain_conv(*convs: nn.Module) -> bool:
    """Whether every module is a plain ``nn.Conv1d``, whose weight the fast forms read
    directly; an adapted one (a PEFT LoRA layer, ...) runs through its own call and has no
    stated affine form (like :func:`lmn.attention.plain_linear`)."""
    return all(type(c) is nn.Conv1d for c in convs)


def _children_to_channels(children: Tensor) -> Tensor:
    # (..., n_banks, m, k, d) -> (..., m, k, n_banks*d)
    return children.movedim(-4, -2).flatten(-2)


def _channels_to_banks(x: Tensor, n_banks: int) -> Tensor:
    # (..., m, n_banks*d) -> (..., n_banks, m, d)
    return x.unflatten(-1, (n_banks, -1)).transpose(-3, -2)


def _conv_reference(children: Tensor, convs, n_banks: int) -> Tensor:
    """Run ``convs`` (Conv1d modules in order) on each item's length-k sequence of children."""
    lead, m = children.shape[:-4], children.shape[-3]
    seq = _children_to_channels(children).transpose(-1, -2)  # (..., m, C, k)
    seq = seq.reshape(-1, seq.shape[-2], seq.shape[-1])  # (items, C, k): a length-k sequence
    for conv in convs:
        seq = conv(seq)
    out = seq[..., 0].reshape(*lead, m, -1)  # (..., m, C)
    return _channels_to_banks(out, n_banks)


class ConvSummarizer(nn.Module):
    """One standard ``Conv1d(C, C, kernel_size=k, stride=k)`` over the node axis, where
    ``C = n_banks * d``: every output bank sees every child of every bank."""

    def __init__(self, d_model: int, n_banks: int, stride: int = 2):
        super().__init__()
        self.n_banks = n_banks
        channels = n_banks * d_model
        self.conv = nn.Conv1d(channels, channels, kernel_size=stride, stride=stride)

    def forward(self, children: Tensor) -> Tensor:
        if not _plain_conv(self.conv):  # an adapted convolution (e.g. PEFT LoRA): called as a module
            return self.reference(children)
        # A kernel-k/stride-k convolution over [child_0, ..., child_k-1] is a linear map of
        # the concatenated children: W[:, :, r] acts on child r.
        joined = _children_to_channels(children).flatten(-2)  # (..., m, k*C)
        weight = self.conv.weight.permute(0, 2, 1).flatten(1)  # (C, k*C) = [W[:,:,0], W[:,:,1], ...]
        return _channels_to_banks(F.linear(joined, weight, self.conv.bias), self.n_banks)

    def reference(self, children: Tensor) -> Tensor:
        return _conv_reference(children, [self.conv], self.n_banks)

    def affine(self) -> tuple[Tensor, Tensor] | None:
        if not _plain_conv(self.conv):  # its weight is not the function it computes
            return None
        w = self.conv.weight.detach().to(torch.float64)
        return w.permute(0, 2, 1).flatten(1), self.conv.bias.detach().to(torch.float64)


class DepthwiseSeparableSummarizer(nn.Module):
    """Depthwise ``Conv1d(C, C, k, stride=k, groups=C)`` then pointwise ``Conv1d(C, C, 1)``
    (``C = n_banks * d``); the pointwise step mixes banks."""

    def __init__(self, d_model: int, n_banks: int, stride: int = 2):
        super().__init__()
        self.n_banks = n_banks
        channels = n_banks * d_model
        self.depthwise = nn.Conv1d(channels, channels, kernel_size=stride, stride=stride, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, children: Tensor) -> Tensor:
        if not _plain_conv(self.depthwise, self.pointwise):  # an adapted convolution: called as a module
            return self.reference(children)
        w = self.depthwise.weight  # (C, 1, k)
        ch = _children_to_channels(children)  # (..., m, k, C)
        mixed = ch[..., 0, :] * w[:, 0, 0]
        for r in range(1, w.shape[-1]):
            mixed = mixed + ch[..., r, :] * w[:, 0, r]
        mixed = mixed + self.depthwise.bias
        out = F.linear(mixed, self.pointwise.weight[:, :, 0], self.pointwise.bias)
        return _channels_to_banks(out, self.n_banks)

    def reference(self, children: Tensor) -> Tensor:
        return _conv_reference(children, [self.depthwise, self.pointwise], self.n_banks)

    def affine(self) -> tuple[Tensor, Tensor] | None:
        if not _plain_conv(self.depthwise, self.pointwise):
            return None
        dw = self.depthwise.weight.detach().to(torch.float64)[:, 0]  # (C, k)
        pw = self.pointwise.weight.detach().to(torch.float64)[:, :, 0]  # (C, C)
        W = torch.cat([pw * dw[:, r] for r in range(dw.shape[1])], dim=1)  # pw @ diag(dw[:, r])
        b = pw @ self.depthwise.bias.detach().to(torch.float64) + self.pointwise.bias.detach().to(torch.float64)
        return W, b


def _per_bank(children: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``(..., n_banks, m, k, d)`` children, each bank's joined children through its own
    ``Linear``: ``weight (n_banks, k*d, out)``, ``bias (n_banks, 1, out)`` -> ``(..., n_banks, m, out)``."""
    return torch.matmul(children.flatten(-2), weight) + bias


def _per_bank_reference(children: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """:func:`_per_bank`, one bank and one child at a time (the plain form)."""
    outs = []
    for b in range(weight.shape[0]):
        joined = torch.cat(children[..., b, :, :, :].unbind(-2), dim=-1)  # (..., m, k*d)
        outs.append(joined @ weight[b] + bias[b])
    return torch.stack(outs, dim=-3)


class ResidualSummarizer(nn.Module):
    """A residual merge that keeps a node's scale and content down the tree: the mean of
    the children plus a learned per-bank correction,

        parent_b = (1/k) sum_r child_r  +  [child_0, ..., child_k-1] @ W_b + c_b

    with ``W_b (k*d, d)`` and ``c_b`` initialised to zero, so that at initialisation every
    node is the mean of the tokens it covers (the compressor the Compressive Transformer
    found best, Rae et al. 2020, arXiv 1911.05507, Table 4) instead of a product of small
    matrices (the paper's ``0.1 * xavier`` shrinks a node at every level). Affine: the
    native step and the export run it as its matrix.
    """

    def __init__(self, d_model: int, n_banks: int, stride: int = 2):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_banks, stride * d_model, d_model))
        self.bias = nn.Parameter(torch.zeros(n_banks, 1, d_model))

    def forward(self, children: Tensor) -> Tensor:
        return children.mean(-2) + _per_bank(children, self.weight, self.bias)

    def reference(self, children: Tensor) -> Tensor:
        k = children.shape[-2]
        mean = sum(children[..., r, :] for r in range(k)) / k
        return mean + _per_bank_reference(children, self.weight, self.bias)

    def affine(self) -> tuple[Tensor, Tensor]:
        nb, kd, d = self.weight.shape
        k, C = kd // d, nb * d
        W = _bank_matrix(self.weight.detach().to(torch.float64))
        eye = torch.eye(C, dtype=torch.float64, device=W.device) / k
        return W + torch.cat([eye] * k, dim=1), self.bias.detach().to(torch.float64).reshape(C)


class GatedSummarizer(nn.Module):
    """A gated merge whose gate is computed from the children: per bank, a convex
    combination of the children with weights ``softmax`` of a learned score of all of them,

        a = softmax([child_0, ..., child_k-1] @ G_b + g_b)   (k weights),
        parent_b = sum_r a_r child_r

    ``G_b (k*d, k)``, ``g_b`` start at zero (the mean). A node is a weighted mean of tokens,
    so it keeps their scale, and a sharp gate carries one child up unchanged: a salient token
    can reach the top of the tree intact, as a pooled summary cannot. Not affine: the native
    step refuses it (by name); the export merges with the module itself.
    """

    def __init__(self, d_model: int, n_banks: int, stride: int = 2):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_banks, stride * d_model, stride))
        self.bias = nn.Parameter(torch.zeros(n_banks, 1, stride))

    def forward(self, children: Tensor) -> Tensor:
        gate = torch.softmax(_per_bank(children, self.weight, self.bias), dim=-1)  # (..., nb, m, k)
        return torch.matmul(gate[..., None, :], children)[..., 0, :]  # (..., nb, m, d)

    def reference(self, children: Tensor) -> Tensor:
        gate = torch.softmax(_per_bank_reference(children, self.weight, self.bias), dim=-1)
        return sum(gate[..., r, None] * children[..., r, :] for r in range(children.shape[-2]))


class NormalisedNodes(nn.Module):
    """A summarizer whose every merged node is RMS-normalised (no learned scale): each node
    has the norm ``sqrt(d)`` whatever its level, so deep summaries cannot fade into the
    slot bias (``LMNConfig.node_norm``; wraps the configured summarizer as ``inner``).
    Not affine: the native step refuses it by name."""

    def __init__(self, inner: nn.Module, eps: float | None = None):
        super().__init__()
        self.inner, self.eps = inner, eps

    def _norm(self, x: Tensor) -> Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def forward(self, children: Tensor) -> Tensor:
        return self._norm(self.inner(children))

    def reference(self, children: Tensor) -> Tensor:
        inner = getattr(self.inner, "reference", self.inner)
        y = inner(children)
        eps = torch.finfo(y.dtype).eps if self.eps is None else self.eps
        return y / torch.sqrt((y * y).mean(-1, keepdim=True) + eps)


def _bank_matrix(w: Tensor) -> Tensor:
    """Per-bank weights ``(n_banks, k*d, d)`` (used as ``joined @ w[b]``) as one matrix
    ``(C, k*C)`` on the children laid out child-major then bank-major (block-diagonal over banks)."""
    nb, kd, d = w.shape
    k, C = kd // d, nb * d
    W = torch.zeros(C, k * C, dtype=w.dtype, device=w.device)
    for b in range(nb):  # bank b reads only its own children
        for r in range(k):
            W[b * d : (b + 1) * d, r * C + b * d : r * C + (b + 1) * d] = w[b, r * d : (r + 1) * d].T
    return W


# The registry of summarizers, the only list of them: ``LMNConfig.summarizer`` must name one
# (lmn.config checks against summarizer_names()). A summarizer class is built as
# ``cls(d_model, n_banks, stride)`` and follows the contract in the module docstring.
SUMMARIZER_CLASSES: dict[str, type[nn.Module]] = {}


def register_summarizer(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls`` available as ``LMNConfig(summarizer=name)``."""
    if not isinstance(name, str) or not name or not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_summarizer takes a name and an nn.Module class, got {name!r}, {cls!r}")
    if name in SUMMARIZER_CLASSES:
        raise ValueError(f"a summarizer named {name!r} is registered already")
    SUMMARIZER_CLASSES[name] = cls
    return cls


def summarizer_names() -> tuple[str, ...]:
    """The registered summarizers' names, in registration order."""
    return tuple(SUMMARIZER_CLASSES)


register_summarizer("linear", LinearSummarizer)
register_summarizer("conv", ConvSummarizer)
register_summarizer("dwsep", DepthwiseSeparableSummarizer)
register_summarizer("residual", ResidualSummarizer)
register_summarizer("gated", GatedSummarizer)


def build_summarizer(config: LMNConfig) -> nn.Module:
    made = SUMMARIZER_CLASSES[config.summarizer](config.d_model, config.n_banks, config.stride)
    return NormalisedNodes(made, config.norm_eps) if getattr(config, "node_norm", False) else made


def affine_form(summarizer: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``summarizer.affine()``, or ``None`` when the summarizer does not state one."""
    fn = getattr(summarizer, "affine", None)
    return fn() if callable(fn) else None


class Expander(nn.Module):
    """``ConvTranspose1d(d, d, kernel_size=1+k)`` along the set axis: a set of ``E`` vectors
    becomes ``E + k`` vectors. Shared by all banks and levels of a layer, as in the
    paper's code."""

    def __init__(self, d_model: int, expand: int):
        super().__init__()
        self.expand = expand
        self.conv = nn.ConvTranspose1d(d_model, d_model, kernel_size=1 + expand)

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., E, d) -> (..., E + k, d)
        lead, (e, d) = x.shape[:-2], x.shape[-2:]
        y = self.conv(x.reshape(-1, e, d).transpose(1, 2))  # (items, d, E + k)
        return y.transpose(1, 2).reshape(*lead, e + self.expand, d)

    def reference(self, x: Tensor) -> Tensor:
        # out[p] = bias + sum over (m, u) with m + u = p of W[:, :, u]^T x[m]
        e = x.shape[-2]
        w, b = self.conv.weight, self.conv.bias  # (d_in, d_out, 1 + k), (d_out,)
        outs = []
        for p in range(e + self.expand):
            acc = b.expand(*x.shape[:-2], b.shape[0])
            for m in range(e):
                u = p - m
                if 0 <= u <= self.expand:
                    acc = acc + x[..., m, :] @ w[:, :, u]
            outs.append(acc)
        return torch.stack(outs, dim=-2)
