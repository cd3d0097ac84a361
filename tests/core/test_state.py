"""The streaming state: O(log t) size by formula, save/load/resume, devices, masking."""

import pytest
import torch

from lmn import LMN, LMNConfig, LMNState, reference_forward, state_nbytes
from lmn.attention import ParallelRead, SingleVectorAttention
from tests.conftest import max_abs_diff
from tests.core.test_parity import small_model


def _stream(model, idx, state=None):
    state = state or model.init_state(idx.shape[0])
    outs = [model.step(idx[:, t], state)[0] for t in range(idx.shape[1])]
    return torch.stack(outs, dim=1), state


@pytest.mark.parametrize("kw", [dict(), dict(n_banks=3, expand=2, summarizer="conv")])
def test_state_size_matches_formula_at_powers_of_two(kw):
    cfg = LMNConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, **kw)
    model = LMN(cfg).eval()
    state = model.init_state(2)
    assert state.nbytes == 0
    with torch.no_grad():
        for pos in range(1, 2**7 + 1):
            model.step(torch.zeros(2, dtype=torch.long), state)
            if pos & (pos + 1) == 0 or pos & (pos - 1) == 0:  # 2**k - 1 and 2**k
                assert state.nbytes == state_nbytes(cfg, 2, pos), pos
                # by hand: nodes of levels 0..L plus q/v slots of levels 1..L
                L = pos.bit_length() - 1
                E = [1 + i * cfg.expand for i in range(L + 1)]
                per_layer = cfg.n_banks * sum(E) * 16 + 2 * cfg.n_banks * sum(E[1:]) * 16
                assert state.nbytes == 2 * 2 * per_layer * 4
                assert state.n_levels == L
    # prefill produces a state of the same size
    _, st = model(torch.zeros(2, 100, dtype=torch.long), return_state=True)
    assert st.nbytes == state_nbytes(cfg, 2, 100)


def test_paper_state_after_a_million_tokens_is_small():
    cfg = LMNConfig()
    assert state_nbytes(cfg, 1, 10**6) < 200_000
    # the formula is the real size: check it against a state grown to 2**20 by prefill
    model = LMN(cfg).eval()
    with torch.no_grad():
        _, st = model(torch.zeros(1, 2**14, dtype=torch.long), return_state=True)
    assert st.nbytes == state_nbytes(cfg, 1, 2**14)


def test_save_load_resume_is_exact(tmp_path):
    model = small_model(summarizer="dwsep", n_banks=3, expand=2, pos_encoding="sinusoidal")
    idx = torch.randint(0, 11, (3, 90))
    with torch.no_grad():
        full, _ = _stream(model, idx)
        _, state = _stream(model, idx[:, :45])
        state.save(tmp_path / "s.pt")
        loaded = LMNState.load(tmp_path / "s.pt", model.config)
        assert loaded.pos == 45 and loaded.batch_size == 3
        rest, _ = _stream(model, idx[:, 45:], loaded)
    assert torch.equal(rest, full[:, 45:])  # bit-exact: same ops on the same tensors


def test_load_rejects_wrong_config_and_corrupt_files(tmp_path):
    model = small_model()
    with torch.no_grad():
        _, state = _stream(model, torch.randint(0, 11, (1, 10)))
    state.save(tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"saved for another model: .*n_layers=2 \(this model: 3\)"):
        LMNState.load(tmp_path / "s.pt", LMNConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=3))
    raw = (tmp_path / "s.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="could not read"):
        LMNState.load(tmp_path / "t.pt", model.config)


def test_state_to_dtype_and_clone_branching():
    model = small_model()
    idx = torch.randint(0, 11, (2, 20))
    with torch.no_grad():
        _, state = _stream(model, idx)
        branch = state.clone()
        a, _ = model.step(idx[:, 0], state)
        b, _ = model.step(idx[:, 0], branch)
        assert torch.equal(a, b)
        assert state.pos == branch.pos == 21
        s64 = state.to(torch.float64)
        assert s64.dtype == torch.float64 and state.dtype == torch.float32


def test_zero_vectors_and_zero_scores_do_not_change_the_attended_slots():
    """The paper's code masks slots whose *value* is zero; here presence is positional."""
    cfg = LMNConfig(vocab_size=5, d_model=8, n_heads=2, n_layers=1, n_banks=2)
    model = LMN(cfg).eval()
    with torch.no_grad():
        model.tok_emb.weight[0].zero_()  # token 0: an all-zero input vector
        idx = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 0, 3, 0]])
        ref = reference_forward(model, idx)
        par = model(idx)
        assert torch.isfinite(par).all()
        assert max_abs_diff(par, ref) < 1e-5
        st, _ = model.init_state(1), None
        outs = torch.stack([model.step(idx[:, t], st)[0] for t in range(idx.shape[1])], 1)
        assert max_abs_diff(outs, ref) < 1e-5

    # exactly-zero scores (W_k = 0, b_k = 0): every present slot gets the same weight,
    # so the output is the plain mean of the present slots' values
    attn = SingleVectorAttention(cfg)
    with torch.no_grad():
        attn.k.weight.zero_()
        attn.k.bias.zero_()
        x = torch.randn(1, 12, 8)
        x[0, 3] = 0.0  # and a genuine zero vector
        levels = model.blocks[0].memory.build(x)
        out = attn(x, ParallelRead(levels, cfg.tree))
        for t in range(12):
            slots = [x[0, t]]
            for i in range(1, (t + 1).bit_length()):
                slots += list(levels[i - 1][0, :, (t + 1) // 2**i - 1, 0])
            v = attn.v(torch.stack(slots))
            want = attn.o(v.mean(0))
            assert max_abs_diff(out[0, t], want) < 1e-6, t


def test_parallel_forward_memory_is_linear_not_slots_times_d():
    """No-grad forward of the paper model at T=16384 must not materialise
    (T, slots, d) (~60 MB per copy); measured as peak RSS growth in a fresh process."""
    import subprocess
    import sys

    code = r"""
import resource, torch
torch.set_num_threads(1)
from lmn import LMN, LMNConfig
m = LMN(LMNConfig()).eval()
with torch.no_grad():
    m(torch.zeros(1, 64, dtype=torch.long))
    idx = torch.randint(0, 65, (1, 16384))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m(idx)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 64, f"peak RSS grew by {grown_mb:.1f} MB"


def test_state_of_another_model_or_dtype_is_refused_by_name(tmp_path):
    model = small_model(summarizer="linear", n_banks=2)
    with torch.no_grad():
        _, state = model(torch.randint(0, 11, (1, 20)), return_state=True)
    state.save(tmp_path / "s.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # no temporary file left
    other = LMNConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, ff_mult=2, summarizer="conv", n_banks=2)
    with pytest.raises(ValueError, match="summarizer='linear' \\(this model: 'conv'\\)"):
        LMNState.load(tmp_path / "s.pt", other)
    (tmp_path / "bad.pt").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a file written by LMNState.save") as err:
        LMNState.load(tmp_path / "bad.pt", model.config)
    assert "weights_only" not in str(err.value)
    with pytest.raises(ValueError, match="state holds torch.float64 tensors but the model computes in torch.float32"):
        model.step(torch.zeros(1, dtype=torch.long), state.to(torch.float64))
    with torch.no_grad():  # uint8 ids are ids like any other
        a = model(torch.tensor([[1, 2, 3]], dtype=torch.uint8))
        b = model(torch.tensor([[1, 2, 3]]))
    assert torch.equal(a, b)


def test_save_removes_its_temporary_file_when_the_rename_fails(tmp_path):
    model = small_model()
    state = model.init_state(1)
    target = tmp_path / "dir_in_the_way"
    target.mkdir()
    (target / "x").write_text("keep")
    with pytest.raises(OSError):
        state.save(target)  # os.replace onto a non-empty directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir_in_the_way"]


def test_config_is_frozen_after_validation():
    cfg = LMNConfig()
    with pytest.raises(AttributeError, match="n_heads cannot be changed after construction"):
        cfg.n_heads = 5
    cfg.chunk_size = 8  # a runtime knob, re-validated
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        cfg.chunk_size = 3
    assert cfg.chunk_size == 8
    for bad in (float("inf"), float("nan"), 0.0, -1e-5, "1e-5"):
        with pytest.raises(ValueError, match="norm_eps must be a finite number > 0"):
            LMNConfig(norm_eps=bad)
