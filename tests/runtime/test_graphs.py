"""lmn.graphs: the streaming step replayed as a CUDA graph. On a CPU the stepper runs the
same buffers and function eagerly (the captured graph replays exactly these kernels), and
is checked against LMN.step; with a GPU the captured replay is checked against both."""

import pytest
import torch

from lmn import LMN, LMNConfig
from lmn.graphs import GraphStepper
from lmn.kinds import get_kind
from tests.core.test_parity import randomize_


def _model(**kw):
    torch.manual_seed(3)
    model = LMN(LMNConfig(vocab_size=17, d_model=16, n_layers=2, n_heads=2, **kw))
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize("kw", [{}, {"stride": 3, "read": "digits"}, {"stride": 4, "n_banks": 1},
                                {"pos_encoding": "sinusoidal"}, {"max_level": 2}])
@pytest.mark.parametrize("prompt", [0, 1, 13])
def test_graph_stepper_equals_lmn_step(kw, prompt):
    model = _model(**kw)
    gen = torch.Generator().manual_seed(prompt)
    tokens = torch.randint(0, 17, (2, prompt + 70), generator=gen)
    state = model.init_state(2)
    if prompt:
        _, state = model.prefill(tokens[:, :prompt])
    stepper = GraphStepper(model, batch_size=2, max_tokens=1000, capture=False).load(state if prompt else None)
    with torch.no_grad():
        for t in range(prompt, prompt + 70):
            want, state = model.step(tokens[:, t], state)
            got = stepper.step(tokens[:, t])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert stepper.count == prompt + 70


def test_graph_stepper_refuses_what_it_cannot_run():
    model = _model()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            GraphStepper(model, capture=True)
    with pytest.raises(ValueError, match="batch_size"):
        GraphStepper(model, batch_size=0, capture=False)
    stepper = GraphStepper(model, batch_size=2, max_tokens=3, capture=False)
    with pytest.raises(ValueError, match="2 tokens"):
        stepper.step(torch.tensor([1]))
    with pytest.raises(ValueError, match="made for batch_size=2"):
        stepper.load(model.prefill(torch.zeros(1, 4, dtype=torch.long))[1])
    for _ in range(stepper.capacity):
        stepper.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="full"):
        stepper.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="pinned"):
        GraphStepper(_model(pinned=2), capture=False)
    with pytest.raises(ValueError, match="eval"):
        GraphStepper(_model().train(), capture=False)


def test_graph_kind_says_why_it_cannot_run_here():
    kind = get_kind("lmn-graph")
    assert kind.uses == frozenset({"decode"})
    if not torch.cuda.is_available():
        assert "CUDA" in kind.bench.unavailable()
        with pytest.raises(ValueError, match="CUDA device"):
            kind.decoder(_model(), 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graph_replays_the_step():
    model = _model().cuda()
    tokens = torch.randint(0, 17, (4, 90), device="cuda")
    _, state = model.prefill(tokens[:, :20])
    eager = GraphStepper(model, batch_size=4, capture=False).load(model.prefill(tokens[:, :20])[1])
    graph = GraphStepper(model, batch_size=4, capture=True).load(state)
    with torch.no_grad():
        for t in range(20, 90):
            want, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(graph.step(tokens[:, t]), want, atol=1e-4, rtol=0)
            torch.testing.assert_close(eager.step(tokens[:, t]), want, atol=1e-4, rtol=0)
