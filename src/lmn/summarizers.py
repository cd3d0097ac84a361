"""Summarizers S_b: the learned functions that merge two level i-1 nodes into one level i node.

Every summarizer takes two node tensors ``left`` and ``right`` shaped
``(..., n_banks, m, d)`` -- ``m`` is any number of independent items (nodes of a level,
times the vectors of each node's set when the expander is on) -- and returns the merged
nodes with the same shape. Each has two versions of one computation:

* ``forward``: the fast, batched version used by the parallel and streaming forms.
* ``reference``: the plain version used by :mod:`lmn.reference`, written as directly as
  possible from the definition (for the convolutions it literally calls the
  ``nn.Conv1d`` modules on a length-2 sequence ``[left, right]``).

The expander (paper Sec. "Expander summarizer") grows each node's *set* of vectors by
``k`` with a transposed 1-D convolution (kernel ``1 + k``) along the set axis before
pairing, so that a level i node holds ``1 + i*k`` vectors per bank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LMNConfig


class LinearSummarizer(nn.Module):
    """One ``Linear(2d -> d)`` with bias per bank, shared across levels (the paper's).

    Weights are stored in the paper's layout ``(n_banks, 2d, d)`` and initialised as in
    its code: ``xavier_normal_`` on that 3-D tensor, then scaled by 0.1 (same for the
    ``(n_banks, 1, d)`` bias).
    """

    def __init__(self, d_model: int, n_banks: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_banks, 2 * d_model, d_model))
        self.bias = nn.Parameter(torch.empty(n_banks, 1, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.weight).mul_(0.1)
            nn.init.xavier_normal_(self.bias).mul_(0.1)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        pair = torch.cat([left, right], dim=-1)  # (..., n_banks, m, 2d)
        return torch.matmul(pair, self.weight) + self.bias  # (..., n_banks, m, d)

    def reference(self, left: Tensor, right: Tensor) -> Tensor:
        outs = []
        for b in range(self.weight.shape[0]):
            pair = torch.cat([left[..., b, :, :], right[..., b, :, :]], dim=-1)
            outs.append(pair @ self.weight[b] + self.bias[b])
        return torch.stack(outs, dim=-3)


def _banks_to_channels(x: Tensor) -> Tensor:
    # (..., n_banks, m, d) -> (..., m, n_banks*d): channel c = bank*d + feature
    return x.transpose(-3, -2).flatten(-2)


def _channels_to_banks(x: Tensor, n_banks: int) -> Tensor:
    # (..., m, n_banks*d) -> (..., n_banks, m, d)
    return x.unflatten(-1, (n_banks, -1)).transpose(-3, -2)


class ConvSummarizer(nn.Module):
    """One standard ``Conv1d(C, C, kernel_size=2, stride=2)`` over the node axis, where
    ``C = n_banks * d``: every output bank sees both children of every bank."""

    def __init__(self, d_model: int, n_banks: int):
        super().__init__()
        self.n_banks = n_banks
        channels = n_banks * d_model
        self.conv = nn.Conv1d(channels, channels, kernel_size=2, stride=2)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        # A kernel-2/stride-2 convolution over [left, right] is a linear map of the
        # concatenated pair: W[:, :, 0] acts on the left child, W[:, :, 1] on the right.
        pair = torch.cat([_banks_to_channels(left), _banks_to_channels(right)], dim=-1)
        weight = torch.cat([self.conv.weight[:, :, 0], self.conv.weight[:, :, 1]], dim=1)
        return _channels_to_banks(F.linear(pair, weight, self.conv.bias), self.n_banks)

    def reference(self, left: Tensor, right: Tensor) -> Tensor:
        lead = left.shape[:-3]
        seq = torch.stack([_banks_to_channels(left), _banks_to_channels(right)], dim=-1)
        seq = seq.reshape(-1, seq.shape[-2], 2)  # (items, C, 2): a length-2 sequence
        out = self.conv(seq)[..., 0]  # (items, C)
        out = out.reshape(*lead, left.shape[-2], -1)
        return _channels_to_banks(out, self.n_banks)


class DepthwiseSeparableSummarizer(nn.Module):
    """Depthwise ``Conv1d(C, C, 2, stride=2, groups=C)`` then pointwise ``Conv1d(C, C, 1)``
    (``C = n_banks * d``); the pointwise step mixes banks."""

    def __init__(self, d_model: int, n_banks: int):
        super().__init__()
        self.n_banks = n_banks
        channels = n_banks * d_model
        self.depthwise = nn.Conv1d(channels, channels, kernel_size=2, stride=2, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        w = self.depthwise.weight  # (C, 1, 2)
        mixed = (
            _banks_to_channels(left) * w[:, 0, 0]
            + _banks_to_channels(right) * w[:, 0, 1]
            + self.depthwise.bias
        )
        out = F.linear(mixed, self.pointwise.weight[:, :, 0], self.pointwise.bias)
        return _channels_to_banks(out, self.n_banks)

    def reference(self, left: Tensor, right: Tensor) -> Tensor:
        lead = left.shape[:-3]
        seq = torch.stack([_banks_to_channels(left), _banks_to_channels(right)], dim=-1)
        seq = seq.reshape(-1, seq.shape[-2], 2)
        out = self.pointwise(self.depthwise(seq))[..., 0]
        out = out.reshape(*lead, left.shape[-2], -1)
        return _channels_to_banks(out, self.n_banks)


SUMMARIZER_CLASSES = {
    "linear": LinearSummarizer,
    "conv": ConvSummarizer,
    "dwsep": DepthwiseSeparableSummarizer,
}


def build_summarizer(config: LMNConfig) -> nn.Module:
    return SUMMARIZER_CLASSES[config.summarizer](config.d_model, config.n_banks)


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
