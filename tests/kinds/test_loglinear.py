"""The log-linear Mamba-2 peer (lmn.baselines.loglinear_mamba2): its forms -- the quadratic
masked one, aligned chunks, prefill in pieces, the O(log T) step -- equal a plain oracle
written here from the paper's formula (a sum over every earlier token with the Fenwick level
of each pair), logits and gradients; with every lambda equal it is transformers' Mamba-2."""

import pytest
import torch
import torch.nn.functional as F

from lmn.baselines.loglinear_mamba2 import LogLinearMamba2, LogLinearMamba2Config, level_matrix
from lmn.kinds import get_kind

TINY = dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, head_dim=4, state_size=4, conv_kernel=3)


def build(seed=0, dtype=torch.float64, **changes):
    torch.manual_seed(seed)
    model = LogLinearMamba2(LogLinearMamba2Config(**{**TINY, **changes})).to(dtype)
    with torch.no_grad():  # nonzero lambdas that differ by level, and a decay that matters
        for block in model.layers:
            block.mixer.level_scale.uniform_(0.5, 2.0)
            block.mixer.A_log.uniform_(-1.0, 1.0)
    return model


def level(t: int, s: int) -> int:
    """The Fenwick level of key s for query t (the paper's l(t, s)), by bit arithmetic."""
    return 0 if s == t else (t ^ s).bit_length()


def oracle(model: LogLinearMamba2, idx):
    """The model's logits from the formula, one (query, key) pair at a time."""
    cfg = model.config
    H, G, N, P = cfg.num_heads, cfg.n_groups, cfg.state_size, cfg.head_dim
    T = idx.shape[1]
    h = model.embed(idx)
    for block in model.layers:
        m = block.mixer
        u = block.norm(h)
        z, xbc, dt, dl = m.in_proj(u).split([cfg.inner, m.conv_dim, H, m.n_lambda], dim=-1)
        xbc = F.silu(F.conv1d(F.pad(xbc.transpose(1, 2), (cfg.conv_kernel - 1, 0)), m.conv1d.weight,
                              m.conv1d.bias, groups=m.conv_dim)).transpose(1, 2)
        x, Bm, Cm = xbc.split([cfg.inner, G * N, G * N], dim=-1)
        dt = F.softplus(dt + m.dt_bias)
        a = dt * -torch.exp(m.A_log)
        lam = F.softplus(dl.reshape(*dl.shape[:2], cfg.lambda_groups, cfg.num_levels) * m.level_scale)
        ys = []
        for t in range(T):
            head_out = []
            for hd in range(H):
                g = hd // (H // G)
                lg = hd // (H // cfg.lambda_groups)
                acc = x[:, t, hd * P:(hd + 1) * P] * m.D[hd]
                for s in range(t + 1):
                    decay = torch.exp(a[:, s + 1:t + 1, hd].sum(-1))
                    weight = lam[:, t, lg, min(level(t, s), cfg.num_levels - 1)]
                    score = (Cm[:, t, g * N:(g + 1) * N] * Bm[:, s, g * N:(g + 1) * N]).sum(-1)
                    acc = acc + (weight * decay * score * dt[:, s, hd])[:, None] * x[:, s, hd * P:(hd + 1) * P]
                head_out.append(acc)
            ys.append(torch.cat(head_out, dim=-1))
        y = torch.stack(ys, dim=1)
        h = h + m.out_proj(m.norm(y, z))
    return F.linear(model.norm_f(h), model.embed.weight)


def test_the_level_function_is_the_fenwick_partition():
    # the prefix [0, t) splits into one bucket per set bit of t, the most recent the smallest
    for t in range(1, 70):
        buckets = {}
        for s in range(t):
            buckets.setdefault(level(t, s), []).append(s)
        bits = [b for b in range(t.bit_length()) if t >> b & 1]
        assert sorted(buckets) == [b + 1 for b in bits]
        for b in bits:
            assert len(buckets[b + 1]) == 1 << b and buckets[b + 1] == list(range(buckets[b + 1][0], buckets[b + 1][0] + (1 << b)))
    m = level_matrix(13, 4)
    assert [[int(m[i, j]) for j in range(i + 1)] for i in (0, 5, 12)] == [
        [0], [3, 3, 3, 3, 1, 0], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0]]  # levels >= 3 share the last weight


@pytest.mark.parametrize("changes", [{}, {"lambda_per_head": True}, {"n_groups": 2, "num_levels": 3}],
                         ids=["shared", "per-head", "groups-2-levels-3"])
def test_every_form_equals_the_oracle(changes):
    model = build(**changes)
    idx = torch.randint(11, (2, 21))
    with torch.no_grad():
        want = oracle(model, idx)
        forms = {"quadratic": model(idx, form="quadratic"), "step": model(idx, form="step")}
        for chunk in (1, 4, 8):
            model.config.chunk_size = chunk
            forms[f"chunk-{chunk}"] = model(idx)
    for name, got in forms.items():
        assert (got - want).abs().max() < 1e-10, name


@pytest.mark.parametrize("split, max_chunk", [(7, 4), (16, 16), (1, 1), (13, 1024)])
def test_prefill_in_pieces_then_steps_continues_the_stream(split, max_chunk):
    model = build(dtype=torch.float32)
    idx = torch.randint(11, (3, 29))
    with torch.no_grad():
        full = model(idx, form="quadratic")
        head, state = model.prefill(idx[:, :split], max_chunk=max_chunk)
        rest, state = model.prefill(idx[:, split:-3], state, max_chunk=max_chunk)
        steps = [model.step(idx[:, t], state)[0] for t in range(26, 29)]
    got = torch.cat([head, rest, torch.stack(steps, dim=1)], dim=1)
    assert (got - full).abs().max() < 1e-5
    # O(log T) state: one bucket per set bit of the position (29 = 11101b), predicted exactly
    assert [b is not None for b in state.layers[0].buckets] == [True, False, True, True, True]
    assert state.nbytes == get_kind("loglinear-mamba2").state_bytes(model.config.to_dict(), 29) * 3


def test_gradients_of_every_form_agree():
    model = build()
    idx = torch.randint(11, (2, 19))
    target = torch.randint(11, (2, 19))
    grads = {}
    for form, chunk in (("quadratic", 256), ("chunked", 4), ("step", 256)):
        model.zero_grad()
        model.config.chunk_size = chunk
        F.cross_entropy(model(idx, form=form).flatten(0, 1), target.flatten()).backward()
        grads[form] = [p.grad.clone() for p in model.parameters()]
    model.config.chunk_size = 4
    model.zero_grad()
    model.gradient_checkpointing = True
    F.cross_entropy(model(idx).flatten(0, 1), target.flatten()).backward()
    grads["checkpointed"] = [p.grad.clone() for p in model.parameters()]
    for form, gs in grads.items():
        assert all((g - w).abs().max() < 1e-10 for g, w in zip(gs, grads["quadratic"])), form
    assert all(g.abs().max() > 0 for g in grads["quadratic"])  # every parameter is used


def test_with_equal_lambdas_it_is_transformers_mamba2():
    """dl rows zero -> lambda = softplus(0) for every level: Mamba-2 scaled by ln 2, which the
    gated RMSNorm removes exactly when eps = 0 and D = 0."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(vocab_size=11, hidden_size=16, num_hidden_layers=2, head_dim=8, state_size=8, conv_kernel=4)
    torch.manual_seed(0)
    ours = LogLinearMamba2(LogLinearMamba2Config(**cfg, norm_eps=0.0)).double()
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=11, hidden_size=16, num_hidden_layers=2, state_size=8, expand=2, head_dim=8, num_heads=4,
        n_groups=1, conv_kernel=4, chunk_size=8, tie_word_embeddings=True, layer_norm_epsilon=0.0)).double()
    with torch.no_grad():
        hf.backbone.embeddings.weight.copy_(ours.embed.weight)
        hf.backbone.norm_f.weight.copy_(ours.norm_f.weight)
        for mine, theirs in zip(ours.layers, hf.backbone.layers):
            m, t = mine.mixer, theirs.mixer
            width = t.in_proj.weight.shape[0]
            m.in_proj.weight[width:] = 0.0  # the lambda rows
            t.in_proj.weight.copy_(m.in_proj.weight[:width])
            for name in ("conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "norm.weight", "out_proj.weight"):
                t.get_parameter(name).copy_(m.get_parameter(name))
            m.D.zero_()
            t.D.zero_()
            theirs.norm.weight.copy_(mine.norm.weight)
        idx = torch.randint(11, (2, 23))
        want = hf(input_ids=idx, use_cache=False).logits
        got = ours(idx)
    assert want.dtype == torch.float32  # transformers computes parts of its scan (A, the logits) in float32
    assert (got - want).abs().max() < 1e-5


def test_the_kind_is_registered_at_the_paper_budget():
    kind = get_kind("loglinear-mamba2")
    model = kind.build(kind.size_config("paper"))
    assert model.num_parameters() == 72_544  # Mamba-2 70,192 + 12 lambda rows and scales per layer
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        LogLinearMamba2Config(chunk_size=48)
    with pytest.raises(ValueError, match="form must be one of"):
        model(torch.zeros(1, 3, dtype=torch.long), form="scan")
    with pytest.raises(ValueError, match="outside"):
        model(torch.full((1, 3), 65))


def test_lmn_train_then_generate_streams_it(tmp_path, capsys):
    from tests.lmn_testdata import run_cli, small_corpus

    run = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--model", "loglinear-mamba2",
                             "--data", small_corpus(tmp_path), "--out", run, "--max-iters", 2, "--eval-interval", 2,
                             "--eval-iters", 1, "--block-size", 16, "--batch-size", 2, "--no-whole-val")
    assert status == 0, err
    texts = []
    for _ in range(2):
        status, out, _ = run_cli(capsys, "generate", "--checkpoint", run, "--prompt", "Th", "--tokens", 12, "--seed", 3)
        assert status == 0
        texts.append(out)
    assert texts[0] == texts[1] and len(texts[0].rstrip("\n")) == 14 and texts[0].startswith("Th")
    for extra, needle in ((["--native"], "--native runs an LMN's C step"),
                          (["--max-level", "2"], "--max-level caps an LMN's tree")):
        status, _, err = run_cli(capsys, "generate", "--checkpoint", run, "--prompt", "Th", "--tokens", 2, *extra)
        assert status == 2 and needle in err and len(err.strip().splitlines()) == 1
