"""Parallel == reference == step-by-step == prefill + steps, outputs and gradients.

One model definition, four ways of running it. Tolerance: 1e-5 absolute on logits in
float32 at every position (logits are O(1) here), printed on failure.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from lmn import LMN, LMNConfig, reference_forward
from tests.conftest import max_abs_diff

TOL = 1e-5
LENGTHS = [1, 2, 3, 7, 8, 9, 31, 32, 33, 100, 257, 1025]
T_MAX = max(LENGTHS)

CONFIGS = [
    dict(summarizer=s, n_banks=nb, expand=k, pos_encoding=pe)
    for s, nb, k, pe in itertools.product(["linear", "conv", "dwsep"], [1, 3], [0, 2], ["none", "sinusoidal"])
]


def _ids(c):
    return f"{c['summarizer']}-banks{c['n_banks']}-expand{c['expand']}-{c['pos_encoding']}"


def small_model(**kw) -> LMN:
    cfg = LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, ff_mult=2, **kw)
    model = LMN(cfg).eval()
    randomize_(model)
    return model


def randomize_(model: LMN, gain: float = 0.8) -> None:
    """Well-conditioned random weights with *every* parameter non-trivial.

    The paper's summarizer init (x0.1) makes deep nodes vanish, which would let a wrong
    tree index slip under the tolerance; weights much larger than 1/sqrt(fan_in) blow up
    deep nodes (1.7**10 at level 10) and float32 itself loses 1e-4. So: summarizer and
    expander weights ~ gain/sqrt(fan_in), norm weights 1 + 0.1*noise, biases 0.1*noise.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "memory" in name and p.dim() >= 2:
                if name.endswith("summarizer.weight"):  # (nb, 2d, d), used as x @ W
                    fan_in = p.shape[1]
                elif name.endswith("write.weight"):  # the pinned memory's write score, (1, d)
                    fan_in = p.shape[1]
                elif "expander" in name:  # (d_in, d_out, 1+k)
                    fan_in = p.shape[0] * p.shape[2]
                else:  # Conv1d (out, in/groups, kernel)
                    fan_in = p.shape[1] * p.shape[2]
                p.normal_(0.0, gain / fan_in**0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1 or "bias" in name:
                p.copy_(0.1 * torch.randn_like(p))


def _check(name, got, want, tol=TOL):
    diff = max_abs_diff(got, want)
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert diff <= tol, f"{name}: max |diff| = {diff:.3e} > {tol:.0e}"


@pytest.mark.parametrize("kw", CONFIGS, ids=_ids)
def test_all_forms_agree(kw):
    model = small_model(**kw)
    idx = torch.randint(0, 11, (2, T_MAX))
    with torch.no_grad():
        ref = reference_forward(model, idx)  # causal: its prefixes are the shorter sequences

        state = model.init_state(2)
        steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(T_MAX)], dim=1)
        _check("step-by-step vs reference", steps, ref)

        for T in LENGTHS:
            par = model(idx[:, :T])
            _check(f"parallel T={T} vs reference", par, ref[:, :T])
            if T > 8:  # several attention chunks, the last one partial
                model.config.chunk_size = 8
                _check(f"parallel T={T} in chunks of 8", model(idx[:, :T]), ref[:, :T])
                model.config.chunk_size = 4096
            logits, st = model(idx[:, :T], return_state=True)
            _check(f"prefill T={T} logits", logits, ref[:, :T])
            assert st.pos == T
            for t in range(T, min(T + 3, T_MAX)):  # continue the stream from the prefill
                out, st = model.step(idx[:, t], st)
                _check(f"prefill T={T} then step at t={t}", out, ref[:, t])


@pytest.mark.parametrize("kw", [c for c in CONFIGS if c["pos_encoding"] == "none"], ids=_ids)
@pytest.mark.parametrize("T", [33, 100])
def test_gradients_match_reference(kw, T):
    model = small_model(**kw)
    idx = torch.randint(0, 11, (2, T))
    target = torch.randn(2, T, 11)

    def grads(fn):
        model.zero_grad()
        (fn(model, idx) * target).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    g_par = grads(lambda m, i: m(i))
    g_ref = grads(reference_forward)
    for name in g_ref:
        scale = max(1.0, g_ref[name].abs().max().item())
        _check(f"grad {name}", g_par[name] / scale, g_ref[name] / scale, tol=1e-5)


def test_paper_model_parity_and_long_prefill():
    """The paper's configuration itself, with a prefill in the middle of a long stream."""
    model = LMN(LMNConfig()).eval()
    idx = torch.randint(0, 65, (3, 300))
    with torch.no_grad():
        ref = reference_forward(model, idx)
        _check("paper parallel", model(idx), ref)
        logits, st = model(idx[:, :77], return_state=True)
        outs = [model.step(idx[:, t], st)[0] for t in range(77, 300)]
        _check("paper prefill(77) + 223 steps", torch.stack(outs, 1), ref[:, 77:])


def test_batch_rows_are_independent():
    model = small_model(summarizer="conv", n_banks=3)
    idx = torch.randint(0, 11, (4, 50))
    with torch.no_grad():
        full = model(idx)
        for b in range(4):
            _check(f"row {b} alone", model(idx[b : b + 1]), full[b : b + 1])


def test_float64_agrees_tightly():
    model = small_model(summarizer="linear", n_banks=3, expand=2).double()
    idx = torch.randint(0, 11, (2, 70))
    with torch.no_grad():
        _check("float64 parallel", model(idx), reference_forward(model, idx), tol=1e-11)


@pytest.mark.parametrize("summarizer", ["linear", "conv"])
def test_chunked_gradients_match_reference(summarizer):
    model = small_model(summarizer=summarizer, n_banks=3, expand=2)
    model.config.chunk_size = 16
    idx = torch.randint(0, 11, (2, 77))
    target = torch.randn(2, 77, 11)
    model.zero_grad()
    (model(idx) * target).sum().backward()
    g_par = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (reference_forward(model, idx) * target).sum().backward()
    for name, p in model.named_parameters():
        scale = max(1.0, p.grad.abs().max().item())
        _check(f"chunked grad {name}", g_par[name] / scale, p.grad / scale)


@pytest.mark.parametrize("kw", CONFIGS[::3], ids=_ids)
def test_continuing_a_stream_in_parallel_pieces(kw):
    """model(piece, state=...) and model.prefill(..., max_chunk) continue a stream exactly,
    whatever the split points (unaligned ones included)."""
    model = small_model(**kw)
    idx = torch.randint(0, 11, (2, 300))
    with torch.no_grad():
        ref = reference_forward(model, idx)
        for splits in ([1, 299], [5, 295], [64, 64, 172], [100, 1, 1, 198], [7, 9, 33, 251], [128, 172]):
            state, outs, t = model.init_state(2), [], 0
            for n in splits:
                logits, state = model(idx[:, t : t + n], state=state)
                outs.append(logits)
                t += n
            _check(f"pieces {splits}", torch.cat(outs, dim=1), ref)
            assert state.pos == 300
        for max_chunk in (1, 4, 64, None):
            last, state = model.prefill(idx[:, :250], max_chunk=max_chunk)
            _check(f"prefill(max_chunk={max_chunk}) last logits", last, ref[:, 249])
            steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(250, 300)], dim=1)
            _check(f"prefill(max_chunk={max_chunk}) then steps", steps, ref[:, 250:])


def _grads_plain_and_checkpointed(model, idx):
    """Parameter gradients of one loss without, then with gradient checkpointing."""

    def grads():
        model.zero_grad()
        model(idx).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing = True
    assert all(b.ff.recompute for b in model.blocks)
    return plain, grads()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = small_model(summarizer="linear", n_banks=2)
    idx = torch.randint(0, 11, (2, 65))
    plain, ckpt = _grads_plain_and_checkpointed(model, idx)
    for a, b in zip(plain, ckpt):
        assert torch.equal(a, b)  # recomputation runs the same ops on the same inputs


def test_chunked_feed_forward_backward_equals_autograd(monkeypatch):
    """Gradient checkpointing computes the FF layers in row chunks with a hand-written
    backward: check it against autograd over several chunks (float64), and by gradcheck."""
    from lmn.model import FeedForward, _ChunkedFeedForward

    torch.manual_seed(0)
    y = torch.randn(2, 13, 4, dtype=torch.float64, requires_grad=True)
    w_up = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    b_up = torch.randn(8, dtype=torch.float64, requires_grad=True)
    w_down = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    b_down = torch.randn(4, dtype=torch.float64, requires_grad=True)
    inputs = (y, w_up, b_up, w_down, b_down)
    assert torch.autograd.gradcheck(lambda *a: _ChunkedFeedForward.apply(*a, 5), inputs)
    g = torch.randn(2, 13, 4, dtype=torch.float64)
    want = torch.autograd.grad(F.linear(F.silu(F.linear(y, w_up, b_up)), w_down, b_down), inputs, g)
    got = torch.autograd.grad(_ChunkedFeedForward.apply(*inputs, 5), inputs, g)  # 6 chunks of 5 rows
    for name, a, b in zip(("y", "w_up", "b_up", "w_down", "b_down"), got, want):
        assert (a - b).abs().max().item() < 1e-12, name
    # and inside the model: several chunks per block, same gradients as without checkpointing
    monkeypatch.setattr(FeedForward, "chunk_rows", 7)
    model = small_model(summarizer="conv", n_banks=2).double()
    idx = torch.randint(0, 11, (2, 33))
    plain, ckpt = _grads_plain_and_checkpointed(model, idx)
    for a, b in zip(plain, ckpt):
        assert (a - b).abs().max().item() < 1e-12


def _chunk_inputs(T, tree, chunk, n_levels, c0=0, prefix_levels=0, B=1, H=2, dh=3, G=2):
    """Random float64 inputs of the attention kernels for a T-token piece, and their meta."""
    from lmn.attention import SlotGroup, _chunk_plan, _Plan, _slot_specs

    T1 = T + 1
    g = torch.Generator().manual_seed(0)
    groups = []
    for level, r in tree.read_groups(n_levels):
        block = tree.block_length(level)
        groups.append(SlotGroup(torch.randn(2, B, H, G, dh, T // block + 1, generator=g, dtype=torch.float64),
                                block, level, r))
    # levels above this piece's own tree: only the stream's earlier node (one entry)
    for level in range(n_levels + 1, n_levels + 1 + prefix_levels):
        groups.append(SlotGroup(torch.randn(2, B, H, G, dh, 1, generator=g, dtype=torch.float64), None, level, 0))
    blocks = [grp.block for grp in groups]
    Tp = max([T1] + [u0 + _chunk_plan(u0, min(u0 + chunk, T1), chunk, blocks)[0] for u0 in range(0, T1, chunk)])
    k_t = torch.randn(B, H, dh, Tp, generator=g, dtype=torch.float64)
    v_t = torch.randn(B, H, dh, T1, generator=g, dtype=torch.float64)
    s_self = torch.randn(B, H, T1, generator=g, dtype=torch.float64)
    meta = _Plan(chunk, c0, T1, tree, blocks, *_slot_specs(groups, "cpu"), 0)
    return meta, [k_t, v_t, s_self, *[grp.entries for grp in groups]]


@pytest.mark.parametrize(
    "stride, read, chunk, c0, prefix_levels",
    [(2, "latest", 4, 0, 0), (2, "latest", 4, 16, 2), (3, "digits", 3, 0, 0), (3, "latest", 3, 27, 1)],
)
def test_recomputed_chunks_backward_equals_autograd(stride, read, chunk, c0, prefix_levels):
    """The chunk-recomputing autograd.Function (used in training with several chunks) has
    the gradients of plain autograd through the same kernels, and passes gradcheck; levels
    longer than a chunk (one node shared by several chunks) and stream-prefix levels
    included."""
    from lmn.attention import _attend_all, _RecomputedChunks
    from lmn.tree import Tree

    tree = Tree(stride, read)
    meta, inputs = _chunk_inputs(12, tree, chunk, n_levels=tree.n_levels_in(12), c0=c0, prefix_levels=prefix_levels)
    T1 = meta[2]
    inputs = [t.requires_grad_() for t in inputs]
    w = torch.randn(inputs[1].shape[:-1] + (T1,), dtype=torch.float64)

    out_f = _RecomputedChunks.apply(meta, *inputs)
    grads_f = torch.autograd.grad((out_f * w).sum(), inputs)
    out_a = _attend_all(meta, *inputs[:3], inputs[3:])
    grads_a = torch.autograd.grad((out_a * w).sum(), inputs)
    _check("recomputed forward", out_f, out_a, tol=1e-12)
    for j, (gf, ga) in enumerate(zip(grads_f, grads_a)):
        _check(f"recomputed grad of input {j}", gf, ga, tol=1e-12)
    assert torch.autograd.gradcheck(lambda *xs: _RecomputedChunks.apply(meta, *xs), inputs)


def test_training_step_imports_no_symbolic_shape_machinery():
    """Backward through the recomputing functions must not pull in sympy & co. (passing
    grad_outputs to torch.autograd.grad does): ~30-70 MiB of resident memory, which is
    most of the 32K training-memory target's margin. Run in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from lmn import LMN, LMNConfig\n"
        "m = LMN(LMNConfig(chunk_size=16))\n"
        "idx = torch.zeros(1, 64, dtype=torch.long)\n"
        "for ckpt in (True, False):\n"
        "    m.gradient_checkpointing = ckpt\n"
        "    m(idx).sum().backward()\n"
        "print(sorted(n for n in ('sympy', 'mpmath', 'torch.fx.experimental.symbolic_shapes') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
