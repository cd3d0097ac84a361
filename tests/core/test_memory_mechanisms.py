"""The memory mechanisms of issue 21 (residual / gated summarizers, normalised nodes, the
local window, the sink slot, the per-level score bias): every PyTorch form equals the
plain reference (logits and gradients, odd lengths, both read rules, strides 2 and 4),
the state equals the reference's and its size the prediction, and the fixed-layout forms
run them exactly or refuse them by name."""

from __future__ import annotations

import pytest
import torch

import lmn.attention
import lmn.reference
from lmn import LMN, LMNConfig, LMNState, reference_forward, state_nbytes
from lmn.summarizers import GatedSummarizer, NormalisedNodes, ResidualSummarizer
from tests.core.test_parity import randomize_

TOL = 1e-5

MECHANISMS = [
    dict(summarizer="residual"),
    dict(summarizer="gated"),
    dict(node_norm=True),
    dict(summarizer="gated", node_norm=True, expand=2),
    dict(window=5),
    dict(sink=True),
    dict(level_gate="bias"),
    dict(level_gate="data"),
    dict(summarizer="gated", window=3, sink=True, level_gate="data", pinned=2),
]
TREES = [dict(), dict(read="digits"), dict(stride=4), dict(stride=4, read="digits", n_banks=3)]
CASES = [{**m, **t} for m in MECHANISMS for t in TREES]


def _id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "paper"


def model_of(seed=0, **kw) -> LMN:
    torch.manual_seed(seed)
    model = LMN(LMNConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2, ff_mult=2, **kw)).eval()
    randomize_(model)
    with torch.no_grad():  # the new parameters start at zero (a no-op at init): make them matter here
        for name, p in model.named_parameters():
            if p.abs().max() == 0:
                p.normal_(0.0, 0.3)
    return model


def close(name, got, want, tol=TOL):
    assert got.shape == want.shape, f"{name}: {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    assert diff <= tol, f"{name}: max |diff| {diff:.2e} > {tol:.0e}"


@pytest.mark.parametrize("kw", CASES, ids=_id)
def test_every_form_equals_the_reference(kw):
    model = model_of(**kw)
    T = 37  # odd, past a power of 2 and of 4
    idx = torch.randint(0, 13, (2, T))
    with torch.no_grad():
        ref, ref_state = reference_forward(model, idx, return_state=True)
        close("parallel", model(idx), ref)
        model.config.chunk_size = 4 if model.config.stride == 4 else 8  # several chunks, the last partial
        close("parallel in chunks", model(idx), ref)
        model.config.chunk_size = 4096
        for T0 in (1, 6, 16, 21):
            close(f"parallel T={T0}", model(idx[:, :T0]), ref[:, :T0])
        last, state = model.prefill(idx[:, :21], max_chunk=4)  # prefill in aligned pieces
        close("prefill", last, ref[:, 20])
        for t in range(21, T):
            logits, state = model.step(idx[:, t], state)
            close(f"step t={t} after prefill", logits, ref[:, t])
        fresh = model.init_state(2)
        steps = torch.stack([model.step(idx[:, t], fresh)[0] for t in range(T)], 1)
        close("step by step", steps, ref)
    mine, theirs = state.tensors(), ref_state.tensors()
    assert sorted(mine) == sorted(theirs)
    for k in mine:
        if not k.endswith("pinned.j"):  # (pinned order among equal scores may differ by rounding)
            close(f"state {k}", mine[k], theirs[k])
    assert state.nbytes == state_nbytes(model.config, 2, T)
    again = LMNState.from_state_dict(model.config, state.state_dict())
    with torch.no_grad():
        close("step from a reloaded state", model.step(idx[:, 0], again)[0], model.step(idx[:, 0], state)[0])


@pytest.mark.parametrize("kw", [c for c in CASES if "pinned" not in c and c.get("n_banks") != 3], ids=_id)
def test_gradients_equal_the_reference(kw):
    model = model_of(**kw).train()
    idx = torch.randint(0, 13, (2, 29))
    target = torch.randn(2, 29, 13)
    params = [p for p in model.parameters()]

    def grads(fn):
        return torch.autograd.grad((fn() * target).sum(), params, allow_unused=True)

    want = grads(lambda: reference_forward(model, idx))
    model.config.chunk_size = 4 if model.config.stride == 4 else 8  # the recomputed-chunk backward
    got = grads(lambda: model(idx))
    model.gradient_checkpointing = True
    ckpt = grads(lambda: model(idx))
    model.gradient_checkpointing = False
    model.config.chunk_size = 4096
    for (name, _), w, g, c in zip(model.named_parameters(), want, got, ckpt):
        assert (w is None) == (g is None), name
        if w is None:
            continue
        scale = max(1.0, w.abs().max().item())
        close(f"grad {name}", g / scale, w / scale)
        close(f"checkpointed grad {name}", c / scale, w / scale)
        if any(tag in name for tag in ("level_", "sink.", "summarizer.")):
            assert w.abs().max() > 0, f"{name} gets no gradient"


def test_levels_past_the_gate_table_share_its_last_entry(monkeypatch):
    """A tree deeper than the gate's table: levels from GATE_LEVELS - 2 up read its last entry
    in every form (a small table here, so that a short sequence reaches it)."""
    monkeypatch.setattr(lmn.attention, "GATE_LEVELS", 3)
    monkeypatch.setattr(lmn.reference, "GATE_LEVELS", 3)
    for gate in ("bias", "data"):
        model = model_of(level_gate=gate)
        assert model.blocks[0].attn.level_bias.shape == (2, 3)
        idx = torch.randint(0, 13, (1, 40))  # levels 0 .. 5
        with torch.no_grad():
            ref = reference_forward(model, idx)
            close("parallel", model(idx), ref)
            state = model.init_state(1)
            close("steps", torch.stack([model.step(idx[:, t], state)[0] for t in range(40)], 1), ref)
            # the entries matter: a change of the shared last one moves the logits
            model.blocks[0].attn.level_bias[:, -1] += 1.0
            assert (model(idx) - ref).abs().max() > 1e-4


def test_new_parameters_start_as_a_no_op_where_stated():
    """At initialisation the residual merge is the children's mean, the gated merge too, and
    the per-level bias is zero; the sink starts with score 0 (it takes softmax mass)."""
    torch.manual_seed(0)
    children = torch.randn(3, 2, 5, 2, 8)  # (..., n_banks, m, k, d)
    mean = children.mean(-2)
    close("residual at init", ResidualSummarizer(8, 2, 2)(children), mean)
    close("gated at init", GatedSummarizer(8, 2, 2)(children), mean)
    base = LMN(LMNConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2))
    torch.manual_seed(0)
    gated = LMN(LMNConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2, level_gate="data"))
    idx = torch.randint(0, 13, (1, 20))
    gated_state = {k: v for k, v in gated.state_dict().items() if "level_" not in k}
    assert sorted(gated_state) == sorted(base.state_dict())
    base.load_state_dict(gated_state)
    with torch.no_grad():
        close("zero level gate == no gate", gated(idx), base(idx))


def test_summarizer_shapes_and_affine_forms():
    torch.manual_seed(1)
    res = ResidualSummarizer(6, 2, 3)
    with torch.no_grad():
        res.weight.normal_()
        res.bias.normal_()
    children = torch.randn(4, 2, 7, 3, 6)
    W, b = res.affine()
    joined = children.movedim(-4, -2).flatten(-2).flatten(-2).double()  # child-major then bank-major
    want = (joined @ W.T + b).unflatten(-1, (2, 6)).transpose(-3, -2)
    close("residual affine form", want, res(children).double())
    close("residual reference", res.reference(children), res(children))
    gated = GatedSummarizer(6, 2, 3)
    with torch.no_grad():
        gated.weight.normal_()
    out = gated(children)
    close("gated reference", gated.reference(children), out)
    assert not hasattr(gated, "affine")
    normed = NormalisedNodes(gated)
    y = normed(children)
    close("normalised nodes have rms 1", y.pow(2).mean(-1), torch.ones(y.shape[:-1]), tol=1e-5)
    assert normed.affine() is None if hasattr(normed, "affine") else True


@pytest.mark.parametrize("bad, match", [
    (dict(window=-1), "LMNConfig.window"),
    (dict(sink=1), "LMNConfig.sink must be True or False"),
    (dict(node_norm="yes"), "LMNConfig.node_norm must be True or False"),
    (dict(level_gate="lambda"), "LMNConfig.level_gate"),
    (dict(summarizer="max"), "LMNConfig.summarizer"),
])
def test_bad_settings_are_one_line_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        LMNConfig(**bad)


@pytest.mark.parametrize("kw, runs", [
    (dict(summarizer="residual"), True),
    (dict(summarizer="residual", stride=4, read="digits"), True),
    (dict(summarizer="gated"), "GatedSummarizer states no affine form"),
    (dict(node_norm=True), "NormalisedNodes states no affine form"),
    (dict(window=4), "does not run the local window"),
    (dict(sink=True), "does not run the sink slot"),
    (dict(level_gate="bias"), "does not run the per-level score bias"),
])
def test_the_native_step_runs_a_mechanism_exactly_or_refuses_it_by_name(kw, runs):
    from lmn.native import NativeStepper

    model = model_of(**kw)
    if runs is not True:
        with pytest.raises(ValueError, match=runs):
            NativeStepper(model)
        return
    model = model.double()
    native = NativeStepper(model, batch_size=2)
    idx = torch.randint(0, 13, (2, 40))
    with torch.no_grad():
        ref = reference_forward(model, idx)
        got = torch.stack([native.step(idx[:, t]) for t in range(40)], 1)
    close("native step", got, ref, tol=1e-10)


@pytest.mark.parametrize("kw, runs", [
    (dict(summarizer="residual"), True),
    (dict(summarizer="gated"), True),
    (dict(node_norm=True, stride=4, read="digits"), True),
    (dict(window=4), "export does not run the local window"),
    (dict(sink=True), "export does not run the sink slot"),
    (dict(level_gate="data"), "export does not run the per-level score bias"),
])
def test_the_exported_step_runs_a_summarizer_exactly_or_refuses_by_name(kw, runs):
    from lmn.export import StreamStep

    model = model_of(**kw)
    if runs is not True:
        with pytest.raises(ValueError, match=runs):
            StreamStep(model, 64)
        return
    step = StreamStep(model, 64)
    idx = torch.randint(0, 13, (2, 40))
    with torch.no_grad():
        ref = reference_forward(model, idx)
        init = step.initial_state(2)
        s = [init["pos"], init["nodes"], init["slot_q"], init["slot_v"]]
        outs = []
        for t in range(40):
            logits, *s = step(idx[:, t], *s)
            outs.append(logits)
    close("exported step", torch.stack(outs, 1), ref)


def test_the_materialised_form_and_the_cuda_graphs_refuse_by_name():
    from lmn.graphs import GraphStepper
    from lmn.materialized import materialized_forward

    idx = torch.randint(0, 13, (1, 9))
    for kw, what in ((dict(window=4), "local window"), (dict(level_gate="bias"), "per-level score bias")):
        with pytest.raises(ValueError, match=what):
            materialized_forward(model_of(**kw), idx)
        with pytest.raises(ValueError, match=what):
            GraphStepper(model_of(**kw))
