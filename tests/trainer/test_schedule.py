"""The trainer's nanoGPT-style knobs (issue 13, item 4): learning-rate schedule, AdamW betas,
which parameters decay, gradient clipping, and dropout in LMN and GPT-2 -- and that none of
them breaks what the trainer promises (resumed runs take the same steps; gradient
checkpointing computes the same gradients; every inference form still equals the
reference)."""

import math

import pytest
import torch

from lmn import LMN, LMNConfig, reference_forward
from lmn.trainer import TrainConfig, build_model, preset_config
from lmn.trainer.optim import clip_gradients, make_optimizer, param_groups
from tests.lmn_testdata import small_corpus
from tests.trainer.test_train import TINY, records, run_cli, weights, without_timing


def nanogpt_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's get_lr (train.py), restated from its definition."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (learning_rate - min_lr)


def test_cosine_schedule_is_nanogpts():
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine", warmup_iters=100, lr_decay_iters=5000, min_lr=1e-4,
                      max_iters=6000)
    for step in (0, 1, 50, 99, 100, 101, 2550, 4999, 5000, 5001, 5999):
        assert cfg.lr_at(step) == pytest.approx(nanogpt_lr(step, 1e-3, 100, 5000, 1e-4), rel=1e-12, abs=1e-15), step
    assert cfg.lr_at(99) == pytest.approx(1e-3) and cfg.lr_at(5000) == pytest.approx(1e-4)
    assert max(cfg.lr_at(s) for s in range(6000)) == pytest.approx(1e-3)
    # lr_decay_iters 0 decays over the first max_iters, fixed in the config (a resumed run
    # given more steps keeps the schedule); the constant schedule ignores the other fields
    first = TrainConfig(lr_schedule="cosine", max_iters=10, min_lr=0.0)
    assert first.lr_decay_iters == 10 and first.lr_at(10) == 0.0 and first.lr_at(9) > 0
    more = TrainConfig.from_dict({**first.to_dict(), "max_iters": 20})
    assert [more.lr_at(s) for s in range(20)] == [first.lr_at(s) for s in range(20)]
    assert {TrainConfig(lr=2e-3, warmup_iters=5, min_lr=1e-4).lr_at(s) for s in range(20)} == {2e-3}


@pytest.mark.parametrize("bad, needle", [
    ({"lr_schedule": "linear"}, "lr_schedule"), ({"decay": "some"}, "decay"), ({"warmup_iters": -1}, "warmup_iters"),
    ({"min_lr": 1.0}, "min_lr"), ({"lr_schedule": "cosine", "warmup_iters": 9, "lr_decay_iters": 5}, "warmup"), ({"grad_clip": float("nan")}, "grad_clip"), ({"beta2": 1.0}, "beta2"),
])
def test_bad_optimizer_settings_are_refused(bad, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**bad)


def test_decay_matrices_leaves_biases_and_norms_alone():
    model = build_model("lmn", {"vocab_size": 11, "d_model": 8, "n_layers": 1, "n_heads": 2})
    cfg = TrainConfig(weight_decay=0.1, decay="matrices")
    decayed, plain = param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert {names[id(p)] for p in plain["params"]} >= {"head.bias", "ln_f.weight", "blocks.0.norm1.weight"}
    assert "tok_emb.weight" in {names[id(p)] for p in decayed["params"]}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    opt = make_optimizer(model, TrainConfig(beta1=0.8, beta2=0.99))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["betas"] == (0.8, 0.99)


def test_clip_gradients_bounds_the_global_norm():
    model = torch.nn.Linear(4, 3)
    model(torch.randn(5, 4)).pow(2).sum().mul(100).backward()
    before = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    norm = clip_gradients(model, 0.5)
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(norm) == pytest.approx(float(before)) and before > 0.5
    assert float(after) == pytest.approx(0.5, rel=1e-5)
    assert clip_gradients(model, 0.0) is None


NANO = ["--lr-schedule", "cosine", "--warmup-iters", "3", "--lr-decay-iters", "8", "--min-lr", "1e-4", "--beta2", "0.99", "--decay",
        "matrices", "--weight-decay", "0.1", "--grad-clip", "0.5", "--model-opt", "dropout=0.2"]


def test_a_nanogpt_style_run_resumes_exactly_and_logs_lr_and_norm(tmp_path, capsys):
    """Schedule, clipping and dropout keep resumed runs bit-identical (the dropout masks come
    from the checkpointed random state)."""
    data = small_corpus(tmp_path)
    common = ["train", "--data", data, "--eval-interval", 3, "--ckpt-interval", 3, "--log-interval", 1, *TINY, *NANO]
    assert run_cli(*common, "--out", tmp_path / "full", "--max-iters", 8)[0] == 0
    assert run_cli(*common, "--out", tmp_path / "cut", "--max-iters", 5)[0] == 0
    assert run_cli("train", "--out", tmp_path / "cut", "--resume", "--max-iters", 8)[0] == 0
    capsys.readouterr()
    full = records(tmp_path / "full", "train")
    assert without_timing(records(tmp_path / "cut", "train")) == without_timing(full)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine", warmup_iters=3, min_lr=1e-4, lr_decay_iters=8)
    assert [r["lr"] for r in full] == pytest.approx([cfg.lr_at(s) for s in range(8)])
    assert all(r["grad_norm"] > 0 for r in full)
    # dropout is a training knob: the same run without it takes other steps
    assert run_cli(*common[:-2], "--out", tmp_path / "nodrop", "--max-iters", 8)[0] == 0
    capsys.readouterr()
    assert [r["loss"] for r in records(tmp_path / "nodrop", "train")] != [r["loss"] for r in full]


def _lmn(dropout, **kw):
    torch.manual_seed(0)
    cfg = LMNConfig(vocab_size=13, d_model=16, n_layers=2, n_heads=2, dropout=dropout, **kw)
    return LMN(cfg)


def test_lmn_dropout_acts_in_training_only_and_every_form_still_equals_the_reference():
    idx = torch.randint(0, 13, (2, 21))
    plain, dropped = _lmn(0.0), _lmn(0.3)
    dropped.load_state_dict(plain.state_dict())
    dropped.eval()
    ref = reference_forward(dropped, idx)
    torch.testing.assert_close(dropped(idx), ref, atol=1e-5, rtol=0)
    logits, state = dropped.prefill(idx[:, :13])
    for t in range(13, 21):
        step, state = dropped.step(idx[:, t], state)
        torch.testing.assert_close(step, ref[:, t], atol=1e-5, rtol=0)
    dropped.train()
    torch.manual_seed(1)
    a = dropped(idx)
    torch.manual_seed(1)
    assert torch.equal(dropped(idx), a)  # the masks come from torch's generator
    assert (a - ref).abs().max() > 1e-2
    plain.train()
    torch.testing.assert_close(plain(idx), ref, atol=1e-5, rtol=0)  # p = 0: nothing changes in training
    # a runtime knob: changed in place, not part of the architecture (states stay compatible)
    dropped.config.dropout = 0.0
    torch.testing.assert_close(dropped(idx), ref, atol=1e-5, rtol=0)
    assert "dropout" not in dropped.config.architecture()
    with pytest.raises(ValueError, match="dropout"):
        LMNConfig(dropout=1.0)


def test_gradient_checkpointing_replays_the_dropout_masks():
    idx = torch.randint(0, 13, (2, 19))
    model = _lmn(0.25)
    model.train()
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(7)
        loss = model(idx).logsumexp(-1).sum()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_gpt2_dropout_sets_its_three_rates():
    pytest.importorskip("transformers")
    model = build_model("gpt2", {"vocab_size": 11, "n_embd": 8, "n_layer": 1, "n_head": 2, "dropout": 0.2})
    hf = model.hf.config
    assert (hf.resid_pdrop, hf.embd_pdrop, hf.attn_pdrop) == (0.2, 0.2, 0.2)


def test_nanogpt_presets_match_nanogpts_setting_at_matched_size():
    pytest.importorskip("transformers")
    sizes = {}
    for name in ("lmn", "gpt2"):
        cfg = preset_config(f"nanogpt-{name}")
        assert (cfg.block_size, cfg.batch_size, cfg.lr, cfg.max_iters, cfg.min_lr, cfg.warmup_iters) == \
               (256, 64, 1e-3, 5000, 1e-4, 100)
        assert (cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.lr_schedule) == (0.99, 0.1, 1.0, "cosine")
        assert cfg.model_config["dropout"] == 0.2
        from lmn.trainer.models import resolve_model_config

        mc = resolve_model_config(name, cfg.model_config, 65, cfg.model_size)
        sizes[name] = sum(p.numel() for p in build_model(name, mc).parameters())
    assert 10_000_000 < sizes["gpt2"] < 11_000_000
    assert abs(sizes["lmn"] - sizes["gpt2"]) / sizes["gpt2"] < 0.02, sizes
