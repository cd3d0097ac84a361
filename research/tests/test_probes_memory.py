"""The probes of trained runs (research.context, levels, sequential) on the committed
Table 1 LMN, with tiny settings: what they measure is what they say."""

import json
import os
from pathlib import Path

import pytest
import torch

from lmn.trainer import load_run

RUN = Path(__file__).resolve().parents[2] / "docs" / "results" / "runs" / "lmn-s1337"
needs_data = pytest.mark.skipif(
    not (Path(os.environ.get("LMN_DATA_DIR", "")) / "tinyshakespeare.txt").exists(),
    reason="needs tinyshakespeare.txt under $LMN_DATA_DIR",
)


@needs_data
def test_context_probe_scores_the_same_blocks_and_a_cap_changes_only_long_contexts(tmp_path):
    from research.context import main

    out = tmp_path / "ctx"
    assert main([str(RUN), "--out", str(out), "--blocks", "2", "--contexts", "0,64,2048", "--window", "128",
                 "--lmn-max-level", "9"]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    plain, capped = doc["runs"]
    assert plain["same_tokens"]["block_starts"] == capped["same_tokens"]["block_starts"]
    # below 2**10 tokens a tree of 9 levels is the whole tree: identical losses
    assert plain["same_tokens"]["loss"]["0"] == capped["same_tokens"]["loss"]["0"]
    assert plain["same_tokens"]["loss"]["64"] == capped["same_tokens"]["loss"]["64"]
    assert plain["same_tokens"]["loss"]["2048"] != capped["same_tokens"]["loss"]["2048"]
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()


@needs_data
def test_level_mass_is_a_distribution_over_levels():
    from research.levels import level_mass

    model, tokenizer, _ = load_run(RUN)
    idx = torch.as_tensor(tokenizer.encode("ROMEO: " * 20))[None, :100]
    mass, names, readable = level_mass(model, idx)
    assert names[0] == -1 and names[1:] == list(range(1, 7))  # 100 tokens: levels 1..6
    assert torch.allclose(mass.sum(-1), torch.ones(mass.shape[:2]), atol=1e-5)
    assert readable[0] == 1 and readable[-1] == pytest.approx((100 - 63) / 100)


@needs_data
def test_sequential_fine_tuning_carries_the_state(monkeypatch):
    from research import sequential

    model, tokenizer, doc = load_run(RUN)
    ids = torch.arange(2000) % model.config.vocab_size
    seen = []
    real = model.forward

    def spy(idx, return_state=False, state=None):
        seen.append(None if state is None else state.pos)
        return real(idx, return_state=return_state, state=state)

    monkeypatch.setattr(model, "forward", spy)
    log = sequential.fine_tune(model, ids, "sequential", steps=3, batch=2, block=16, lr=1e-4, seed=0, log_every=1)
    assert len(log) == 3
    # each window continues the previous one's state (a stream at 0 is prefilled afresh inside)
    assert [pos for pos in seen if pos is not None] == [0, 16, 32]
    streams = sequential.Streams(ids, 2, 16)
    x0, y0, fresh = streams.window(0)
    x1, _, _ = streams.window(1)
    assert fresh and torch.equal(x1[:, 0], y0[:, -1])  # consecutive windows of each stream


@needs_data
def test_sequential_from_scratch_trains_a_fresh_model_of_the_run(tmp_path):
    from research import sequential

    out = tmp_path / "scratch"
    assert sequential.main([str(RUN), "--from-scratch", "--modes", "mixed", "--steps", "2", "--block", "32",
                            "--batch", "2", "--eval-batches", "1", "--blocks", "1", "--contexts", "0,64",
                            "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [arm["mode"] for arm in doc["arms"]] == ["mixed"]  # no "as trained" arm from scratch
    # two steps from a fresh init: near the uniform loss over 65 characters, not the trained run's ~1.8
    assert doc["arms"][0]["val_estimate"] > 3.5
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# Training from scratch") and "Trained from scratch" in md
    with pytest.raises(SystemExit):
        sequential.main([str(RUN), "--modes", "random,sideways", "--out", str(tmp_path / "x")])


def test_streams_restart_at_fresh_offsets_every_n_windows():
    from research.sequential import Streams

    ids = torch.arange(10_000)
    plain = Streams(ids, 2, 16)
    x, y, fresh = plain.window(0)
    assert fresh and x[1, 0] == plain.length and torch.equal(y[:, :-1], x[:, 1:])
    s = Streams(ids, 2, 16, restart=3, seed=5)
    wins = [s.window(i) for i in range(7)]
    assert [w[2] for w in wins] == [True, False, False, True, False, False, True]
    for i in (1, 2, 4, 5):  # inside a pass: each window continues the previous one
        assert torch.equal(wins[i][0][:, 0], wins[i - 1][1][:, -1])
    assert not torch.equal(wins[3][0][:, 0], wins[2][1][:, -1])  # a new pass starts elsewhere
    assert torch.equal(Streams(ids, 2, 16, restart=3, seed=5).window(4)[0], wins[4][0])  # seeded
    with pytest.raises(ValueError):
        Streams(ids, 2, 16, restart=10_000)


def test_long_mode_keeps_the_tokens_per_step_and_reads_longer_windows(monkeypatch):
    from research import sequential

    assert sequential.long_lengths(512, 16, 8192) == [(1024, 8), (2048, 4), (4096, 2), (8192, 1)]
    with pytest.raises(ValueError, match="at least 2 x --block"):
        sequential.long_lengths(512, 16, 512)
    with pytest.raises(ValueError, match="do not split"):
        sequential.long_lengths(512, 3, 2048)
    model = torch.nn.Module()  # a stand-in LM: records the window shapes it is given
    model.w = torch.nn.Parameter(torch.zeros(7))
    shapes = []

    def forward(x, state=None):
        shapes.append(tuple(x.shape))
        return model.w.expand(*x.shape, 7)

    monkeypatch.setattr(model, "forward", forward)
    sequential.fine_tune(model, torch.arange(5000) % 7, "long", steps=40, batch=4, block=16, lr=1e-3, seed=0,
                         max_window=64)
    assert all(s == (4, 16) for s in shapes[0::2])  # even steps: the random arm's windows
    assert set(shapes[1::2]) == {(2, 32), (1, 64)}  # odd steps: longer, the same 64 tokens


@needs_data
def test_saved_arms_load_as_runs(tmp_path):
    from research import sequential

    out, saved = tmp_path / "long", tmp_path / "arms"
    assert sequential.main([str(RUN), "--from-scratch", "--modes", "long", "--steps", "2", "--block", "32",
                            "--batch", "2", "--max-window", "64", "--eval-batches", "1", "--blocks", "1",
                            "--contexts", "0,64", "--save-dir", str(saved), "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["arms"][0]["saved"] == str(saved / "long-s1337")
    model, tokenizer, _ = load_run(saved / "long-s1337")
    ids = torch.as_tensor(tokenizer.encode("ROMEO: " * 20))
    again = sequential.estimate(model, ids, 32, 1, 2, doc["settings"]["seed"])
    assert again > 3.5  # two steps from scratch, not the committed run's weights
    assert "long windows every other step (to 64)" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        sequential.main([str(RUN), "--modes", "long", "--max-window", "16", "--block", "32", "--out", str(tmp_path / "y")])
    before = (saved / "long-s1337" / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit):  # a saved arm is never overwritten
        sequential.main([str(RUN), "--from-scratch", "--modes", "long", "--steps", "2", "--block", "32", "--batch", "2",
                         "--max-window", "64", "--save-dir", str(saved), "--out", str(tmp_path / "z")])
    assert (saved / "long-s1337" / "model.safetensors").read_bytes() == before


@needs_data
def test_stream_profile_splits_the_mass_by_levels_seen_in_training(tmp_path):
    from research import levels

    out = tmp_path / "lv"
    assert levels.main([str(RUN), "--out", str(out), "--windows", "2", "--stream", "2048"]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    st = doc["stream"]
    assert st["levels"] == [-1] + list(range(1, 12))  # 2,048 characters: levels 1..11
    assert len(st["rms"]) == 4 and len(st["rms"][0]) == 11
    assert [b["positions"] for b in st["buckets"]] == [[1, 512], [513, 2048]]
    for b in st["buckets"]:  # the three groups share out all of the mass
        total = [sum(g[l] for g in b["groups"].values()) for l in range(4)]
        assert total == pytest.approx([1.0] * 4, abs=1e-5)
    first, later = st["buckets"]
    assert all(v == 0 for v in first["groups"]["L10+ (never in training)"])  # a 512 window has levels <= 9
    assert all(v > 0 for v in later["groups"]["L10+ (never in training)"])
    assert st["spread"][0][-1] is None  # one node at the top level: no spread
    assert "One stream of 2,048 validation characters" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        levels.main([str(RUN), "--out", str(out), "--stream", "10000000"])
    # a model trained on longer windows: levels up to 10 count as seen
    assert levels.main([str(RUN), "--out", str(out), "--windows", "2", "--stream", "2048", "--train-window", "1024"]) == 0
    groups = json.loads(out.with_suffix(".json").read_text())["stream"]["buckets"][1]["groups"]
    assert list(groups) == ["token + L1", "L2-L10", "L11+ (never in training)"]
