"""Bad input and missing pieces end in one clear line on stderr, exit status 2, and nothing
written (issue 10): each case a new user ran into."""

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from lmn.trainer import preset_config, train
from tests.lmn_testdata import REPO, one_line_error, run_cli

TINY = dict(max_iters=2, eval_interval=2, eval_iters=1, block_size=16, batch_size=2, whole_val=False,
            model_config={"d_model": 8, "n_layers": 1})
TEXT = "to be, or not to be: that is the question.\nwhether 'tis nobler in the mind to suffer\n" * 40


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def run(tmp_path, corpus):
    cfg = preset_config("smoke", data=str(corpus), out_dir=str(tmp_path / "run"), **TINY)
    train(cfg, stream=open(os.devnull, "w"))
    return Path(cfg.out_dir)


def test_version(capsys):
    from lmn import __version__

    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and out.strip() == f"lmn {__version__}"


def test_resume_with_a_changed_corpus_says_the_corpus_differs(run, corpus, capsys):
    corpus.write_text(TEXT + "XZ", encoding="utf-8")  # two new characters: another vocabulary too
    before = snapshot(run)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 4)
    one_line_error(status, err, "corpus differs")
    assert "vocab_size" not in err
    assert snapshot(run) == before


def test_resume_into_a_directory_with_someone_elses_config(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    status, _, err = run_cli(capsys, "train", "--out", other, "--resume")
    one_line_error(status, err, str(other), "not the config of an lmn run")
    status, _, err = run_cli(capsys, "train", "--out", tmp_path / "absent", "--resume")
    one_line_error(status, err, "nothing to resume")
    assert not (tmp_path / "absent").exists()


def test_a_corpus_of_one_character_is_refused(tmp_path, capsys):
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"\0" * 100_000)
    status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--data", nul, "--out", tmp_path / "r")
    one_line_error(status, err, "single distinct character", "at least 2")
    assert not (tmp_path / "r").exists()


def test_smoke_preset_with_another_model_kind(tmp_path, corpus, capsys):
    pytest.importorskip("transformers")
    status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--model", "gpt2", "--data", corpus, "--out",
                             tmp_path / "g", "--max-iters", 1, "--block-size", 16, "--eval-iters", 1, "--no-whole-val")
    assert status == 0, err


def test_generate_errors(run, capsys, tmp_path):
    status, _, err = run_cli(capsys, "generate", "--checkpoint", REPO / "README.md")
    one_line_error(status, err, "README.md is a file, not a run directory")
    status, _, err = run_cli(capsys, "generate", "--checkpoint", run, "--temperature", "1e-45")
    one_line_error(status, err, "--temperature", "too small", "0 for greedy")
    status, out, err = run_cli(capsys, "generate", "--checkpoint", run, "--temperature", "1e-6", "--tokens", 5)
    assert status == 0, err
    if not torch.cuda.is_available():
        status, _, err = run_cli(capsys, "generate", "--checkpoint", run, "--device", "cuda")
        one_line_error(status, err, "CUDA is not available", "--device cpu")
        status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--device", "cuda", "--out", tmp_path / "c")
        one_line_error(status, err, "CUDA is not available", "--device cpu")
        assert not (tmp_path / "c").exists()


def test_a_failing_compiler_is_named_with_its_message(run, tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho \"fakecc: error: unknown argument '-O3'\" >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("LMN_KERNEL_CACHE", str(tmp_path / "kernels"))
    import lmn.native

    monkeypatch.setattr(lmn.native, "_LIBS", {})
    status, out, err = run_cli(capsys, "generate", "--checkpoint", run, "--native", "--tokens", 3)
    one_line_error(status, err, "fakecc: error: unknown argument '-O3'", "exit 3", "drop --native")
    assert out == ""


# ----------------------------------------------------------------------------- missing packages
@pytest.fixture
def without(monkeypatch):
    """``without("matplotlib")``: find_spec says it is not installed."""
    real = importlib.util.find_spec

    def hide(*names):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name in names else real(name, *a, **k))

    return hide


def test_train_without_safetensors_stops_before_writing(tmp_path, corpus, without, capsys):
    without("safetensors")
    status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--data", corpus, "--out", tmp_path / "r")
    one_line_error(status, err, "safetensors", "pip install 'torch-lmn[train]'")
    assert not (tmp_path / "r").exists()


def test_train_of_a_baseline_without_transformers(tmp_path, corpus, without, capsys):
    without("transformers")
    status, _, err = run_cli(capsys, "train", "--preset", "smoke", "--model", "gpt2", "--data", corpus,
                             "--out", tmp_path / "r")
    one_line_error(status, err, "transformers", "pip install 'torch-lmn[train]'")
    assert not (tmp_path / "r").exists()


def test_plot_without_matplotlib(run, tmp_path, without, capsys):
    without("matplotlib")
    status, _, err = run_cli(capsys, "plot", run, "-o", tmp_path / "c.png")
    one_line_error(status, err, "matplotlib", "pip install 'torch-lmn[")
    assert not (tmp_path / "c.png").exists()


# ----------------------------------------------------------------------------- bench: checked before measuring
@pytest.fixture
def no_measuring(monkeypatch):
    import lmn.bench.decode
    import lmn.bench.train

    def measured(*a, **k):
        raise AssertionError("measured before checking its output")

    monkeypatch.setattr(lmn.bench.decode, "run_decode", measured)
    monkeypatch.setattr(lmn.bench.train, "run_train", measured)


def test_bench_output_is_checked_before_measuring(tmp_path, no_measuring, without, capsys):
    afile = tmp_path / "file"
    afile.write_text("mine")
    for bench in ("decode", "train"):
        status, _, err = run_cli(capsys, "bench", bench, "--quick", "--out", afile)
        one_line_error(status, err, str(afile), "not a directory")
        status, _, err = run_cli(capsys, "bench", bench, "--quick", "--out", afile / "sub")
        one_line_error(status, err, "is a file")
        status, _, err = run_cli(capsys, "bench", bench, "--quick", "--out", tmp_path / "b", "--name", "../../x")
        one_line_error(status, err, "--name", "plain file name")
    assert afile.read_text() == "mine" and not (tmp_path / "b").exists()
    without("matplotlib")
    status, _, err = run_cli(capsys, "bench", "decode", "--quick", "--models", "lmn", "--out", tmp_path / "b")
    one_line_error(status, err, "matplotlib", "--no-plots", "pip install 'torch-lmn[bench]'")
    without("matplotlib", "transformers")
    status, _, err = run_cli(capsys, "bench", "train", "--quick", "--models", "gpt2", "--no-plots",
                             "--out", tmp_path / "b")
    one_line_error(status, err, "transformers", "gpt2")
    assert not (tmp_path / "b").exists()
