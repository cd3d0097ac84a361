"""The native (C) streaming step equals the reference, LMN.step and the parallel form.

Float64 runs compare at 1e-10 (the kernel's summation order differs from torch's, nothing
else); float32 at the parity suite's 1e-5. Needs a C compiler: without one these tests
are skipped and NativeStepper raises a RuntimeError that says so.
"""

import itertools

import pytest
import torch

from lmn import LMN, LMNConfig, reference_forward
from lmn.native import NativeStepper, find_compiler
from tests.core.test_parity import randomize_, small_model

pytestmark = pytest.mark.skipif(find_compiler() is None, reason="no C compiler on this machine")

CONFIGS = [
    dict(summarizer=s, n_banks=nb, pos_encoding=pe)
    for s, nb, pe in itertools.product(["linear", "conv", "dwsep"], [1, 3], ["none", "sinusoidal"])
]


def _ids(c):
    return f"{c['summarizer']}-banks{c['n_banks']}-{c['pos_encoding']}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_native_steps_equal_reference_float64(cfg):
    torch.manual_seed(0)
    model = small_model(**cfg).double()
    idx = torch.randint(model.config.vocab_size, (2, 70))
    want = reference_forward(model, idx)
    stepper = NativeStepper(model, batch_size=2)
    got = torch.stack([stepper.step(idx[:, t]) for t in range(idx.shape[1])], dim=1)
    assert got.dtype == torch.float64
    err = (got - want).abs().max().item()
    assert err < 1e-10, f"native step vs reference: max |diff| {err:.3g}"
    # the exported state is the one the parallel prefill builds
    _, state = model.prefill(idx)
    exported = stepper.to_state()
    assert exported.pos == state.pos == 70
    for name, t in state.tensors().items():
        diff = (exported.tensors()[name] - t).abs().max().item()
        assert diff < 1e-10, f"state tensor {name}: max |diff| {diff:.3g}"
    assert exported.nbytes == state.nbytes == stepper.nbytes


@pytest.mark.parametrize("split", [1, 32, 37, 64])
def test_native_continues_a_prefill_and_matches_step_float32(split):
    torch.manual_seed(1)
    model = small_model(summarizer="linear", n_banks=2)
    idx = torch.randint(model.config.vocab_size, (1, 130))
    with torch.no_grad():
        _, state = model.prefill(idx[:, :split])
        stepper = NativeStepper(model).load_state(state)
        ref_state = state.clone()
        for t in range(split, idx.shape[1]):
            want, ref_state = model.step(idx[:, t], ref_state)
            got = stepper.step(idx[:, t])
            err = (got - want).abs().max().item()
            assert err < 1e-5, f"token {t}: native vs LMN.step max |diff| {err:.3g}"
    # back to an LMNState, LMN.step continues the stream exactly where the kernel left it
    state = stepper.to_state()
    tok = torch.tensor([3])
    a, _ = model.step(tok, state)
    b = stepper.step(tok)
    assert (a - b).abs().max().item() < 1e-5


def test_native_paper_model_matches_parallel_form():
    torch.manual_seed(2)
    model = LMN(LMNConfig()).eval()
    randomize_(model)
    idx = torch.randint(65, (1, 300))
    with torch.no_grad():
        want = model(idx)
    stepper = NativeStepper(model)
    got = torch.stack([stepper.step(idx[:, t]) for t in range(idx.shape[1])], dim=1)
    err = (got - want).abs().max().item()
    assert err < 1e-5, f"native vs parallel form: max |diff| {err:.3g}"


def test_native_is_a_snapshot_and_reset_starts_over():
    torch.manual_seed(3)
    model = small_model(summarizer="conv", n_banks=2).double()
    stepper = NativeStepper(model)
    ids = torch.tensor([1, 2, 3, 4, 5])
    first = [stepper.step(ids[i : i + 1]) for i in range(5)]
    stepper.reset()
    assert stepper.pos == 0
    again = [stepper.step(ids[i : i + 1]) for i in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with torch.no_grad():
        model.head.bias.add_(1.0)  # the stepper keeps the weights it was made with
    stepper.reset()
    assert torch.equal(stepper.step(ids[:1]), first[0])


def test_native_rejects_bad_input():
    model = small_model(summarizer="linear", n_banks=2)
    stepper = NativeStepper(model, batch_size=2, max_levels=1)
    with pytest.raises(ValueError, match="outside \\[0, 11\\)"):
        stepper.step(torch.tensor([0, 11]))
    assert stepper.pos == 0  # nothing consumed
    with pytest.raises(ValueError, match="shape"):
        stepper.step(torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        stepper.step(torch.tensor([0.0, 1.0]))
    for _ in range(stepper.capacity):  # max_levels=1: streams of up to 3 tokens
        stepper.step(torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="stream is full"):
        stepper.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="expand = 0 only"):
        NativeStepper(small_model(summarizer="linear", n_banks=1, expand=2))
    with pytest.raises(ValueError, match="float32 and float64"):
        NativeStepper(small_model(summarizer="linear", n_banks=1).to(torch.bfloat16))
    with pytest.raises(TypeError, match="lmn.LMN"):
        NativeStepper(torch.nn.Linear(2, 2))
    other = small_model(summarizer="linear", n_banks=3)
    _, state = other.prefill(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="different configuration"):
        stepper.load_state(state)
    _, state = model.prefill(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        stepper.load_state(state)


def test_generate_native_equals_generate():
    torch.manual_seed(4)
    model = small_model(summarizer="dwsep", n_banks=2).double()
    prompt = torch.randint(model.config.vocab_size, (2, 13))
    a = model.generate(prompt, 40, temperature=0)
    b = model.generate(prompt, 40, temperature=0, native=True)
    assert torch.equal(a, b)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(model.generate(prompt, 40, top_k=4, generator=g()),
                       model.generate(prompt, 40, top_k=4, generator=g(), native=True))


def test_native_build_errors_are_clear(tmp_path, monkeypatch):
    import lmn.native as native

    model = small_model(summarizer="linear", n_banks=1)
    monkeypatch.setattr(native, "_LIBS", {})  # force a fresh build, into an empty cache
    monkeypatch.setenv("LMN_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.raises(RuntimeError, match="failed"):
        NativeStepper(model)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler anywhere
    with pytest.raises(RuntimeError, match="needs a C compiler"):
        NativeStepper(model)
    assert not list((tmp_path / "kernels").glob("*.so"))  # no half-written kernel left behind
