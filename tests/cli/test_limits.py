"""Limits before work (issue 23): sizes are checked before anything is allocated or written.
A model's parameters are counted on the meta device (lmn.limits); sizes that cannot fit end
in one line on stderr with the estimate, exit status 2, nothing written, in seconds."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from lmn.cli import main
from lmn.kinds import get_kind, kind_names
from lmn.limits import (ENV, LAYER_FIELDS, MAX_LAYERS, check_sizes, lower_bound, memory_limit, parameter_count,
                        parse_bytes, train_estimate)
from lmn.trainer import preset_config, train

TEXT = "to be, or not to be: that is the question.\nwhether 'tis nobler in the mind to suffer\n" * 40
TINY = dict(max_iters=2, eval_interval=2, eval_iters=1, block_size=16, batch_size=2, whole_val=False,
            model_config={"d_model": 8, "n_layers": 1})
QUICK = 20  # seconds: a check, not a hang (the import of lmn and torch included)


def run_cli(capsys, *argv):
    t0 = time.perf_counter()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, err, time.perf_counter() - t0


def refused(status, err, seconds, *needles):
    """Exit status 2 in seconds, and the first line of stderr says it (the only line)."""
    assert status == 2, err
    first = err.splitlines()[0] if err else ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in first, (needle, first)
    assert seconds < QUICK, seconds


def _built(kind, config) -> int:
    torch.manual_seed(0)
    return sum(p.numel() for p in kind.build(config).parameters())


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    cfg = preset_config("smoke", data=str(root / "corpus.txt"), out_dir=str(root / "run"), **TINY)
    with open(os.devnull, "w") as null:
        train(cfg, stream=null)
    return Path(cfg.out_dir)


def copy_run(run: Path, dest: Path, **changes) -> Path:
    """A copy of ``run`` whose config.json has ``changes`` in its model config."""
    import shutil

    shutil.copytree(run, dest)
    doc = json.loads((dest / "config.json").read_text())
    doc["train"]["model_config"].update(changes)
    (dest / "config.json").write_text(json.dumps(doc))
    return dest


# ----------------------------------------------------------------------------- the estimate
def test_parameter_count_equals_the_built_model_for_every_kind():
    """Counted on the meta device, exactly what a real build has, for every kind that trains
    and each of its sizes; deep configs (more than EXACT_LAYERS) extrapolated exactly."""
    for name in kind_names("train"):
        kind = get_kind(name)
        for size in kind.sizes:
            config = kind.size_config(size)
            n = parameter_count(kind, config)
            assert n == _built(kind, config), (name, size)
            assert lower_bound(config) <= n, (name, size)
        layers = next((f for f in LAYER_FIELDS if f in config), None)
        if layers is not None:
            deep = {**kind.size_config("tiny" if "tiny" in kind.sizes else "paper"), layers: 14}
            assert parameter_count(kind, deep) == _built(kind, deep), name
    for options in ({"summarizer": "conv"}, {"summarizer": "dwsep", "stride": 3}, {"expand": 2}, {"pinned": 4},
                    {"pos_encoding": "sinusoidal"}, {"n_banks": 3, "ff_mult": 2}):
        config = get_kind("lmn").normalize(options)
        assert parameter_count("lmn", config) == _built(get_kind("lmn"), config), options


def test_counting_allocates_nothing_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    wide = parameter_count("lmn", {"vocab_size": 65, "d_model": 2**16, "n_heads": 2})  # ~1 TB if it were allocated
    deep = parameter_count("lmn", {"vocab_size": 65, "n_layers": MAX_LAYERS})
    assert time.perf_counter() - t0 < QUICK
    assert torch.equal(torch.rand(3), expected)  # the meta build drew nothing from the global RNG
    assert wide > 2**16 * 2**16 * 4 and deep > MAX_LAYERS * 32 * 32
    # past 1e13 parameters the cheap lower bound is the answer (nothing is built)
    with pytest.raises(ValueError, match="at least 4.0e18 parameters"):
        parameter_count("lmn", {"d_model": 10**9})
    with pytest.raises(ValueError, match="at least"):
        parameter_count("rwkv", {"hidden_size": 10**9})  # its init loops over the width in Python


def test_hard_bounds_before_any_build():
    with pytest.raises(ValueError, match=r"n_layers=1,000,000 is more than 10,000 layers"):
        check_sizes("lmn", {"n_layers": 10**6})
    with pytest.raises(ValueError, match="n_layer=10,000,000"):
        parameter_count("gpt2", {"n_layer": 10**7})
    with pytest.raises(ValueError, match=r"d_model must be a whole number, got 1000000000.0 \(a float"):
        check_sizes("lmn", {"d_model": 1e9})
    with pytest.raises(ValueError, match="must be an integer in"):  # the core config's own bound
        from lmn import LMNConfig

        LMNConfig(n_layers=10**7)


def test_memory_estimate_and_the_machines_limit(monkeypatch):
    config = get_kind("lmn").size_config("paper")
    small = train_estimate("lmn", config, 16, 512)
    assert small.weights == 16 * 71_489 and small.exact
    double = train_estimate("lmn", config, 32, 512)
    assert double.activations == 2 * small.activations and double.weights == small.weights
    assert train_estimate("lmn", config, 16, 512, gradient_checkpointing=True).activations < small.activations
    assert parse_bytes("24GB") == 24 * 10**9 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("8e9") == 8e9
    for bad in ("lots", "12 parsecs", "iB"):
        with pytest.raises(ValueError, match=ENV):
            parse_bytes(bad)
    limit, text = memory_limit("cpu")
    assert limit is None or limit > 2**20
    monkeypatch.setenv(ENV, "3GB")
    assert memory_limit("cpu") == (3 * 10**9, f"{ENV} allows 3.0 GB")


# ----------------------------------------------------------------------------- lmn train
def test_train_refuses_sizes_that_cannot_fit_before_writing_anything(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    common = ["train", "--preset", "smoke", "--data", corpus, "--out", out]
    status, err, s = run_cli(capsys, *common, "--model-opt", "d_model=1000000000", "--model-opt", "n_heads=2")
    refused(status, err, s, "needs at least ~", "parameters", "but this machine has", ENV)
    status, err, s = run_cli(capsys, *common, "--batch-size", 10**9)
    refused(status, err, s, "on batches of 1,000,000,000 x 64 tokens needs ~", "for activations", "--batch-size")
    status, err, s = run_cli(capsys, *common, "--task", "mqar", "--block-size", 2**20)  # (a corpus limits the text task's)
    refused(status, err, s, "x 1,048,576 tokens needs ~", "--block-size")
    status, err, s = run_cli(capsys, *common, "--model-opt", "n_layers=1000000")
    refused(status, err, s, "n_layers", "1000000")
    status, err, s = run_cli(capsys, *common, "--model-opt", "d_model=1e9")
    refused(status, err, s, "d_model must be an integer", "1000000000.0")
    status, err, s = run_cli(capsys, *common, "--model-opt", "d_model=-8")
    refused(status, err, s, "d_model must be an integer >= 1")
    assert not out.exists()


def test_train_within_the_limit_runs_and_the_limit_is_overridable(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setenv(ENV, "1MB")  # the smoke model trains in a few MB
    out = tmp_path / "run"
    status, err, s = run_cli(capsys, "train", "--preset", "smoke", "--data", corpus, "--out", out, "--max-iters", 2)
    refused(status, err, s, "needs ~", f"but {ENV} allows 1.0 MB")
    assert not out.exists()
    monkeypatch.setenv(ENV, "1GB")
    status, err, _ = run_cli(capsys, "train", "--preset", "smoke", "--data", corpus, "--out", out, "--max-iters", 2,
                             "--eval-interval", 2, "--eval-iters", 1, "--no-whole-val")
    assert status == 0, err
    monkeypatch.setenv(ENV, "plenty")
    status, err, s = run_cli(capsys, "train", "--preset", "smoke", "--data", corpus, "--out", tmp_path / "r2")
    refused(status, err, s, f"{ENV} must be a size in bytes")


# ----------------------------------------------------------------------------- loading a run
def test_generate_checks_the_config_before_building_the_model(trained, tmp_path, capsys, monkeypatch):
    deep = copy_run(trained, tmp_path / "deep", n_layers=10**6)  # hung: a million blocks were built first
    status, err, s = run_cli(capsys, "generate", "--checkpoint", deep, "--tokens", 5)
    refused(status, err, s, f"{deep / 'config.json'}", "n_layers", "1000000")
    wide = copy_run(trained, tmp_path / "wide", d_model=10**9)  # tried a 16 EB allocation
    status, err, s = run_cli(capsys, "generate", "--checkpoint", wide, "--tokens", 5)
    refused(status, err, s, f"{wide / 'config.json'} does not match checkpoint", "d_model=8 (checkpoint) vs 1000000000")
    edited = copy_run(trained, tmp_path / "edited", n_layers=3)
    status, err, s = run_cli(capsys, "generate", "--checkpoint", edited, "--tokens", 5)
    refused(status, err, s, "does not match checkpoint", "n_layers=1 (checkpoint) vs 3 (config.json)")
    monkeypatch.setenv(ENV, "1kB")  # the run itself, on a machine too small for it
    status, err, s = run_cli(capsys, "generate", "--checkpoint", trained, "--tokens", 5)
    refused(status, err, s, f"the model config in {trained / 'config.json'} needs ~", "parameters", f"{ENV} allows")
    monkeypatch.delenv(ENV)
    status, err, _ = run_cli(capsys, "generate", "--checkpoint", trained, "--tokens", 5, "--seed", 1)
    assert status == 0, err


def test_hf_config_past_the_bounds_fails_fast(trained, tmp_path):
    pytest.importorskip("transformers")
    hf = pytest.importorskip("lmn.hf")
    from transformers import AutoModelForCausalLM

    from lmn.trainer import load_run

    model, _, _ = load_run(trained)
    out = tmp_path / "hf"
    hf.LMNForCausalLM.from_lmn(model).save_pretrained(out)
    base = json.loads((out / "config.json").read_text())
    for change, needle in (({"n_layers": 10**7}, "n_layers must be an integer in [1, 10000]"),
                           ({"d_model": 2**16, "n_heads": 2}, "needs ~"),
                           ({"d_model": 1e9}, "d_model must be an integer")):
        (out / "config.json").write_text(json.dumps({**base, **change}))
        t0 = time.perf_counter()
        with pytest.raises(ValueError) as err:
            AutoModelForCausalLM.from_pretrained(out)
        assert needle in str(err.value) and time.perf_counter() - t0 < QUICK, str(err.value)
    (out / "config.json").write_text(json.dumps(base))
    assert AutoModelForCausalLM.from_pretrained(out).lmn.config.n_layers == 1
