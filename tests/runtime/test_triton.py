"""The fused Triton path of single-vector attention (lmn.kernels.triton_sva) equals the
PyTorch path and the reference: logits and every parameter's gradient, <= 1e-5 in float32,
for strides 2, 3 and 4, both read rules, banks, the expander, a head width that is not a
power of two, lengths around powers of the stride, and tile and chunk boundaries.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here
before triton is imported), on small shapes; with one, on CUDA. Skipped when triton is
not installed.
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from lmn import LMN, LMNConfig, reference_forward  # noqa: E402
from lmn.kernels import triton_sva  # noqa: E402
from lmn.attention import ParallelRead  # noqa: E402
from tests.core.test_parity import randomize_  # noqa: E402

TOL = 1e-5
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [  # (stride, read, banks, expand, d_model, heads, lengths)
    (2, "latest", 2, 0, 16, 2, (1, 16, 17, 33)),
    (2, "digits", 1, 0, 12, 2, (31, 32)),
    (3, "latest", 2, 0, 16, 2, (8, 9, 28)),
    (3, "digits", 1, 1, 12, 2, (10, 27)),
    (4, "digits", 2, 0, 16, 2, (17,)),
    (4, "latest", 1, 2, 16, 4, (17,)),
]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    # tiles of 16/8 positions: several programs per sequence, and blocks both shorter and
    # longer than a tile (the ways the backward kernel adds node gradients)
    monkeypatch.setattr(triton_sva, "TILES", (16, 8))


def _model(k, read, nb, expand, d, heads, chunk=4096, **kw) -> LMN:
    cfg = LMNConfig(vocab_size=11, d_model=d, n_layers=2, n_heads=heads, ff_mult=2, n_banks=nb, expand=expand,
                    stride=k, read=read, chunk_size=chunk, **kw)
    model = LMN(cfg)
    randomize_(model)
    return model.to(DEVICE)


def _run(model, idx, fused):
    model.fused_kernels = fused
    logits = model(idx)
    grads = torch.autograd.grad((logits * torch.linspace(-1, 1, logits.shape[-1], device=DEVICE)).sum(),
                                list(model.parameters()), allow_unused=True)  # (T < k: no summarizer)
    return logits.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads)]


def _check(name, got, want, tol=TOL):
    err = (got - want).abs().max().item()
    assert err <= tol, f"{name}: max |diff| {err:.3g} > {tol}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}-{c[1]}-banks{c[2]}-expand{c[3]}-d{c[4]}h{c[5]}")
def test_fused_equals_pytorch_and_reference(case):
    *spec, lengths = case
    torch.manual_seed(0)
    model = _model(*spec, chunk=8)  # the PyTorch path then runs several chunks (recomputed in backward)
    names = [n for n, _ in model.named_parameters()]
    for T in lengths:
        idx = torch.randint(0, 11, (2 if T < 20 else 1, T), device=DEVICE)
        want, want_g = _run(model, idx, False)
        got, got_g = _run(model, idx, True)
        _check(f"T={T} logits vs PyTorch path", got, want)
        for n, a, b in zip(names, got_g, want_g):
            _check(f"T={T} grad {n}", a, b)
        with torch.no_grad():
            _check(f"T={T} logits vs reference", got, reference_forward(model, idx))


@pytest.mark.parametrize("k,read", [(2, "latest"), (3, "digits")])
def test_segmented_scan_backward(k, read, monkeypatch):
    """The backward kernel's optional segmented scan (off by default) gives the same gradients."""
    monkeypatch.setattr(triton_sva, "SEGMENTED_SCAN", True)
    torch.manual_seed(4)
    model = _model(k, read, 2, 0, 16, 2)
    idx = torch.randint(0, 11, (1, 2 * k**2 + 3), device=DEVICE)
    want, want_g = _run(model, idx, False)
    got, got_g = _run(model, idx, True)
    _check("logits", got, want)
    for a, b in zip(got_g, want_g):
        _check("grad", a, b)


@pytest.mark.parametrize("k,read", [(2, "latest"), (3, "digits")])
def test_fused_with_capped_tree(k, read):
    """``max_level``: the kernel reads the levels it is given, i.e. only those up to the cap."""
    torch.manual_seed(3)
    model = _model(k, read, 2, 0, 16, 2, max_level=1)
    idx = torch.randint(0, 11, (1, 2 * k**2 + 1), device=DEVICE)
    want, want_g = _run(model, idx, False)
    got, got_g = _run(model, idx, True)
    _check("logits vs PyTorch path", got, want)
    for a, b in zip(got_g, want_g):
        _check("grad", a, b)
    with torch.no_grad():
        _check("logits vs reference", got, reference_forward(model, idx))


def test_fused_with_gradient_checkpointing():
    """Block checkpointing recomputes each block, kernels included, in backward."""
    torch.manual_seed(5)
    model = _model(2, "latest", 2, 0, 16, 2)
    idx = torch.randint(0, 11, (1, 21), device=DEVICE)
    want, want_g = _run(model, idx, False)
    model.gradient_checkpointing = True
    got, got_g = _run(model, idx, True)
    _check("logits", got, want)
    for a, b in zip(got_g, want_g):
        _check("grad", a, b)


def test_prefill_with_fused_kernels_equals_reference():
    """A fresh prefill runs the kernel; continuing a stream (a prefix) takes the PyTorch path."""
    torch.manual_seed(1)
    model = _model(3, "digits", 2, 0, 16, 2).eval()
    model.fused_kernels = True
    idx = torch.randint(0, 11, (1, 20), device=DEVICE)
    with torch.no_grad():
        ref = reference_forward(model, idx)
        logits, state = model(idx[:, :9], return_state=True)
        _check("prefill 9", logits, ref[:, :9])
        more, _ = model(idx[:, 9:], state=state)
        _check("continued", more, ref[:, 9:])


def test_kernel_directly_on_random_tables():
    """FusedSlotAttention against the PyTorch path's forward on one layer (no model)."""
    torch.manual_seed(2)
    model = _model(2, "latest", 2, 0, 16, 2)
    block = model.blocks[0]
    x = torch.randn(3, 40, 16, device=DEVICE, requires_grad=True)
    levels = block.memory.build(x)
    outs = []
    for fused in (False, True):
        block.attn.fused_kernels = fused
        out = block.attn(x, ParallelRead(levels, block.memory.tree, chunk=16))
        (gx,) = torch.autograd.grad(out.square().sum(), [x], retain_graph=True)
        outs.append((out.detach(), gx))
    _check("layer output", outs[1][0], outs[0][0])
    _check("layer input grad", outs[1][1], outs[0][1])


def test_settings():
    model = _model(2, "latest", 1, 0, 16, 2)
    assert model.fused_kernels == "auto"
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError):
            model.fused_kernels = bad
    model.fused_kernels = False
    assert all(b.attn.fused_kernels is False for b in model.blocks)
    model.fused_kernels = "auto"
    x = torch.zeros(1, 4, 16)
    from lmn.kernels import use_fused

    assert not use_fused("auto", x, 8)  # a CPU tensor: the PyTorch path by default
    assert not use_fused(True, x.double(), 8)  # float64: not covered, PyTorch path


def test_import_lmn_does_not_import_triton():
    code = "import sys, lmn, lmn.kernels; m = lmn.LMN(lmn.LMNConfig()); assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_packed_documents_through_the_fused_path_equal_them_alone(monkeypatch):
    # issue 22, item 3: the packed form runs each document through the same parallel form
    from lmn.documents import doc_starts_from_lengths

    calls = []
    kernel = triton_sva.fused_attention
    monkeypatch.setattr(triton_sva, "fused_attention", lambda *a: calls.append(1) or kernel(*a))

    torch.manual_seed(0)
    model = _model(2, "digits", 2, 0, 16, 2)
    layouts = [[5, 11, 1], [16, 1]]
    starts = doc_starts_from_lengths(layouts, device=DEVICE)
    idx = torch.randint(0, 11, starts.shape, device=DEVICE)

    def alone():
        return torch.cat([torch.cat([model(idx[r : r + 1, s : s + n]) for s, n in
                                     zip([0, *itertools.accumulate(row)][:-1], row)], 1)
                          for r, row in enumerate(layouts)])

    w = torch.linspace(-1, 1, 11, device=DEVICE)
    for fused in (True, False):
        model.fused_kernels = fused
        want = alone()
        want_g = torch.autograd.grad((want * w).sum(), list(model.parameters()))
        calls.clear()
        got = model(idx, doc_starts=starts)
        assert bool(calls) == fused, "the fused kernel ran" if calls else "the fused kernel did not run"
        got_g = torch.autograd.grad((got * w).sum(), list(model.parameters()))
        _check(f"fused={fused} logits", got, want)
        for (n, _), a, b in zip(model.named_parameters(), got_g, want_g):
            _check(f"fused={fused} grad {n}", a, b)
