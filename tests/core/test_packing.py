"""Packed rows with exact resets (issue 22, item 3): a row holding several documents gives
every document the logits, gradients and state of that document run alone, in every form
that takes ``doc_starts`` / ``reset``; the forms that cannot reset rows apart refuse by name.

The definition is the model on each document alone (and ``reference_forward`` on it);
tolerance 1e-5 absolute in float32. Rows are odd lengths with boundaries at and off powers
of two, several per row, different in every row, one-token documents included.
"""

import pytest
import torch

from lmn import reference_forward
from lmn.documents import block_causal_mask, doc_starts_from_lengths, document_positions
from tests.core.test_memory_mechanisms import model_of

TOL = 1e-5

# T = 37 (odd): starts at 8, 16, 32 (powers of two) and 5, 13, 29, 36 (not); one row one document
LAYOUTS = [[8, 8, 16, 5], [5, 8, 16, 7, 1], [37], [1, 12, 3, 13, 7, 1]]
TREES = [dict(stride=2, read="latest"), dict(stride=2, read="digits"),
         dict(stride=4, read="latest"), dict(stride=4, read="digits")]


def _id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


def packed(layouts=LAYOUTS, vocab=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    starts = doc_starts_from_lengths(layouts)
    return torch.randint(0, vocab, starts.shape, generator=g), starts


def documents(layouts):
    """(row, start, end) of every document."""
    out = []
    for r, lengths in enumerate(layouts):
        at = 0
        for n in lengths:
            out.append((r, at, at + n))
            at += n
    return out


def alone(fn, idx, layouts):
    """``fn`` on every document alone, put back as a packed ``(B, T, V)`` tensor."""
    rows = []
    for r, lengths in enumerate(layouts):
        at, parts = 0, []
        for n in lengths:
            parts.append(fn(idx[r : r + 1, at : at + n]))
            at += n
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


def close(name, got, want, tol=TOL):
    assert got.shape == want.shape, f"{name}: {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    assert diff <= tol, f"{name}: max |diff| {diff:.2e} > {tol:.0e}"


@pytest.mark.parametrize("kw", TREES, ids=_id)
def test_parallel_and_reference_equal_the_documents_alone(kw):
    model = model_of(**kw)
    idx, starts = packed()
    with torch.no_grad():
        want = alone(model, idx, LAYOUTS)
        close("parallel", model(idx, doc_starts=starts), want)
        close("reference", reference_forward(model, idx, doc_starts=starts), want)
        close("reference alone", alone(lambda x: reference_forward(model, x), idx, LAYOUTS), want)
        # a boundary really is one: the packed row without it gives other logits
        assert (model(idx)[0, 8:] - want[0, 8:]).abs().max() > 1e-3


@pytest.mark.parametrize("kw", [dict(stride=2, read="latest"), dict(stride=4, read="digits"),
                                dict(window=5, pinned=2), dict(window=3, sink=True, level_gate="data"),
                                dict(pos_encoding="sinusoidal")], ids=_id)
def test_gradients_equal_the_documents_alone(kw):
    model = model_of(**kw)
    idx, starts = packed()
    weights = torch.randn(*idx.shape, 13)

    def grads(logits_of):
        model.zero_grad()
        (logits_of() * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want = grads(lambda: alone(model, idx, LAYOUTS))
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        got = grads(lambda: model(idx, doc_starts=starts))
        assert got.keys() == want.keys()
        for n in want:
            close(f"grad {n} (checkpointing={checkpointing})", got[n], want[n])
    model.gradient_checkpointing = False
    with torch.no_grad():  # the mechanisms restart too (the logits, against the reference)
        close("reference", reference_forward(model, idx, doc_starts=starts), alone(model, idx, LAYOUTS))


def test_one_document_per_row_is_the_plain_forward():
    model = model_of()
    idx, _ = packed()
    starts = torch.zeros_like(idx, dtype=torch.bool)  # column 0 starts the one document (marked or not)
    with torch.no_grad():
        close("unmarked", model(idx, doc_starts=starts), model(idx))
        starts[:, 0] = True
        close("marked", model(idx, doc_starts=starts), model(idx))


def test_the_returned_state_is_the_last_documents_and_streams_on():
    model = model_of(stride=2, read="digits")
    layouts = [[8, 8, 21], [3, 10, 3, 21], [16, 21]]  # the last documents start at column 16 in every row
    idx, starts = packed(layouts)
    more = torch.randint(0, 13, (3, 6))
    with torch.no_grad():
        logits, state = model(idx, return_state=True, doc_starts=starts)
        close("logits", logits, alone(model, idx, layouts))
        ref_logits, ref_state = reference_forward(model, idx, return_state=True, doc_starts=starts)
        close("reference logits", ref_logits, logits)
        assert state.pos == ref_state.pos == 21
        for name, t in ref_state.tensors().items():
            close(f"state {name}", state.tensors()[name], t)
        steps = torch.stack([model.step(more[:, t], state)[0] for t in range(6)], dim=1)
        close("steps after", steps, model(torch.cat([idx[:, 16:], more], 1))[:, 21:])

        # prefill: the last documents only, in pieces (max_chunk 4)
        last, pstate = model.prefill(idx, max_chunk=4, doc_starts=starts)
        close("prefill last logits", last, logits[:, -1])
        assert pstate.pos == 21
        for name, t in ref_state.tensors().items():
            close(f"prefill state {name}", pstate.tensors()[name], t)


def test_a_prompt_continues_the_stream_or_restarts_where_marked():
    model = model_of(stride=4, read="latest")
    prompt = torch.randint(0, 13, (3, 11))
    idx = torch.randint(0, 13, (3, 19))
    with torch.no_grad():
        _, state = model(prompt, return_state=True)
        # rows 0 and 1 continue their streams up to a boundary at 7 / 12; row 2 starts anew at 0
        starts = torch.zeros(3, 19, dtype=torch.bool)
        starts[0, 7] = starts[1, 12] = starts[2, 0] = starts[2, 12] = True
        starts[0, 12] = True  # the last documents start at column 12 in every row
        logits, state_after = model(idx, state=state.clone(), doc_starts=starts)
        whole = model(torch.cat([prompt, idx], 1))
        close("row 0 continues", logits[0, :7], whole[0, 11:18])
        close("row 1 continues", logits[1, :12], whole[1, 11:23])
        close("row 0, document 7..11", logits[0:1, 7:12], model(idx[0:1, 7:12]))
        close("row 2, document 0..11", logits[2:3, :12], model(idx[2:3, :12]))
        close("last documents", logits[:, 12:], model(idx[:, 12:]))
        assert state_after.pos == 7
        last, pstate = model.prefill(idx, state=state.clone(), doc_starts=starts)
        close("prefill", last, logits[:, -1])
        assert pstate.pos == 7
        # no boundary anywhere: the plain continuation
        none = torch.zeros(3, 19, dtype=torch.bool)
        close("no boundary", model(idx, state=state.clone(), doc_starts=none)[0], whole[:, 11:])
        close("prefill, no boundary", model.prefill(idx, state=state.clone(), doc_starts=none)[0], whole[:, -1])


@pytest.mark.parametrize("kw", [dict(stride=2, read="latest"), dict(stride=4, read="digits"),
                                dict(window=4, pinned=2, sink=True)], ids=_id)
def test_step_with_reset_equals_the_documents_alone(kw):
    model = model_of(**kw)
    layouts = [[5, 8, 1, 16, 3], [5, 8, 1, 16, 3]]  # one position for the batch: the same boundaries
    idx, starts = packed(layouts)
    with torch.no_grad():
        want = alone(model, idx, layouts)
        state = model.init_state(2)
        got = torch.stack([model.step(idx[:, t], state, reset=starts[:, t])[0] for t in range(idx.shape[1])], 1)
        close("step", got, want)
        state = model.init_state(2)  # reset=True / False spelled as bools
        got = torch.stack([model.step(idx[:, t], state, reset=bool(starts[0, t]))[0] for t in range(idx.shape[1])], 1)
        close("step, bool reset", got, want)


def test_partial_resets_are_refused_where_the_state_has_one_position():
    model = model_of()
    state = model.init_state(3)
    model.step(torch.tensor([1, 2, 3]), state)
    with pytest.raises(ValueError, match=r"LMN.step restarts every stream or none .* rows 1 of 3"):
        model.step(torch.tensor([1, 2, 3]), state, reset=torch.tensor([False, True, False]))
    with pytest.raises(ValueError, match=r"reset must be True/False or a \(3,\) bool tensor"):
        model.step(torch.tensor([1, 2, 3]), state, reset=torch.tensor([1, 0, 0]))
    idx, starts = packed()
    with pytest.raises(ValueError, match="needs the last document to start at the same column in every row"):
        model(idx, return_state=True, doc_starts=starts)
    with pytest.raises(ValueError, match="LMN.prefill needs the last document to start at the same column"):
        model.prefill(idx, doc_starts=starts)
    with pytest.raises(ValueError, match="needs the last document to start at the same column"):
        reference_forward(model, idx, return_state=True, doc_starts=starts)
    with pytest.raises(TypeError, match="doc_starts must be a bool tensor"):
        model(idx, doc_starts=starts.long())
    with pytest.raises(ValueError, match=r"doc_starts must have the shape of the token ids \(4, 37\)"):
        model(idx, doc_starts=starts[:, :5])


def test_the_exported_step_resets_rows_apart():
    from lmn.graphs import GraphStepper

    model = model_of()
    idx, starts = packed()  # different boundaries in every row
    with torch.no_grad():
        want = alone(model, idx, LAYOUTS)
        stepper = GraphStepper(model, batch_size=4, max_tokens=64, capture=False)
        got = torch.stack([stepper.step(idx[:, t], reset=starts[:, t]) for t in range(idx.shape[1])], 1)
    close("exported step", got, want)


def test_the_onnx_step_resets_rows_apart(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from lmn.export import OrtStepper, export_onnx

    model = model_of()
    layouts = [[5, 3, 8, 1], [9, 8]]
    idx, starts = packed(layouts)
    with torch.no_grad():
        want = alone(model, idx, layouts)
    ort = OrtStepper(export_onnx(model, tmp_path / "step.onnx", max_tokens=64, batch_size=2))
    got = torch.stack([torch.from_numpy(ort.step(idx[:, t].numpy(), reset=starts[:, t].numpy()))
                       for t in range(idx.shape[1])], 1)
    close("onnx step", got, want)


def test_the_native_step_resets_every_row_or_refuses():
    from lmn.native import NativeStepper, find_compiler

    if find_compiler() is None:
        pytest.skip("no C compiler on this machine")
    model = model_of()
    layouts = [[5, 8, 3], [5, 8, 3]]
    idx, starts = packed(layouts)
    stepper = NativeStepper(model, batch_size=2)
    with torch.no_grad():
        got = torch.stack([stepper.step(idx[:, t], reset=starts[:, t]) for t in range(idx.shape[1])], 1)
        close("native", got, alone(model, idx, layouts))
    with pytest.raises(ValueError, match=r"the native step restarts every stream or none .* rows 0 of 2"):
        stepper.step(idx[:, 0], reset=torch.tensor([True, False]))


def test_the_materialised_form_runs_the_documents_alone():
    from lmn.materialized import materialized_forward

    model = model_of()
    idx, starts = packed()
    with torch.no_grad():
        close("materialised", materialized_forward(model, idx, doc_starts=starts), alone(model, idx, LAYOUTS))


def test_document_positions_and_mask():
    starts = doc_starts_from_lengths([[2, 3], [1, 1, 3]])
    assert document_positions(starts).tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 1, 2]]
    mask = block_causal_mask(starts)[1, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    with pytest.raises(ValueError, match="add up to the same T"):
        doc_starts_from_lengths([[2, 3], [4]])


def test_a_batch_with_documents_reaches_the_model():
    from lmn.tasks import Batch
    from lmn.trainer.evaluation import model_outputs

    model = model_of()
    idx, starts = packed()
    with torch.no_grad():
        close("trainer's call", model_outputs(model, Batch(idx, idx, None, starts)), alone(model, idx, LAYOUTS))
        close("no documents", model_outputs(model, Batch(idx, idx)), model(idx))
    part = Batch(idx, idx, None, starts).rows(1, 3)
    assert torch.equal(part.doc_starts, starts[1:3])
    with pytest.raises(ValueError, match="Linear cannot reset at document boundaries"):
        model_outputs(torch.nn.Linear(37, 2), Batch(idx.float(), idx, None, starts))

