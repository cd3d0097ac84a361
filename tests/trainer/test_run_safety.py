"""Nothing lost, part 2 (issue 23): a hand-edited config.json is refused on resume, --force
removes only what lmn wrote, a diverged run stops before saving NaN, a checkpoint that
passes its checksum but does not load falls back, a full disk during a checkpoint is one
line naming the file with the earlier checkpoints intact, and resuming with another
--model names the run's kind."""

import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from lmn.trainer import list_checkpoints, load_run, preset_config, train
from lmn.trainer.rundir import read_run_manifest, remove_run_files
from tests.lmn_testdata import TINY_TRAIN_ARGS as TINY
from tests.lmn_testdata import run_cli, small_corpus


def one_line(status, err, *needles, code=2):
    assert status == code, err
    lines = [line for line in err.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def error_line(status, err, *needles, code=2):
    """A run that trained a while: its error is the last line of stderr, and the only one."""
    assert status == code, err
    errors = [line for line in err.strip().splitlines() if line.startswith("lmn train: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def strict_records(run):
    """metrics.jsonl, parsed as strict JSON (NaN, Infinity refused)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def without_timing(recs):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in recs]


def _cfg(tmp_path, name="run", **overrides):
    settings = dict(max_iters=2, eval_interval=2, eval_iters=1, block_size=16, batch_size=2, whole_val=False,
                    log_interval=1, model_config={"d_model": 8, "n_layers": 1})
    return preset_config("smoke", data=str(small_corpus(tmp_path)), out_dir=str(tmp_path / name),
                         **{**settings, **overrides})


def _tiny_run(tmp_path, name="run", **overrides):
    cfg = _cfg(tmp_path, name, **overrides)
    train(cfg, stream=open(os.devnull, "w"))
    return Path(cfg.out_dir)


def _weights(run):
    return load_run(run)[0].state_dict()


# ----------------------------------------------------------------------------- config.json changed
def test_resume_refuses_a_config_json_changed_since_the_checkpoint(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    path = run / "config.json"
    original = path.read_text()
    doc = json.loads(original)
    doc["train"]["lr"] = 0.5
    path.write_text(json.dumps(doc))
    before = snapshot(run)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 4)
    assert one_line(status, err) == (f"lmn train: error: cannot resume {run}: config.json was changed since "
                                     "checkpoint step 2 (train.lr 0.003 -> 0.5); restore it or start a new run")
    doc["train"]["model_config"]["d_model"] = 16
    doc["train"]["seed"] = 7
    path.write_text(json.dumps(doc))
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 4)
    one_line(status, err, "train.lr 0.003 -> 0.5", "train.model_config.d_model 8 -> 16", "train.seed 1337 -> 7")
    assert snapshot(run) == {**before, "config.json": path.read_bytes()}  # nothing written
    # fields a resume may change (they do not change what is computed) are no edit to refuse
    doc = json.loads(original)
    doc["train"]["max_iters"] = 3
    path.write_text(json.dumps(doc))
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume")
    assert status == 0, err
    assert json.loads((run / "final.json").read_text())["step"] == 3


def test_checkpoints_record_their_config_and_older_ones_still_resume(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    recorded = json.loads((run / "checkpoints" / "step-00000002" / "checkpoint.json").read_text())["train"]
    assert recorded == json.loads((run / "config.json").read_text())["train"]
    for step_dir in (run / "checkpoints").iterdir():  # as checkpoints were written before the record
        path = step_dir / "checkpoint.json"
        doc = json.loads(path.read_text())
        del doc["train"]
        path.write_text(json.dumps(doc))
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 3)
    assert status == 0, err


def test_resume_with_another_model_names_the_runs_kind(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    before = snapshot(run)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--model", "gpt2")
    assert one_line(status, err) == (f"lmn train: error: {run} was trained with --model lmn; resume with --model lmn "
                                     "(or omit --model)")
    assert "GPT2BaselineConfig" not in err
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- --force
def test_force_keeps_foreign_files_in_checkpoints_and_names_never_written(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    manifest = read_run_manifest(run)
    assert "best.safetensors" not in manifest["files"] and "final.json" in manifest["files"]
    (run / "checkpoints" / "mine.txt").write_text("my notes")
    (run / "checkpoints" / "step-00000099").mkdir()  # a damaged lmn checkpoint: lmn's names only
    shutil.copy(run / "checkpoints" / "step-00000002" / "model.safetensors", run / "checkpoints" / "step-00000099")
    (run / "best.safetensors").write_bytes(b"my own weights")  # this run never wrote one
    status, _, err = run_cli(capsys, "train", "--out", run, "--force", *TINY, "--data", tmp_path / "small.txt",
                             "--max-iters", 0)
    assert status == 0, err
    assert (run / "checkpoints" / "mine.txt").read_text() == "my notes"
    assert (run / "best.safetensors").read_bytes() == b"my own weights"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["mine.txt", "step-00000000"]


def test_force_refuses_a_step_directory_holding_foreign_files(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    (run / "checkpoints" / "step-00000002" / "notes.txt").write_text("mine")
    before = snapshot(run)
    status, _, err = run_cli(capsys, "train", "--out", run, "--force", *TINY, "--data", tmp_path / "small.txt",
                             "--max-iters", 0)
    one_line(status, err, "refusing --force", "step-00000002/notes.txt", "move them out first")
    assert snapshot(run) == before


def test_force_removes_what_a_keep_best_run_wrote_and_the_empty_checkpoints_dir(tmp_path):
    run = _tiny_run(tmp_path, keep_best=True)
    assert {"best.safetensors", "final.json", "checkpoints"} <= set(read_run_manifest(run)["files"])
    (run / "notes.txt").write_text("mine")
    remove_run_files(run)
    assert sorted(p.name for p in run.iterdir()) == ["lmn-run.json", "notes.txt"]


def test_a_run_stopped_before_its_end_records_no_final_json(tmp_path, monkeypatch):
    import lmn.trainer.loop as loop

    def stop(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_finish", stop)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path), stream=open(os.devnull, "w"))
    run = tmp_path / "run"
    assert "final.json" not in read_run_manifest(run)["files"] and "checkpoints" in read_run_manifest(run)["files"]
    (run / "final.json").write_text('{"model": "mine", "step": 1, "params": 2}')  # a file of the user's
    remove_run_files(run)
    assert (run / "final.json").is_file()


def test_force_on_a_format_1_manifest_removes_the_possible_names_only_when_they_are_lmns(tmp_path):
    """A manifest of format 1 listed every name lmn might write: best.safetensors and
    final.json go only when their contents are lmn's."""
    run = _tiny_run(tmp_path)
    (run / "lmn-run.json").write_text(json.dumps({
        "program": "lmn", "format": 1, "lmn": "0.1.0", "note": "",
        "files": ["lmn-run.json", "config.json", "metrics.jsonl", "checkpoints", "final.json", "best.safetensors",
                  "tokenizer.json"]}))
    (run / "best.safetensors").write_bytes(b"my own weights")
    (run / "checkpoints" / "mine.txt").write_text("my notes")
    remove_run_files(run)
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "checkpoints", "lmn-run.json"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["mine.txt"]
    run2 = _tiny_run(tmp_path, name="run2")
    (run2 / "final.json").write_text('["not", "a", "summary"]')
    (run2 / "lmn-run.json").write_text(json.dumps({"program": "lmn", "format": 1, "files": ["final.json"]}))
    remove_run_files(run2)
    assert (run2 / "final.json").is_file()


# ----------------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    corpus = small_corpus(tmp_path)
    run = tmp_path / "run"
    argv = ["train", *TINY, "--data", corpus, "--out", run, "--lr", "1e30", "--max-iters", 6, "--ckpt-interval", 2,
            "--eval-interval", 2, "--log-interval", 1]
    status, _, err = run_cli(capsys, *argv)
    line = error_line(status, err, "training diverged", "the loss is nan at step 2", "lower --lr",
                      f"{run} keeps its checkpoint of step 0")
    assert line == (f"lmn train: error: training diverged: the loss is nan at step 2; try a lower --lr than 1e+30 "
                    f"(start over with --force, or a new --out); {run} keeps its checkpoint of step 0 (--resume "
                    "continues from it)")
    assert not (run / "final.json").exists()
    assert [c.step for c in list_checkpoints(run)] == [0]
    assert all(torch.isfinite(v).all() for v in _weights(run).values())
    assert strict_records(run)[-1]["step"] == 1  # nothing of the diverged step recorded
    json.loads((run / "config.json").read_text())
    # --resume continues from the kept checkpoint: the same steps, so the same divergence
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume")
    assert "resuming at step 0" in err
    assert error_line(status, err) == line
    assert [c.step for c in list_checkpoints(run)] == [0]
    # a lower --lr: start over
    status, _, err = run_cli(capsys, *argv[:-10], "--force", "--lr", "3e-3", "--max-iters", 6, "--ckpt-interval", 2)
    assert status == 0, err
    assert json.loads((run / "final.json").read_text())["step"] == 6


def test_a_nan_loss_stops_before_its_checkpoint_and_resume_completes_the_run(tmp_path, capsys, monkeypatch):
    import lmn.trainer.loop as loop

    real = loop.batch_loss
    calls = {"n": 0}

    def nan_once(*args, **kwargs):  # the batch of update 3 (a transient fault): a NaN loss
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "batch_loss", nan_once)
    cfg = _cfg(tmp_path, max_iters=6, ckpt_interval=2, eval_interval=2)
    with pytest.raises(loop.TrainingDiverged, match="the loss is nan at step 3.*checkpoint of step 2"):
        train(cfg, stream=open(os.devnull, "w"))
    assert [c.step for c in list_checkpoints(cfg.out_dir)] == [2, 0]
    monkeypatch.setattr(loop, "batch_loss", real)
    status, _, err = run_cli(capsys, "train", "--out", cfg.out_dir, "--resume")
    assert status == 0, err
    ref = _tiny_run(tmp_path, "ref", max_iters=6, ckpt_interval=2, eval_interval=2)
    assert without_timing(strict_records(cfg.out_dir)) == without_timing(strict_records(ref))
    a, b = _weights(cfg.out_dir), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_that_become_nan_are_never_checkpointed_and_records_stay_strict_json(tmp_path, monkeypatch):
    """An update that makes the weights NaN with a finite loss (an infinite gradient): the
    evaluation after it records null (named under "non_finite"), and the checkpoint due
    then is refused; the one before stays the newest."""
    import lmn.trainer.loop as loop

    real, calls = loop.clip_gradients, {"n": 0}

    def infinite_gradient(model, max_norm):
        calls["n"] += 1
        if calls["n"] == 2:
            for p in model.parameters():
                p.grad.fill_(float("inf"))
        return real(model, max_norm)

    monkeypatch.setattr(loop, "clip_gradients", infinite_gradient)
    cfg = _cfg(tmp_path, max_iters=6, ckpt_interval=2, eval_interval=2)
    with pytest.raises(loop.TrainingDiverged, match="the weights are not finite at step 2.*checkpoint of step 0"):
        train(cfg, stream=open(os.devnull, "w"))
    assert [c.step for c in list_checkpoints(cfg.out_dir)] == [0]
    last = strict_records(cfg.out_dir)[-1]
    assert last["type"] == "eval" and last["step"] == 2 and last["val_loss"] is None
    assert last["non_finite"]["val_loss"] == "nan"
    assert not (Path(cfg.out_dir) / "final.json").exists()


def test_strict_json_maps_non_finite_numbers_to_null_with_a_note():
    from lmn.trainer.loop import json_line, strict_json

    assert strict_json({"a": 1.0}) == {"a": 1.0}
    assert strict_json({"a": float("inf"), "b": float("nan"), "c": 2}) == {
        "a": None, "b": None, "c": 2, "non_finite": {"a": "inf", "b": "nan"}}
    assert json.loads(json_line({"loss": float("-inf")})) == {"loss": None, "non_finite": {"loss": "-inf"}}


# ----------------------------------------------------------------------------- checksum ok, does not load
def _rehash(step_dir: Path, name: str) -> None:
    from lmn.data.corpus import sha256_file

    path = step_dir / "checkpoint.json"
    doc = json.loads(path.read_text())
    doc["files"][name] = sha256_file(step_dir / name)
    path.write_text(json.dumps(doc))


def _craft(step_dir: Path, how: str) -> None:
    """Make the checkpoint in ``step_dir`` fail to load while its checksums match."""
    if how == "wrong-shapes":  # lmn's metadata, the run's names, other shapes
        from safetensors import safe_open
        from safetensors.torch import save_file

        path = step_dir / "model.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: torch.zeros(f.get_tensor(k).numel() + 1) for k in f.keys()}
        save_file(tensors, str(path), metadata=meta)
        _rehash(step_dir, "model.safetensors")
    elif how == "state-torch-refuses":  # a pickle weights_only=True will not run
        import datetime

        torch.save({"format": 2, "step": 2, "when": datetime.datetime(2026, 1, 1)}, step_dir / "trainer_state.pt")
        _rehash(step_dir, "trainer_state.pt")
    else:  # "state-does-not-fit": loads, but the optimizer state is another model's
        state = torch.load(step_dir / "trainer_state.pt", weights_only=True)
        state["optimizer"]["param_groups"][0]["params"] = [0]
        torch.save(state, step_dir / "trainer_state.pt")
        _rehash(step_dir, "trainer_state.pt")


@pytest.mark.parametrize("how", ["wrong-shapes", "state-torch-refuses", "state-does-not-fit"])
def test_a_checkpoint_that_passes_its_checksum_but_does_not_load_falls_back(tmp_path, capsys, how):
    run = _tiny_run(tmp_path)  # checkpoints at steps 0 and 2
    _craft(run / "checkpoints" / "step-00000002", how)
    status, _, err = run_cli(capsys, "generate", "--checkpoint", run, "--tokens", 3, "--seed", 0)
    assert status == 0, err
    if how == "wrong-shapes":  # generate needs the weights only
        assert "warning: passing over a damaged checkpoint" in err and "does not load into the model" in err
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 4)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "passing over a damaged checkpoint" in line]
    assert len(warnings) == 1 and "step-00000002" in warnings[0] and "using step-00000000" in warnings[0], err
    ref = _tiny_run(tmp_path, "ref", max_iters=4)
    assert without_timing(strict_records(run)) == without_timing(strict_records(ref))
    a, b = _weights(run), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_checkpoint_that_loads_is_one_clear_error(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    for step_dir in (run / "checkpoints").iterdir():
        _craft(step_dir, "wrong-shapes")
    before = snapshot(run)
    for argv in (("train", "--out", run, "--resume", "--max-iters", 4), ("generate", "--checkpoint", run)):
        status, _, err = run_cli(capsys, *argv)
        one_line(status, err, "no intact checkpoint", "does not load into the model")
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- full disk
class _FullDisk(io.RawIOBase):
    """A file on a full disk: every write fails with ENOSPC."""

    def writable(self):
        return True

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fill_the_disk_at_step_2(monkeypatch, how):
    """The checkpoint of step 2 meets a full disk: in the space check before writing, in the
    weights (safetensors' own error) or in the trainer state (torch's writer)."""
    import safetensors.torch

    import lmn.atomic as atomic
    import lmn.trainer.rundir as rundir

    at_step_2 = "step-00000002"
    real_save_model, real_check, real_disk_usage = safetensors.torch.save_model, atomic.check_space, shutil.disk_usage

    def save_model(model, filename, *args, **kwargs):
        if how == "weights" and at_step_2 in str(filename):
            from safetensors import SafetensorError

            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  "\"No space left on device\" })")
        return real_save_model(model, filename, *args, **kwargs)

    def full_open(path, mode="r", *args, **kwargs):
        if how == "state" and at_step_2 in str(path):
            return io.BufferedWriter(_FullDisk())
        return open(path, mode, *args, **kwargs)

    def check_space(path, nbytes):
        if how == "precheck" and at_step_2 in str(path):
            with monkeypatch.context() as m:
                m.setattr(atomic.shutil, "disk_usage", lambda p: real_disk_usage(p)._replace(free=1000))
                return real_check(path, nbytes)
        return real_check(path, nbytes)

    monkeypatch.setattr(safetensors.torch, "save_model", save_model)
    monkeypatch.setattr(rundir, "open", full_open, raising=False)
    monkeypatch.setattr(atomic, "check_space", check_space)


@pytest.mark.parametrize("how", ["state", "weights", "precheck"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_earlier_one(tmp_path, capsys, monkeypatch, how):
    corpus = small_corpus(tmp_path)
    run = tmp_path / "run"
    _fill_the_disk_at_step_2(monkeypatch, how)
    status, _, err = run_cli(capsys, "train", *TINY, "--data", corpus, "--out", run, "--max-iters", 4,
                             "--ckpt-interval", 2, "--eval-interval", 2)
    file = {"state": "trainer_state.pt", "weights": "model.safetensors", "precheck": "model.safetensors"}[how]
    line = error_line(status, err, "cannot write the checkpoint of step 2: No space left on device",
                    f"{run}/checkpoints/step-00000002/{file}", "the checkpoints before it are intact",
                    "free some space", f"lmn train --out {run} --resume")
    assert "inline_container" not in line and "SafetensorError" not in line and ".tmp-" not in line
    monkeypatch.undo()
    assert [c.step for c in list_checkpoints(run)] == [0]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000000"]  # no temporary left
    load_run(run)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume")
    assert status == 0 and "resuming at step 0" in err, err
    assert json.loads((run / "final.json").read_text())["step"] == 4
