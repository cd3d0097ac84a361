"""`lmn train`, `lmn generate`, `lmn plot`: a smoke run on Tiny Shakespeare, exact resume,
checkpoint integrity and bad input (one line on stderr, non-zero exit, nothing overwritten)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmn.cli import main
from lmn.trainer import CheckpointError, TrainConfig, preset_config, train
from tests.lmn_testdata import require_shakespeare, small_corpus

TINY = ["--model-opt", "d_model=8", "--model-opt", "n_layers=1", "--model-opt", "n_heads=2",
        "--block-size", "16", "--batch-size", "4", "--eval-iters", "2", "--no-whole-val"]


def run_cli(*argv, capsys=None):
    """``lmn ARGV`` in-process: ``(exit status, stdout, stderr)``."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr() if capsys else ("", "")
    return status, out, err


def records(run_dir, kind):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def without_timing(recs):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in recs]


def snapshot(run_dir):
    """Every file under ``run_dir`` (relative path -> bytes)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(Path(run_dir).rglob("*")) if p.is_file()}


def weights(run_dir):
    """The weights of the run's newest checkpoint."""
    from safetensors.torch import load_file

    from lmn.trainer import newest_checkpoint

    return load_file(newest_checkpoint(run_dir, need_state=True).path / "model.safetensors")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`lmn train --preset smoke` on the full shared corpus (a few seconds)."""
    data = require_shakespeare()
    out = tmp_path_factory.mktemp("runs") / "smoke"
    status = main(["train", "--preset", "smoke", "--data", str(data), "--out", str(out), "--threads", "1"])
    assert status == 0
    return out


# ----------------------------------------------------------------------------- smoke run
def test_smoke_run_learns_and_writes_its_run_dir(smoke_run):
    for name in ("lmn-run.json", "config.json", "tokenizer.json", "metrics.jsonl", "final.json"):
        assert (smoke_run / name).is_file(), name
    # the newest two checkpoints, each a complete step directory
    assert sorted(p.name for p in (smoke_run / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]
    for name in ("model.safetensors", "trainer_state.pt", "checkpoint.json"):
        assert (smoke_run / "checkpoints" / "step-00000040" / name).is_file(), name
    manifest = json.loads((smoke_run / "lmn-run.json").read_text())
    assert manifest["program"] == "lmn" and manifest["format"] == 2 and sorted(manifest["files"]) == sorted(
        ["lmn-run.json", "lmn-run.lock", "config.json", "tokenizer.json", "metrics.jsonl", "checkpoints",
         "final.json"])  # what it wrote (no best.safetensors: not --keep-best)
    assert not (smoke_run / "lmn-run.lock").exists()  # released at the end
    evals = records(smoke_run, "eval")
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # from ~ln 65 = 4.17
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 0.5
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["preset"] == "smoke" and config["corpus"]["vocab_size"] == 65
    assert config["train"]["model_config"]["vocab_size"] == 65  # fully resolved
    assert TrainConfig.from_dict(config["train"]).max_iters == 40
    final = json.loads((smoke_run / "final.json").read_text())
    assert final["whole_val_tokens"] == config["corpus"]["n_val"] - 1
    assert final["whole_val_bits_per_char"] == pytest.approx(final["whole_val_loss"] / 0.6931471805599453)
    assert final["final_val_loss"] == evals[-1]["val_loss"] and final["params"] == config["params"]


def test_generate_streams_only_corpus_characters(smoke_run, capsys):
    status, out, err = run_cli("generate", "--checkpoint", smoke_run, "--prompt", "ROMEO:", "--tokens", 200,
                               "--seed", 0, "--top-k", 20, capsys=capsys)
    assert status == 0, err
    text = out[:-1]  # the final newline is the command's
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 200
    corpus_chars = set(require_shakespeare().read_text(encoding="utf-8"))
    assert set(text) <= corpus_chars
    _, again, _ = run_cli("generate", "--checkpoint", smoke_run, "--prompt", "ROMEO:", "--tokens", 200,
                          "--seed", 0, "--top-k", 20, capsys=capsys)
    assert again == out  # seeded


def test_generate_native_gives_the_same_greedy_text(smoke_run, capsys):
    from lmn.native import find_compiler

    if find_compiler() is None:
        status, _, err = run_cli("generate", "--checkpoint", smoke_run, "--native", capsys=capsys)
        assert status == 2 and "C compiler" in err
        return
    args = ("generate", "--checkpoint", smoke_run, "--prompt", "ROMEO:", "--tokens", 120, "--temperature", 0)
    status, plain, err = run_cli(*args, capsys=capsys)
    assert status == 0, err
    status, native, err = run_cli(*args, "--native", capsys=capsys)
    assert status == 0, err
    assert native == plain and len(native) == len("ROMEO:") + 121


def test_generate_rejects_characters_outside_the_vocabulary(smoke_run, capsys):
    status, out, err = run_cli("generate", "--checkpoint", smoke_run, "--prompt", "ROMEO: ¿qué? 😀", capsys=capsys)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "'¿'" in err and "'é'" in err and "'😀'" in err


def test_plot_draws_one_png(smoke_run, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert run_cli("plot", smoke_run, smoke_run, "-o", png, capsys=capsys)[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, _, err = run_cli("plot", smoke_run, "-o", png, capsys=capsys)
    assert status == 2 and "--force" in err  # never overwritten silently


# ----------------------------------------------------------------------------- resume
def test_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    data = small_corpus(tmp_path)
    common = ["train", "--data", data, "--eval-interval", 3, "--ckpt-interval", 3, "--log-interval", 1, *TINY]
    assert run_cli(*common, "--out", tmp_path / "full", "--max-iters", 7)[0] == 0
    assert run_cli(*common, "--out", tmp_path / "cut", "--max-iters", 4)[0] == 0
    assert run_cli("train", "--out", tmp_path / "cut", "--resume", "--max-iters", 7)[0] == 0
    capsys.readouterr()
    assert without_timing(records(tmp_path / "cut", "train")) == without_timing(records(tmp_path / "full", "train"))
    # The stopped run also evaluated at its end (step 4); every step both evaluated agrees.
    cut = {r["step"]: r for r in without_timing(records(tmp_path / "cut", "eval"))}
    full = {r["step"]: r for r in without_timing(records(tmp_path / "full", "eval"))}
    assert sorted(full) == [0, 3, 6, 7] and sorted(cut) == [0, 3, 4, 6, 7]
    assert all(cut[step] == full[step] for step in full)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model", ["lmn", "gpt2"])
def test_gradient_checkpointing_gives_the_same_run(tmp_path, capsys, model):
    """--gradient-checkpointing only trades memory for time: identical losses and weights.
    It may also be switched when resuming (it is not part of the run's definition)."""
    data = small_corpus(tmp_path)
    opts = TINY if model == "lmn" else ["--model-opt", "n_embd=8", "--model-opt", "n_layer=2", "--model-opt",
                                        "n_head=2", "--model-opt", "n_inner=16", "--model-opt", "n_positions=16",
                                        *TINY[6:]]
    common = ["train", "--data", data, "--model", model, "--eval-interval", 3, "--log-interval", 1, *opts]
    assert run_cli(*common, "--out", tmp_path / "plain", "--max-iters", 4)[0] == 0
    assert run_cli(*common, "--out", tmp_path / "ckpt", "--max-iters", 4, "--gradient-checkpointing")[0] == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["train"]["gradient_checkpointing"] is True
    for kind in ("train", "eval"):
        assert without_timing(records(tmp_path / "ckpt", kind)) == without_timing(records(tmp_path / "plain", kind))
    assert run_cli("train", "--out", tmp_path / "ckpt", "--resume", "--max-iters", 5,
                   "--no-gradient-checkpointing", capsys=capsys)[0] == 0


def test_gradient_checkpointing_switch_reaches_the_models():
    from lmn.trainer import build_model, enable_gradient_checkpointing

    lmn = build_model("lmn", {"vocab_size": 11, "d_model": 8, "n_layers": 1, "n_heads": 2})
    enable_gradient_checkpointing("lmn", lmn)
    assert lmn.gradient_checkpointing is True
    for kind, cfg in (("gpt2", {"vocab_size": 11, "n_embd": 8, "n_layer": 1, "n_head": 2}),
                      ("mamba", {"vocab_size": 11}), ("mamba2", {"vocab_size": 11, "hidden_size": 8}),
                      ("rwkv", {"vocab_size": 11, "hidden_size": 8})):
        model = build_model(kind, cfg)
        enable_gradient_checkpointing(kind, model)
        assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.hf.modules()), kind


def _tiny_run(tmp_path, name="run", **overrides):
    settings = dict(max_iters=2, eval_interval=2, eval_iters=1, block_size=16, batch_size=2, whole_val=False,
                    model_config={"d_model": 8, "n_layers": 1})
    cfg = preset_config("smoke", data=str(small_corpus(tmp_path)), out_dir=str(tmp_path / name),
                        **{**settings, **overrides})
    train(cfg, stream=open(os.devnull, "w"))
    return cfg


def test_resume_refuses_another_config(tmp_path, capsys):
    cfg = _tiny_run(tmp_path)
    before = snapshot(cfg.out_dir)
    status, _, err = run_cli("train", "--out", cfg.out_dir, "--resume", "--model-opt", "d_model=16", capsys=capsys)
    assert status == 2 and "d_model" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli("train", "--out", cfg.out_dir, "--resume", "--lr", "0.1", capsys=capsys)
    assert status == 2 and "lr" in err
    assert snapshot(cfg.out_dir) == before


def test_checkpoint_of_another_config_is_refused(tmp_path):
    cfg = _tiny_run(tmp_path)
    from lmn.trainer import build_model, load_checkpoint, resolve_model_config

    vocab_size = json.loads((Path(cfg.out_dir) / "config.json").read_text())["corpus"]["vocab_size"]
    other = resolve_model_config("lmn", {"d_model": 16, "n_layers": 1}, vocab_size)
    with pytest.raises(CheckpointError, match="another model config.*d_model"):
        load_checkpoint(cfg.out_dir, build_model("lmn", other), "lmn", other, require_state=False)


def _damage(path: Path, how: str) -> None:
    blob = bytearray(path.read_bytes())
    if how == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[-5] ^= 0xFF  # inside a tensor: the header still parses, the sha256 does not match
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", ["truncate-model", "flip-model", "truncate-state", "flip-state"])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, damage):
    """Damage the newest checkpoint (step 2): resume passes over it (one warning line) to the
    one before (step 0) and still reproduces an uninterrupted run; generate needs the
    weights only, so a damaged trainer state does not stop it."""
    cfg = _tiny_run(tmp_path)  # checkpoints at steps 0 and 2
    run = Path(cfg.out_dir)
    newest = run / "checkpoints" / "step-00000002"
    how, what = damage.split("-")
    _damage(newest / ("trainer_state.pt" if what == "state" else "model.safetensors"), how)
    status, out, err = run_cli("generate", "--checkpoint", run, "--tokens", 5, "--seed", 0, capsys=capsys)
    assert status == 0, err
    if what == "model":
        assert "warning: passing over a damaged checkpoint" in err and "step-00000002" in err
        assert len(err.strip().splitlines()) == 1
    else:
        assert err == ""
    status, _, err = run_cli("train", "--out", run, "--resume", "--max-iters", 4, capsys=capsys)
    assert status == 0, err
    assert "passing over a damaged checkpoint" in err and "weights_only" not in err
    _tiny_run(tmp_path, name="ref", max_iters=4)
    for kind in ("train", "eval"):
        assert without_timing(records(run, kind)) == without_timing(records(tmp_path / "ref", kind))
    a, b = weights(run), weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path, capsys):
    cfg = _tiny_run(tmp_path)
    run = Path(cfg.out_dir)
    for step_dir in (run / "checkpoints").iterdir():
        _damage(step_dir / "model.safetensors", "flip")
        _damage(step_dir / "trainer_state.pt", "truncate")
    before = snapshot(run)
    for argv in (("train", "--out", run, "--resume", "--max-iters", 4), ("generate", "--checkpoint", run)):
        status, out, err = run_cli(*argv, capsys=capsys)
        assert status == 2 and "no intact checkpoint" in err and "corrupted" in err, err
        assert len(err.strip().splitlines()) == 1 and "weights_only" not in err
    status, _, err = run_cli("train", "--out", run, "--max-iters", 4, capsys=capsys)
    assert status == 2 and "--force" in err
    assert snapshot(run) == before


def test_a_corrupt_trainer_state_never_suggests_weights_only_false(tmp_path):
    from lmn.trainer import load_trainer_state

    cfg = _tiny_run(tmp_path)
    for step_dir in (Path(cfg.out_dir) / "checkpoints").iterdir():
        (step_dir / "trainer_state.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError) as err:
        load_trainer_state(cfg.out_dir)
    assert "weights_only" not in str(err.value) and "corrupted" in str(err.value)


# ----------------------------------------------------------------------------- stops, kills, --force
def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    """What a kill during the step-0 evaluation leaves (manifest, config, tokenizer, metrics,
    no checkpoint): generate says so; the same command, or --resume, starts at step 0."""
    import shutil

    cfg = _tiny_run(tmp_path)
    run = Path(cfg.out_dir)
    shutil.rmtree(run / "checkpoints")
    (run / "final.json").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".tmp-step-00000000-99999").mkdir()  # a save killed half-way
    status, _, err = run_cli("generate", "--checkpoint", run, capsys=capsys)
    assert status == 2 and "no checkpoint yet" in err and "--resume" in err
    status, _, err = run_cli("train", "--out", run, "--resume", capsys=capsys)
    assert status == 0 and "starting at step 0" in err, err
    assert not (run / "checkpoints" / ".tmp-step-00000000-99999").exists()
    _tiny_run(tmp_path, name="ref")
    assert without_timing(records(run, "eval")) == without_timing(records(tmp_path / "ref", "eval"))
    shutil.rmtree(run / "checkpoints")
    (run / "final.json").unlink()
    train(cfg, stream=open(os.devnull, "w"))  # the same command again: accepted
    assert without_timing(records(run, "eval")) == without_timing(records(tmp_path / "ref", "eval"))


def test_ctrl_c_during_the_first_evaluation_leaves_a_checkpoint_at_step_0(tmp_path, capsys, monkeypatch):
    """The stop message names a checkpoint that exists: Ctrl-C during the step-0 estimate
    saves step 0, and --resume continues from it."""
    import signal

    import lmn.trainer.loop as loop

    real = loop.estimate_loss

    def interrupted(*args, **kwargs):
        if args[3] == 0:  # the step
            os.kill(os.getpid(), signal.SIGINT)  # handled by DeferredStop: a request, honoured after the estimate
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "estimate_loss", interrupted)
    data = small_corpus(tmp_path)
    argv = ["train", "--preset", "smoke", "--data", data, "--out", tmp_path / "r", "--max-iters", 2,
            "--eval-iters", 1, "--block-size", 16, "--batch-size", 2, "--no-whole-val", "--model-opt", "d_model=8"]
    status, _, err = run_cli(*argv, capsys=capsys)
    assert status == 130 and "checkpoint at step 0" in err, err
    monkeypatch.setattr(loop, "estimate_loss", real)
    status, out, err = run_cli("generate", "--checkpoint", tmp_path / "r", "--tokens", 3, capsys=capsys)
    assert status == 0, err
    status, _, err = run_cli("train", "--out", tmp_path / "r", "--resume", capsys=capsys)
    assert status == 0 and "resuming at step 0" in err, err
    assert run_cli(*argv[:6], tmp_path / "ref", *argv[7:], capsys=capsys)[0] == 0
    assert without_timing(records(tmp_path / "r", "train")) == without_timing(records(tmp_path / "ref", "train"))


def test_max_iters_0_leaves_a_loadable_run(tmp_path, capsys):
    cfg = _tiny_run(tmp_path, max_iters=0)
    assert [c.step for c in __import__("lmn.trainer", fromlist=["x"]).list_checkpoints(cfg.out_dir)] == [0]
    status, out, err = run_cli("generate", "--checkpoint", cfg.out_dir, "--tokens", 3, capsys=capsys)
    assert status == 0, err
    status, _, err = run_cli("train", "--out", cfg.out_dir, "--resume", "--max-iters", 2, capsys=capsys)
    assert status == 0, err
    _tiny_run(tmp_path, name="ref")
    assert without_timing(records(cfg.out_dir, "eval")) == without_timing(records(tmp_path / "ref", "eval"))


def test_force_removes_only_what_lmn_wrote(tmp_path, capsys):
    cfg = _tiny_run(tmp_path)
    run = Path(cfg.out_dir)
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / ".tmp-step-00000007-4242").mkdir()
    (run / ".metrics.jsonl.tmp4242").write_text("half")
    status, _, err = run_cli("train", "--out", run, "--force", "--data", cfg.data, "--preset", "smoke",
                             "--max-iters", 0, "--eval-iters", 1, "--block-size", 16, "--batch-size", 2,
                             "--no-whole-val", "--model-opt", "d_model=8", "--model-opt", "n_layers=1", capsys=capsys)
    assert status == 0, err
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000000"]
    assert not (run / ".metrics.jsonl.tmp4242").exists()


def test_force_refuses_a_directory_that_is_not_an_lmn_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.jsonl").write_text("my numbers\n")
    before = snapshot(mine)
    for flag in ("--force", "--resume", None):
        argv = ["train", "--preset", "smoke", "--data", small_corpus(tmp_path), "--out", mine]
        status, _, err = run_cli(*argv, *([flag] if flag else []), capsys=capsys)
        assert status == 2 and str(mine) in err and "not an lmn run" in err, (flag, err)
        assert len(err.strip().splitlines()) == 1
    status, _, err = run_cli("train", "--out", mine, "--resume", capsys=capsys)
    assert status == 2 and "not the config of an lmn run" in err, err
    assert snapshot(mine) == before


def test_a_run_of_checkpoint_format_1_loads_resumes_and_forces(tmp_path, capsys):
    """Run directories written before step directories (model.safetensors and
    trainer_state.pt beside config.json, no manifest) load, resume and --force."""
    import shutil

    from lmn.data.corpus import sha256_file

    cfg = _tiny_run(tmp_path)
    run = Path(cfg.out_dir)
    newest = run / "checkpoints" / "step-00000002"
    shutil.copy(newest / "model.safetensors", run / "model.safetensors")
    state = torch.load(newest / "trainer_state.pt", weights_only=True)
    state.update(format=1, model_sha256=sha256_file(run / "model.safetensors"))
    torch.save(state, run / "trainer_state.pt")
    shutil.rmtree(run / "checkpoints")
    (run / "lmn-run.json").unlink()
    status, _, err = run_cli("generate", "--checkpoint", run, "--tokens", 3, capsys=capsys)
    assert status == 0, err
    good = (run / "trainer_state.pt").read_bytes()
    (run / "trainer_state.pt").write_bytes(good[:100])  # corrupt: generate needs the weights only
    status, _, err = run_cli("generate", "--checkpoint", run, "--tokens", 3, capsys=capsys)
    assert status == 0, err
    status, _, err = run_cli("train", "--out", run, "--resume", "--max-iters", 4, capsys=capsys)
    assert status == 2 and "corrupted" in err and "weights_only" not in err, err
    (run / "trainer_state.pt").write_bytes(good)
    status, _, err = run_cli("train", "--out", run, "--resume", "--max-iters", 4, capsys=capsys)
    assert status == 0, err
    _tiny_run(tmp_path, name="ref", max_iters=4)
    assert without_timing(records(run, "eval")) == without_timing(records(tmp_path / "ref", "eval"))
    a, b = weights(run), weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)
    files = json.loads((run / "lmn-run.json").read_text())["files"]  # the record begins with the resume
    assert {"config.json", "tokenizer.json", "metrics.jsonl", "model.safetensors", "trainer_state.pt", "final.json",
            "checkpoints", "lmn-run.lock"} <= set(files)
    (run / "notes.txt").write_text("mine")
    status, _, err = run_cli("train", "--out", run, "--force", "--max-iters", 0, "--data", cfg.data, "--preset",
                             "smoke", "--eval-iters", 1, "--no-whole-val", capsys=capsys)
    assert status == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "final.json", "lmn-run.json",
                                                     "metrics.jsonl", "notes.txt", "tokenizer.json"]


# ----------------------------------------------------------------------------- bad input
def test_bad_train_input_exits_cleanly(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    empty, latin1, short = tmp_path / "empty.txt", tmp_path / "latin1.txt", tmp_path / "short.txt"
    empty.write_bytes(b"")
    latin1.write_bytes(b"caf\xe9\n" * 100)
    short.write_text("to be or not to be\n" * 10)
    out = tmp_path / "new"
    cases = {
        "unknown preset": (["--preset", "paper-xl", "--out", out], "unknown preset"),
        "existing non-run dir": (["--preset", "smoke", "--out", existing], "not an lmn run"),
        "empty corpus": (["--preset", "smoke", "--data", empty, "--out", out], "empty"),
        "non-UTF-8 corpus": (["--preset", "smoke", "--data", latin1, "--out", out], "UTF-8"),
        "too-short corpus": (["--preset", "smoke", "--data", short, "--out", out], "too short"),
        "missing corpus": (["--preset", "smoke", "--data", tmp_path / "nope.txt", "--out", out], "no such file"),
        "resume nothing": (["--out", tmp_path / "none", "--resume"], "nothing to resume"),
        "bad value": (["--preset", "smoke", "--data", short, "--out", out, "--max-iters", "-3"], "max_iters"),
        "bad model option": (["--preset", "smoke", "--data", short, "--out", out, "--model-opt", "d_modle=8"],
                             "d_modle"),
        "bad flag type": (["--preset", "smoke", "--data", short, "--out", out, "--lr", "fast"], "--lr"),
    }
    for name, (argv, needle) in cases.items():
        status, _, err = run_cli("train", *argv, capsys=capsys)
        assert status == 2, name
        assert needle in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
    assert not out.exists()
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_console_script_errors_have_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmn.cli", "generate", "--checkpoint", str(tmp_path / "missing")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("lmn generate: error:") and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- older run directories
def test_runs_written_before_the_task_fields_still_resume(tmp_path, capsys):
    """config.json of runs made before `task`/`task_options` existed: the defaults (the
    text task) are theirs, so they resume."""
    cfg = _tiny_run(tmp_path)
    path = Path(cfg.out_dir) / "config.json"
    doc = json.loads(path.read_text())
    for key in ("task", "task_options"):
        del doc["train"][key]
    path.write_text(json.dumps(doc))
    status, _, err = run_cli("train", "--out", cfg.out_dir, "--resume", "--max-iters", 3, capsys=capsys)
    assert status == 0, err


def test_generate_loads_the_committed_run(capsys):
    from tests.lmn_testdata import REPO

    run = REPO / "docs" / "results" / "runs" / "lmn-s1337"
    status, out, err = run_cli("generate", "--checkpoint", run, "--prompt", "ROMEO:", "--tokens", 20, "--seed", 0,
                               capsys=capsys)
    assert status == 0, err
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 21
    status, _, err = run_cli("generate", "--checkpoint", REPO / "docs" / "results" / "runs" / "gpt2-s1337",
                             capsys=capsys)
    assert status == 2 and "has no streaming decoder" in err and "lmn, loglinear-mamba2" in err


def test_generate_max_level_caps_the_tree_at_the_trained_levels(capsys):
    from tests.lmn_testdata import REPO

    run = REPO / "docs" / "results" / "runs" / "lmn-s1337"  # trained on 512-character windows: levels 1-9
    args = ("generate", "--checkpoint", run, "--prompt", "ROMEO:", "--tokens", 1100, "--temperature", 0)
    status, plain, err = run_cli(*args, capsys=capsys)
    assert status == 0 and "never trained" in err and "--max-level trained" in err and "1,024" in err
    status, capped, err = run_cli(*args, "--max-level", "trained", capsys=capsys)
    assert status == 0 and err == ""
    assert capped[:1024] == plain[:1024]  # the same model until a tenth level exists
    status, nine, _ = run_cli(*args, "--max-level", 9, capsys=capsys)
    assert nine == capped
    from lmn.native import find_compiler

    if find_compiler() is not None:  # the C step runs the capped tree too (a fixed-size state)
        status, native, err = run_cli(*args, "--max-level", "trained", "--native", capsys=capsys)
        assert status == 0 and native == capped, err
    status, _, err = run_cli("generate", "--checkpoint", run, "--tokens", 10, capsys=capsys)
    assert status == 0 and err == ""  # short texts: no note
    for bad in ("0", "deep"):
        status, _, err = run_cli("generate", "--checkpoint", run, "--max-level", bad, capsys=capsys)
        assert status == 2 and len(err.strip().splitlines()) == 1 and "--max-level must be" in err
