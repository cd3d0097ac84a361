"""Every form of every stride and read rule equals the reference: parallel (one chunk and
several), streaming, prefill in arbitrary pieces, the native C step and gradient
checkpointing -- logits, gradients and the streaming state tensor by tensor.

Tolerance: 1e-5 absolute in float32 (logits are O(1)); 1e-10 for the native step in
float64.
"""

import pytest
import torch
from torch import nn

from lmn import LMN, LMNConfig, reference_forward, state_nbytes
from lmn.native import NativeStepper, find_compiler
from tests.core.test_parity import _check, randomize_

TOL = 1e-5
needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler on this machine")

CASES = [  # (stride, read, summarizer, banks, expand, pos_encoding)
    (2, "digits", "linear", 2, 0, "none"),
    (3, "latest", "linear", 2, 0, "none"),
    (3, "digits", "conv", 1, 1, "sinusoidal"),
    (4, "latest", "dwsep", 3, 0, "sinusoidal"),
    (4, "digits", "linear", 2, 2, "none"),
    (8, "latest", "conv", 2, 0, "none"),
    (8, "digits", "dwsep", 1, 0, "none"),
    (5, "digits", "linear", 2, 0, "none"),
    # a capped tree (max_level): levels above it are neither built nor read
    (2, "latest", "linear", 2, 0, "none", 3),
    (2, "digits", "conv", 2, 1, "none", 2),
    (3, "digits", "linear", 1, 0, "sinusoidal", 1),
    (3, "latest", "dwsep", 2, 0, "none", 2),
    # a pinned memory beside the tree (m tokens per layer), with and without a cap
    (2, "latest", "linear", 2, 0, "none", None, 3),
    (3, "digits", "conv", 1, 0, "sinusoidal", None, 2),
    (2, "digits", "dwsep", 2, 1, "none", 2, 4),
]


def _id(c):
    cap = f"-max{c[6]}" if len(c) > 6 and c[6] else ""
    pin = f"-pinned{c[7]}" if len(c) > 7 else ""
    return f"k{c[0]}-{c[1]}-{c[2]}-banks{c[3]}-expand{c[4]}-{c[5]}{cap}{pin}"


def model_for(case, dtype=torch.float32) -> LMN:
    k, read, summ, nb, expand, pe, *extra = case
    cfg = LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, ff_mult=2, n_banks=nb, summarizer=summ,
                    expand=expand, pos_encoding=pe, stride=k, read=read, max_level=extra[0] if extra else None,
                    pinned=extra[1] if len(extra) > 1 else 0)
    model = LMN(cfg).eval()
    randomize_(model)
    return model.to(dtype)


def _length(k: int) -> int:
    """Past two powers of k (three for small k), so that lengths around them are covered."""
    return {2: 70, 3: 85, 4: 70, 5: 60, 8: 70}[k]


def _check_state(name, got, want, tol=TOL):
    assert got.pos == want.pos, name
    for layer, (a, b) in enumerate(zip(got.layers, want.layers)):
        assert len(a.nodes) == len(b.nodes), f"{name} layer {layer}: {len(a.nodes)} levels vs {len(b.nodes)}"
        for i, (x, y) in enumerate(zip(a.nodes, b.nodes)):
            assert x.shape == y.shape, f"{name} layer {layer} level {i}: {tuple(x.shape)} vs {tuple(y.shape)}"
            if x.numel():
                _check(f"{name} layer {layer} nodes {i}", x, y, tol)
        assert a.slot_q.shape == b.slot_q.shape, f"{name} layer {layer} slots"
        if a.slot_q.numel():
            _check(f"{name} layer {layer} slot_q", a.slot_q, b.slot_q, tol)
            _check(f"{name} layer {layer} slot_v", a.slot_v, b.slot_v, tol)
        assert (a.pinned is None) == (b.pinned is None), f"{name} layer {layer} pinned memory"
        if a.pinned is not None and a.pinned.w.numel():
            # by value: where write scores tie (identical inputs), which position is kept
            # changes no output, and the forms may keep different ones
            for field in ("x", "w", "q", "v"):
                _check(f"{name} layer {layer} pinned.{field}", getattr(a.pinned, field), getattr(b.pinned, field), tol)
    assert got.nbytes == want.nbytes


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_form_equals_the_reference(case):
    model = model_for(case)
    k = case[0]
    T = _length(k)
    idx = torch.randint(0, 11, (2, T))
    lengths = sorted({n for m in (1, 2, 3) for n in (k**m - 1, k**m, k**m + 1) if 0 < n <= T} | {1, T})
    with torch.no_grad():
        ref = reference_forward(model, idx)
        state = model.init_state(2)
        steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(T)], dim=1)
        _check("step-by-step", steps, ref)
        for n in lengths:
            logits, st = model(idx[:, :n], return_state=True)
            _check(f"parallel T={n}", logits, ref[:, :n])
            _, ref_state = reference_forward(model, idx[:, :n], return_state=True)
            _check_state(f"prefill state T={n}", st, ref_state)
            if n < T:
                out, st = model.step(idx[:, n], st)
                _check(f"prefill T={n} then a step", out, ref[:, n])
        _check_state("streamed state", state, reference_forward(model, idx, return_state=True)[1])
        model.config.chunk_size = 4  # several chunks: the largest power of k not above 4
        _check("parallel in chunks", model(idx), ref)
        model.config.chunk_size = 4096
        cuts = ([1], [k, k + k * k], [5, 6, 7, 14], [k**2 + 1], [k - 1, 2 * k - 1, k**2 - 1])
        for c in (sorted(set(c)) for c in cuts if max(c) < T):
            splits = [b - a for a, b in zip([0, *c], [*c, T])]
            st, outs, t = model.init_state(2), [], 0
            for n in splits:
                logits, st = model(idx[:, t : t + n], state=st)
                outs.append(logits)
                t += n
            _check(f"pieces {splits}", torch.cat(outs, dim=1), ref)
            _check_state(f"pieces {splits} state", st, reference_forward(model, idx, return_state=True)[1])
        last, st = model.prefill(idx, max_chunk=k)
        _check("prefill(max_chunk=k)", last, ref[:, -1])


@pytest.mark.parametrize("case", CASES[1:6] + CASES[9:11] + CASES[12:], ids=_id)
def test_gradients_equal_the_reference(case):
    model = model_for(case)
    T = _length(case[0])
    idx = torch.randint(0, 11, (2, T))
    target = torch.randn(2, T, 11)

    def grads(fn):
        model.zero_grad()
        (fn(model, idx) * target).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    want = grads(reference_forward)
    got = {"parallel": grads(lambda m, i: m(i))}
    model.config.chunk_size = 4  # several chunks: the recomputing backward
    got["chunked"] = grads(lambda m, i: m(i))
    model.gradient_checkpointing = True
    got["checkpointed"] = grads(lambda m, i: m(i))
    for form, g in got.items():
        for name in want:
            scale = max(1.0, want[name].abs().max().item())
            _check(f"{form} grad {name}", g[name] / scale, want[name] / scale)


@needs_cc
@pytest.mark.parametrize("case", [c for c in CASES if c[4] == 0 and len(c) < 8] + [(2, "latest", "linear", 2, 0, "none")],
                         ids=_id)
def test_native_step_equals_the_reference(case):
    model = model_for(case, torch.float64)
    T = _length(case[0])
    idx = torch.randint(0, 11, (2, T))
    ref, ref_state = reference_forward(model, idx, return_state=True)
    stepper = NativeStepper(model, batch_size=2)
    got = torch.stack([stepper.step(idx[:, t]) for t in range(T)], dim=1)
    _check("native vs reference", got, ref, tol=1e-10)
    _check_state("native state", stepper.to_state(), ref_state, tol=1e-10)
    # continue natively from a prefill at an unaligned position, and from a loaded state
    split = T // 2 + 1
    _, state = model.prefill(idx[:, :split])
    stepper2 = NativeStepper(model, batch_size=2).load_state(state)
    got2 = torch.stack([stepper2.step(idx[:, t]) for t in range(split, T)], dim=1)
    _check("native after prefill", got2, ref[:, split:], tol=1e-10)


class TanhSummarizer(nn.Module):
    """Not affine: tanh of a linear map of the children (no affine() to offer)."""

    def __init__(self, d: int, n_banks: int, k: int):
        super().__init__()
        self.lin = nn.Linear(k * d, d)

    def forward(self, children):
        return torch.tanh(self.lin(children.flatten(-2)))


@needs_cc
def test_native_refuses_a_summarizer_that_is_not_affine():
    model = model_for((3, "digits", "linear", 2, 0, "none"))
    for block in model.blocks:
        block.memory.summarizer = TanhSummarizer(16, 2, 3)
    idx = torch.randint(0, 11, (1, 30))
    with torch.no_grad():  # the other forms run it exactly ...
        ref = reference_forward(model, idx)
        _check("parallel, non-affine summarizer", model(idx), ref)
    with pytest.raises(ValueError, match="TanhSummarizer states no affine form"):  # ... the native one refuses
        NativeStepper(model)
    with pytest.raises(ValueError, match="affine"):
        model.generate(idx, 3, native=True)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("case", [(2, "latest", "linear", 2, 0, "none"), (3, "digits", "conv", 2, 1, "none")], ids=_id)
def test_models_work_under_inference_mode_and_no_grad(mode, case):
    ctx = getattr(torch, mode)
    idx = torch.randint(0, 11, (1, 40))
    with ctx():
        model = model_for(case)  # created and run under the mode
        ref = reference_forward(model, idx)
        _check(f"{mode} parallel", model(idx), ref)
        state = model.init_state(1)
        steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(40)], dim=1)
        _check(f"{mode} step", steps, ref)
        last, _ = model.prefill(idx, max_chunk=8)
        _check(f"{mode} prefill", last, ref[:, -1])
        assert model.generate(idx[:, :5], 4, temperature=0).shape == (1, 9)
    # and a model made outside the mode, run inside it
    model = model_for(case)
    with torch.no_grad():
        ref = reference_forward(model, idx)
    with ctx():
        _check(f"{mode} parallel (model made outside)", model(idx), ref)
        state = model.init_state(1)
        _check(f"{mode} step (model made outside)", model.step(idx[:, 0], state)[0], ref[:, 0])


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]], ids=_id)
def test_materialized_form_follows_the_tree(case):
    """The benchmark's slot-gathering forward reads the same slots for every stride and rule."""
    from lmn.materialized import materialized_forward

    model = model_for(case)
    idx = torch.randint(0, 11, (2, 50))
    with torch.no_grad():
        _check("materialized", materialized_forward(model, idx), reference_forward(model, idx))


@pytest.mark.parametrize("case", CASES[8:12], ids=_id)
def test_a_capped_tree_has_a_fixed_state(case):
    """With max_level the state stops growing once the top level exists."""
    model = model_for(case)
    k, cap = case[0], case[6]
    sizes = set()
    state = model.init_state(1)
    with torch.no_grad():
        for pos in range(1, 4 * k ** (cap + 1) + 1):
            model.step(torch.zeros(1, dtype=torch.long), state)
            assert state.n_levels <= cap
            assert state.nbytes == state_nbytes(model.config, 1, pos)
            if pos >= k ** (cap + 1):
                sizes.add(state.nbytes)
    assert max(sizes) <= state_nbytes(model.config, 1, k ** (cap + 1) - 1)  # bounded
    if find_compiler() is not None and case[4] == 0:
        stepper = NativeStepper(model)
        assert stepper.capacity == float("inf")


@pytest.mark.parametrize("case", [(2, "latest", "linear", 2, 0, "none"), (3, "digits", "conv", 1, 0, "none")], ids=_id)
def test_continuing_a_stream_is_differentiable(case):
    """Training in sequential mode backpropagates through model(x, state=...) (the prefill
    path): its gradients equal the numerical derivatives of its forward (float64 gradcheck),
    whose values equal the reference."""
    from torch.func import functional_call

    model = model_for(case, torch.float64)
    idx = torch.randint(0, 11, (1, 14))
    with torch.no_grad():
        _, state = model(idx[:, :6], return_state=True)
    # (biases: few entries, so the numerical Jacobian stays cheap; every path still runs)
    names = ["blocks.0.memory.summarizer.bias" if case[2] == "linear" else "blocks.0.memory.summarizer.conv.bias",
             "blocks.1.attn.q.bias", "blocks.0.attn.v.bias", "blocks.0.ff.up.bias"]
    params = dict(model.named_parameters())

    def piece_logits(*tensors):
        logits, _ = functional_call(model, {**params, **dict(zip(names, tensors))}, (idx[:, 6:],),
                                    {"state": state.clone()})
        return logits

    inputs = [params[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(piece_logits, inputs, eps=1e-6, atol=1e-6)
    with torch.no_grad():
        _check("continuation forward", piece_logits(*inputs), reference_forward(model, idx)[:, 6:], tol=1e-10)


@needs_cc
def test_native_refuses_a_pinned_memory():
    model = model_for((2, "latest", "linear", 2, 0, "none", None, 2))
    with pytest.raises(ValueError, match="pinned memory"):
        NativeStepper(model)


def test_pinned_memory_keeps_the_highest_write_scores():
    """The pinned set is the top m earlier tokens by write score (ties: the later one), and
    the state's size formula counts it."""
    model = model_for((2, "latest", "linear", 2, 0, "none", None, 3))
    idx = torch.randint(0, 11, (2, 40))
    with torch.no_grad():
        _, state = model(idx, return_state=True)
        x = model.blocks[0].norm1(model._embed(idx, 0))
        w = model.blocks[0].pinned.write(x)[..., 0]
    for b in range(2):
        want = sorted(range(40), key=lambda j: (w[b, j].item(), j), reverse=True)[:3]
        got = state.layers[0].pinned.j[b].tolist()
        assert [w[b, j].item() for j in got] == [w[b, j].item() for j in want]
    assert state.nbytes == state_nbytes(model.config, 2, 40)
