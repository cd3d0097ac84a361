"""The S4D peer (lmn.baselines.s4d): its forms -- the convolution by FFT and directly, prefill
in chunks, the recurrent step -- equal a plain loop over time written here from the paper's
equations (the full N-dimensional state with its conjugate modes, ZOH-discretised), logits
and gradients; the discretisation equals the matrix exponential of the ODE; the initialisations
are the paper's; and the kind runs in `lmn train`, `lmn generate`, `lmn probe`, `lmn bench decode`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmn.baselines.s4d import S4D, S4DConfig
from lmn.kinds import get_kind

TINY = dict(vocab_size=11, d_model=6, n_layers=2, d_state=8)


def build(seed=0, dtype=torch.float64, **changes):
    """A small model whose SSM matters: logits of order 1, modes that decay at different
    rates within a test's length, and nonzero D."""
    torch.manual_seed(seed)
    model = S4D(S4DConfig(**{**TINY, **changes})).to(dtype)
    with torch.no_grad():
        model.embed.weight.normal_(0.0, 1.0)
        for block in model.layers:
            m = block.mixer
            m.log_dt.uniform_(math.log(0.05), math.log(0.5))
            m.log_A_real.uniform_(-1.5, 0.5)
            m.A_imag.mul_(torch.empty_like(m.A_imag).uniform_(0.5, 1.5))
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.normal_(0.0, 0.3)
    return model


def oracle(model: S4D, idx, skip_ssm=False):
    """The model's logits from the equations, one time step at a time, with all N modes:
    the N/2 of the parameters and their complex conjugates (so y needs no "2 Re")."""
    h = model.embed(idx)
    for block in model.layers:
        m = block.mixer
        u = block.norm(h)  # (B, T, H)
        A = torch.complex(-torch.exp(m.log_A_real), m.A_imag)
        A = torch.cat([A, A.conj()], dim=-1)  # (H, N)
        C = torch.complex(m.C[..., 0], m.C[..., 1])
        C = torch.cat([C, C.conj()], dim=-1)
        B = torch.ones_like(A)
        dt = torch.exp(m.log_dt)[:, None]
        A_bar = torch.exp(dt * A)
        B_bar = (A_bar - 1) / A * B  # ZOH: (dt A)^-1 (exp(dt A) - 1) dt B
        x = torch.zeros(idx.shape[0], *A.shape, dtype=A.dtype)
        ys = []
        for t in range(idx.shape[1]):
            x = A_bar * x + B_bar * u[:, t, :, None]
            y = (C * x).sum(-1)
            assert y.imag.abs().max() < 1e-6 * (1 + y.real.abs().max())  # conjugate pairs: a real output
            ys.append(y.real + m.D * u[:, t])
        y = torch.stack(ys, dim=1)
        if skip_ssm:
            y = m.D * u
        h = h + F.glu(m.out_proj(F.gelu(y)), dim=-1)
        if block.mlp is not None:
            h = h + block.mlp(block.mlp_norm(h))
    return F.linear(model.norm_f(h), model.embed.weight)


def test_zoh_is_the_exact_solution_of_the_ode():
    """[[A_bar, B_bar], [0, 1]] = exp(dt [[A, B], [0, 0]]) (Van Loan): x after dt with u held."""
    model = build()
    m = model.layers[0].mixer
    _, A_bar, B_bar = m.discrete()
    A = torch.complex(-torch.exp(m.log_A_real), m.A_imag)
    dt = torch.exp(m.log_dt)
    for h in range(A.shape[0]):
        for n in range(A.shape[1]):
            M = torch.zeros(2, 2, dtype=A.dtype)
            M[0, 0], M[0, 1] = A[h, n] * dt[h], dt[h]  # B = 1
            E = torch.linalg.matrix_exp(M)
            assert abs(E[0, 0] - A_bar[h, n]) < 1e-12 and abs(E[0, 1] - B_bar[h, n]) < 1e-12


def test_the_initialisations_are_the_papers():
    cfg = S4DConfig(d_model=5, d_state=8)
    torch.manual_seed(0)
    m = S4D(cfg).layers[0].mixer
    n = torch.arange(4, dtype=torch.float32)
    assert torch.allclose(-torch.exp(m.log_A_real), torch.full((5, 4), -0.5))
    assert torch.allclose(m.A_imag, (math.pi * n).expand(5, 4))  # S4D-Lin: pi n
    inv = S4D(S4DConfig(d_model=5, d_state=8, init="inv")).layers[0].mixer
    assert torch.allclose(inv.A_imag, (8 / math.pi * (8 / (2 * n + 1) - 1)).expand(5, 4))  # S4D-Inv
    wide = S4D(S4DConfig(d_model=512, n_layers=1, d_state=64)).layers[0].mixer
    dt = torch.exp(wide.log_dt)
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1 and dt.min() < 2e-3 and dt.max() > 5e-2
    assert abs(torch.log(dt).mean() - (math.log(1e-3) + math.log(1e-1)) / 2) < 0.3  # log-uniform
    assert abs(wide.C.pow(2).sum(-1).mean() - 1.0) < 0.05  # complex normal of variance 1


@pytest.mark.parametrize("T", [1, 2, 7, 21, 33])
@pytest.mark.parametrize("changes", [{}, {"init": "inv", "mlp_ratio": 2}], ids=["lin", "inv-mlp"])
def test_every_form_equals_the_loop(T, changes):
    model = build(**changes)
    model.config.direct_max = 8  # T 21 and 33 take the FFT under "conv"
    idx = torch.randint(11, (2, T))
    with torch.no_grad():
        want = oracle(model, idx)
        got = {form: model(idx, form=form) for form in ("conv", "fft", "direct", "recurrent")}
        got["prefill"] = model.prefill(idx, max_chunk=5)[0]
        if T > 1:  # the SSM is under test: without it the logits differ
            assert (oracle(model, idx, skip_ssm=True) - want).abs().max() > 1e-2
    for name, logits in got.items():
        assert logits.shape == (2, T, 11) and (logits - want).abs().max() < 1e-10, name


@pytest.mark.parametrize("split, max_chunk", [(7, 4), (16, 16), (1, 1), (13, 1024)])
def test_prefill_then_steps_continues_the_stream(split, max_chunk):
    model = build(dtype=torch.float32)
    idx = torch.randint(11, (3, 29))
    with torch.no_grad():
        full = model(idx)
        want = oracle(model.double(), idx).float()
        model.float()
        head, state = model.prefill(idx[:, :split], max_chunk=max_chunk)
        rest, state = model.prefill(idx[:, split:-3], state, max_chunk=max_chunk)
        steps = [model.step(idx[:, t], state)[0] for t in range(26, 29)]
    got = torch.cat([head, rest, torch.stack(steps, dim=1)], dim=1)
    assert (full - want).abs().max() < 1e-5 and (got - want).abs().max() < 1e-5
    assert state.pos == 29 and state.layers[0].dtype == torch.complex64
    assert state.nbytes == get_kind("s4d").state_bytes(model.config.to_dict(), 29) * 3 == 3 * 2 * 6 * 4 * 8


def test_gradients_of_every_form_equal_the_loop():
    model = build(mlp_ratio=1)
    idx = torch.randint(11, (2, 19))
    target = torch.randint(11, (2, 19))

    def grads(fn):
        model.zero_grad()
        F.cross_entropy(fn().flatten(0, 1), target.flatten()).backward()
        return [p.grad.clone() for p in model.parameters()]

    want = grads(lambda: oracle(model, idx))
    got = {form: grads(lambda: model(idx, form=form)) for form in ("fft", "direct", "recurrent")}

    def prefill_then_steps():
        head, state = model.prefill(idx[:, :5])
        mid, state = model.prefill(idx[:, 5:16], state, max_chunk=4)
        return torch.cat([head, mid, *(model.step(idx[:, t], state)[0][:, None] for t in range(16, 19))], dim=1)

    got["prefill-steps"] = grads(prefill_then_steps)
    model.gradient_checkpointing = True
    got["checkpointed"] = grads(lambda: model(idx))
    for form, gs in got.items():
        assert all((g - w).abs().max() < 1e-10 for g, w in zip(gs, want)), form
    assert all(w.abs().max() > 0 for w in want)  # every parameter is used


def test_the_kind_is_registered_at_the_paper_budget():
    kind = get_kind("s4d")
    model = kind.build(kind.size_config("paper"))
    assert model.num_parameters() == 71_360  # LMN 71,489
    assert kind.build(kind.size_config("large")).num_parameters() == 8_450_012  # LMN 8,449,089
    assert kind.state_bytes(kind.size_config("paper"), 1) == kind.state_bytes(kind.size_config("paper"), 10**6) == 65_536
    for bad, message in (({"d_state": 7}, "d_state must be even"), ({"init": "legs"}, "init must be one of"),
                         ({"dt_min": 0.2}, "0 < dt_min <= dt_max"), ({"mlp_ratio": -1}, "mlp_ratio must be")):
        with pytest.raises(ValueError, match=message):
            S4DConfig(**bad)
    with pytest.raises(ValueError, match="form must be one of"):
        model(torch.zeros(1, 3, dtype=torch.long), form="scan")
    with pytest.raises(ValueError, match="outside"):
        model(torch.full((1, 3), 65))
    with pytest.raises(ValueError, match="outside"):
        model.step(torch.full((1,), 65), model.init_state())
    with pytest.raises(ValueError, match=r"a \(batch,\) tensor"):
        model.step(torch.zeros(1, 1, dtype=torch.long), model.init_state())


def test_lmn_train_then_generate_streams_it(tmp_path, capsys):
    from tests.lmn_testdata import run_cli, small_corpus

    run = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--model", "s4d", "--data", small_corpus(tmp_path),
                             "--out", run, "--max-iters", 2, "--eval-interval", 2, "--eval-iters", 1,
                             "--block-size", 16, "--batch-size", 2, "--no-whole-val", "--gradient-checkpointing")
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["model_config"]["d_model"] == 16  # the tiny size
    texts = []
    for _ in range(2):
        status, out, _ = run_cli(capsys, "generate", "--checkpoint", run, "--prompt", "Th", "--tokens", 12, "--seed", 3)
        assert status == 0
        texts.append(out)
    assert texts[0] == texts[1] and len(texts[0].rstrip("\n")) == 14 and texts[0].startswith("Th")
    status, _, err = run_cli(capsys, "generate", "--checkpoint", run, "--prompt", "Th", "--tokens", 2, "--native")
    assert status == 2 and "--native" in err and len(err.strip().splitlines()) == 1


def test_lmn_probe_runs_it(tmp_path):
    from lmn.cli import main

    spec = "s4d:d_model=8,n_layers=1,d_state=4"
    assert main(["probe", "mqar", "--model", spec, "--cell", "block_size=16,pairs=2", "--task-opt", "vocab=16",
                 "--task-opt", "n_test=8", "--steps", "2", "--batch-size", "4", "--eval-iters", "1", "--lrs", "1e-3",
                 "--seeds", "1", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]) == 0
    doc = json.loads((tmp_path / "out" / "mqar.json").read_text())
    assert len(doc["runs"]) == 1 and "accuracy" in doc["runs"][0]["test"]
    (state,) = doc["state"].values()
    assert state["state_bytes"] == state["state_bytes_predicted"] == 8 * 1 * 8 * 2


def test_lmn_bench_decode_runs_it(tmp_path):
    """One tiny point per position through `lmn bench decode` (a functional check; no timing is read)."""
    from lmn.cli import main

    out = tmp_path / "b"
    assert main(["bench", "decode", "--models", "s4d", "--sizes", "paper", "--positions", "16,64", "--repeats", "1",
                 "--warmup", "1", "--out", str(out), "--no-plots"]) == 0
    doc = json.loads((out / "decode.json").read_text())
    assert all(p["status"] == "ok" for p in doc["points"]), doc["points"]
    assert {p["state_bytes"] for p in doc["points"]} == {65_536}
    assert doc["models"]["paper"]["s4d"]["params"] == 71_360
