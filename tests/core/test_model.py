"""Configuration, parameter count, input validation, generation."""

import pytest
import torch

from lmn import LMN, LMNConfig
from lmn.generation import sample_next


def test_paper_parameter_count():
    assert LMN(LMNConfig()).num_parameters() == 71_489  # paper, Table 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(d_model=30, n_heads=4), "divisible by n_heads"),
        (dict(n_banks=0), "n_banks"),
        (dict(expand=-1), "expand"),
        (dict(summarizer="lstm"), "summarizer"),
        (dict(pos_encoding="rope"), "pos_encoding"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=32.0), "d_model"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        LMNConfig(**kw)


def test_config_roundtrip_and_unknown_field():
    cfg = LMNConfig(summarizer="dwsep", expand=1)
    assert LMNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LMNConfig field"):
        LMNConfig.from_dict({**cfg.to_dict(), "n_layer": 3})


def test_slot_counts():
    cfg = LMNConfig(n_banks=3, expand=2)
    assert cfg.n_slots(0) == 1
    assert cfg.n_slots(1) == 1 + 3 * 3  # level 1: 1 + 1*2 vectors per bank
    assert cfg.n_slots(6) == 1 + 3 * (3 + 5)


def test_token_ids_out_of_range_are_named():
    model = LMN(LMNConfig())
    with pytest.raises(ValueError, match="token id 65"):
        model(torch.tensor([[1, 2, 65]]))
    with pytest.raises(ValueError, match="token id -3"):
        model(torch.tensor([[1, -3]]))
    state = model.init_state(1)
    with pytest.raises(ValueError, match="token id 70"):
        model.step(torch.tensor([70]), state)


def test_wrong_rank_and_dtype():
    model = LMN(LMNConfig())
    with pytest.raises(ValueError, match="shape \\(batch, time\\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.rand(1, 4))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2]])
    state = model.init_state(2)
    with pytest.raises(ValueError, match="one token per sequence"):
        model.step(torch.zeros(2, 3, dtype=torch.long), state)


def test_step_rejects_state_of_other_batch_size_or_model():
    model = LMN(LMNConfig())
    state = model.init_state(3)
    with pytest.raises(ValueError, match="batch size 2 but the state was made for batch size 3"):
        model.step(torch.zeros(2, dtype=torch.long), state)
    other = LMN(LMNConfig(n_banks=1))
    with pytest.raises(ValueError, match="different configuration"):
        other.step(torch.zeros(3, dtype=torch.long), state)
    with pytest.raises(TypeError, match="LMNState"):
        model.step(torch.zeros(3, dtype=torch.long), {"pos": 0})
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)


def test_greedy_generate_matches_repeated_full_forward():
    model = LMN(LMNConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2)).eval()
    prompt = torch.randint(0, 13, (2, 5))
    out = model.generate(prompt, 20, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(20):  # the slow way: recompute everything, take the argmax
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_sampling_is_reproducible_and_respects_top_k():
    model = LMN(LMNConfig()).eval()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = model.generate(prompt, 30, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 30, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 33)
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    draws = {sample_next(logits, 1.0, 2, torch.Generator().manual_seed(s)).item() for s in range(50)}
    assert draws <= {1, 2} and len(draws) == 2
    assert model.generate(prompt, 0).shape == (1, 3)


@pytest.mark.parametrize(
    "kw, match",
    [(dict(max_new_tokens=-1), "max_new_tokens"), (dict(temperature=-0.5), "temperature"), (dict(top_k=0), "top_k")],
)
def test_generate_argument_errors(kw, match):
    model = LMN(LMNConfig())
    args = dict(max_new_tokens=3, temperature=1.0, top_k=None) | kw
    with pytest.raises(ValueError, match=match):
        model.generate(torch.zeros(1, 2, dtype=torch.long), **args)


def test_with_max_level_is_the_same_model_with_a_capped_tree():
    torch.manual_seed(0)
    model = LMN(LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2)).double().train()
    capped = model.with_max_level(3)
    assert capped.config.max_level == 3 and model.config.max_level is None
    assert capped.training and next(capped.parameters()).dtype == torch.float64
    idx = torch.randint(0, 11, (2, 40))
    with torch.no_grad():
        a, b = model.eval()(idx), capped.eval()(idx)
    assert torch.equal(a[:, :15], b[:, :15])  # up to 2**4 - 1 tokens no position reads level 4
    assert not torch.allclose(a[:, 16:], b[:, 16:])
    fresh = LMN(LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, max_level=3)).double().eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(idx), b)
    with pytest.raises(ValueError, match="max_level"):
        model.with_max_level(0)
