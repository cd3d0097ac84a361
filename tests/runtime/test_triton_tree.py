"""The fused Triton tree build (lmn.kernels.triton_tree) equals LogMemory.build's PyTorch
loop: every level, and the gradients of the input, the summarizer's weight and bias,
<= 1e-5 in float32, for strides 2, 3 and 4, one and two banks, lengths around powers of
the stride, several row/column tiles, several segments per level and several launches;
a whole model with the kernels equals the PyTorch path and the reference; configurations
the kernel does not cover (conv/dwsep summarizers, the expander) take the PyTorch loop.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here
before triton is imported), on small shapes; with one, on CUDA. Skipped when triton is
not installed.
"""

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from lmn import LMN, LMNConfig, reference_forward  # noqa: E402
from lmn.kernels import triton_tree  # noqa: E402
from lmn.memory import LogMemory  # noqa: E402
from tests.core.test_parity import randomize_  # noqa: E402

TOL = 1e-5
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D = 20  # not a power of two; with 16-wide tiles: 2 column tiles, ceil(k*20/16) reduction tiles


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(triton_tree, "TILES", (16, 16, 16))


def _memory(k, nb, d=D, **kw) -> LogMemory:
    cfg = LMNConfig(vocab_size=11, d_model=d, n_layers=1, n_heads=2, n_banks=nb, stride=k, **kw)
    mem = LogMemory(cfg)
    g = torch.Generator().manual_seed(100 * k + nb)
    with torch.no_grad():  # well-conditioned: deep nodes neither vanish nor blow up
        mem.summarizer.weight.copy_(torch.randn(mem.summarizer.weight.shape, generator=g) * 0.8 / (k * d) ** 0.5)
        mem.summarizer.bias.copy_(torch.randn(mem.summarizer.bias.shape, generator=g) * 0.1)
    return mem.to(DEVICE)


def _build(mem, x, fused, only=None):
    """Levels and the gradients of (x, weight, bias) of a random linear function of all
    levels (``only``: of that level alone, the others' gradients None)."""
    mem.fused_kernels = fused
    levels = mem.build(x)
    g = torch.Generator().manual_seed(7)
    loss = x.new_zeros(())
    for i, lvl in enumerate(levels):
        if only is None or i == only:
            loss = loss + (lvl * torch.randn(lvl.shape, generator=g).to(lvl)).sum()
    params = [x, mem.summarizer.weight, mem.summarizer.bias]
    grads = torch.autograd.grad(loss, params, allow_unused=True) if levels else [None] * 3
    return [lvl.detach() for lvl in levels], [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]


def _check(name, got, want, tol=TOL):
    """Max abs difference <= tol, relative to the largest entry when that exceeds 1 (the
    weight gradient sums O(1) products over every node: float32 rounding of the sum)."""
    if not got.numel():
        return 0.0
    err = (got.float() - want.float()).abs().max().item()
    scale = max(1.0, want.float().abs().max().item())
    assert err <= tol * scale, f"{name}: max |diff| {err:.3g} > {tol} * {scale:.3g}"
    return err


def _compare(mem, x, only=None, tol=TOL):
    want, want_g = _build(mem, x, False, only)
    got, got_g = _build(mem, x, True, only)
    assert len(got) == len(want) == mem.tree.n_levels_in(x.shape[1])
    for i, (a, b) in enumerate(zip(got, want), start=1):
        assert a.shape == b.shape and a.dtype == b.dtype, f"level {i}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        _check(f"level {i}", a, b, tol)
    for n, a, b in zip(("x", "weight", "bias"), got_g, want_g):
        assert a.dtype == b.dtype
        _check(f"grad {n}", a, b, tol)


@pytest.mark.parametrize("nb", [1, 2])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_levels_and_grads_equal_pytorch(k, nb):
    torch.manual_seed(k + nb)
    mem = _memory(k, nb)
    lengths = sorted({1, k - 1, k, k**2 - 1, k**3, k**3 + 1} | ({2 * 16 * k + 5} if k == 2 else set()))
    for T in lengths:  # (k = 2, T = 69: 34 level-1 nodes, three row tiles)
        x = torch.randn(2, T, D, device=DEVICE, requires_grad=True)
        _compare(mem, x)


@pytest.mark.parametrize("k,segment,T", [(2, 2, 13), (2, 4, 37), (3, 9, 58), (4, 16, 71)])
def test_several_segments_and_launches(k, segment, T, monkeypatch):
    """Small segments: levels built by several programs and launches (one per ``S`` levels)."""
    monkeypatch.setattr(triton_tree, "SEGMENT", segment)
    S = triton_tree.levels_per_launch(k)
    mem = _memory(k, 2)
    n_levels = mem.tree.n_levels_in(T)
    assert len(triton_tree._plan(T, k, n_levels)[2]) == -(-n_levels // S) > 1
    x = torch.randn(2, T, D, device=DEVICE, requires_grad=True)
    _compare(mem, x)
    if segment == 2:
        _compare(mem, x, only=0)  # the upper levels' gradients None


def test_capped_levels_and_strided_input():
    """``max_level`` builds only the levels up to the cap; ``x`` may be a non-contiguous view."""
    mem = _memory(2, 2, max_level=2)
    base = torch.randn(2, 40, 2 * D, device=DEVICE)
    x = base[:, 3:, ::2].detach().requires_grad_(True)  # (2, 37, D), strided
    _compare(mem, x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    """Levels are stored in the input dtype and read back rounded, as in PyTorch: the two
    agree to that dtype's rounding."""
    mem = _memory(2, 2).to(dtype)
    x = torch.randn(2, 37, D, device=DEVICE, dtype=dtype, requires_grad=True)
    _compare(mem, x, tol=0.1 if dtype == torch.bfloat16 else 0.02)


def test_autocast():
    """Under bfloat16 autocast the products take bfloat16 operands and the levels are float32
    (``matmul`` in bfloat16 + a float32 bias), as on the PyTorch path; the two differ by the
    rounding of the matmul's result to bfloat16 there (relative ~0.5%)."""
    mem = _memory(2, 2)
    x = torch.randn(2, 21, D, device=DEVICE, requires_grad=True)
    out = []
    for fused in (False, True):
        mem.fused_kernels = fused
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            levels = mem.build(x)
        loss = sum((i + 1) * lvl.float().sum() for i, lvl in enumerate(levels))
        out.append((levels, torch.autograd.grad(loss, [x, mem.summarizer.weight, mem.summarizer.bias])))
    for a, b in zip(out[1][0] + list(out[1][1]), out[0][0] + list(out[0][1])):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 0.02 * b.abs().max()


def test_launch_count():
    """A build takes ceil(L / S) launches, S = floor(log_k 256): 2 for 2**13 tokens."""
    assert triton_tree.levels_per_launch(2) == 8 and triton_tree.levels_per_launch(4) == 4
    assert len(triton_tree._plan(2**13, 2, 13)[2]) == 2
    assert len(triton_tree._plan(3**7, 3, 7)[2]) == 2


def _model(k, nb=2, **kw) -> LMN:
    cfg = LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, ff_mult=2, n_banks=nb, stride=k, **kw)
    model = LMN(cfg)
    randomize_(model)
    return model.to(DEVICE)


def _run(model, idx, fused, tree_only=False):
    model.fused_kernels = fused
    if tree_only:  # the tree build fused, attention on the PyTorch path
        for block in model.blocks:
            block.attn.fused_kernels = False
    logits = model(idx)
    grads = torch.autograd.grad((logits * torch.linspace(-1, 1, logits.shape[-1], device=DEVICE)).sum(),
                                list(model.parameters()), allow_unused=True)
    return logits.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads)]


@pytest.mark.parametrize("k,T", [(2, 19), (3, 29)])
def test_model_equals_pytorch_and_reference(k, T, monkeypatch):
    monkeypatch.setattr(triton_tree, "SEGMENT", k**2)  # several launches per layer
    called = []
    real = triton_tree.fused_build
    monkeypatch.setattr(triton_tree, "fused_build", lambda *a: called.append(1) or real(*a))
    torch.manual_seed(k)
    model = _model(k)
    names = [n for n, _ in model.named_parameters()]
    idx = torch.randint(0, 11, (2, T), device=DEVICE)
    want, want_g = _run(model, idx, False)
    assert not called
    for tree_only in (True, False):
        got, got_g = _run(model, idx, True, tree_only)
        _check("logits vs PyTorch path", got, want)
        for n, a, b in zip(names, got_g, want_g):
            _check(f"grad {n}", a, b)
        with torch.no_grad():
            _check("logits vs reference", got, reference_forward(model, idx))
    assert len(called) == 2 * 2  # two layers, twice


@pytest.mark.parametrize("kw", [dict(summarizer="conv"), dict(summarizer="dwsep"), dict(expand=1)],
                         ids=["conv", "dwsep", "expander"])
def test_uncovered_configs_fall_back(kw, monkeypatch):
    def refuse(*a):
        raise AssertionError("the fused tree build ran on a configuration it does not cover")

    monkeypatch.setattr(triton_tree, "fused_build", refuse)
    torch.manual_seed(1)
    model = _model(2, **kw)
    idx = torch.randint(0, 11, (1, 13), device=DEVICE)
    want, want_g = _run(model, idx, False)
    got, got_g = _run(model, idx, True)
    _check("logits", got, want)
    for a, b in zip(got_g, want_g):
        _check("grad", a, b)
    with torch.no_grad():
        _check("logits vs reference", got, reference_forward(model, idx))


def test_settings_reach_the_memory():
    model = _model(2)
    assert all(b.memory.fused_kernels == "auto" for b in model.blocks)
    model.fused_kernels = True
    assert all(b.memory.fused_kernels is True for b in model.blocks)
    model.fused_kernels = False
    assert all(b.memory.fused_kernels is False for b in model.blocks)


def test_cpu_forward_does_not_import_triton():
    code = ("import sys, torch, lmn; m = lmn.LMN(lmn.LMNConfig(vocab_size=11, d_model=16, n_heads=2)); "
            "m(torch.zeros(1, 9, dtype=torch.long)); assert 'triton' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
