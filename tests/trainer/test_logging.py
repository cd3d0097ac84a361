"""Experiment logging (issue 22, item 7): ``lmn train --log tensorboard`` / ``--log wandb``
beside metrics.jsonl. The scalars each logger wrote, read back from its own files, equal
metrics.jsonl's records; a resumed run continues (TensorBoard purges the steps it redoes,
wandb continues the same run id); the loggers close on every exit path; ``--force``
removes their files; a missing package is one line; without the flag nothing changes.

The TensorBoard and wandb tests skip when the package is not installed (both are in the
dev extra); the rest need neither."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lmn.trainer import preset_config, read_metrics, train
from lmn.trainer.rundir import read_run_manifest
from tests.lmn_testdata import REPO, TINY_TRAIN_ARGS, run_cli, small_corpus

LOGGER_NAMES = {"tb", "wandb", "wandb-run.json"}


def expected_scalars(run_dir) -> dict[tuple[str, int], float]:
    """``{(tag, step): value}`` from metrics.jsonl, by the documented naming: every number
    of a record but its step, as ``<type>/<field>``."""
    out = {}
    for record in read_metrics(run_dir):
        for key, value in record.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert (f"{record['type']}/{key}", record["step"]) not in out
                out[f"{record['type']}/{key}", record["step"]] = float(value)
    return out


def as_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def one_line(status, err, *needles):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _train_args(corpus, run, *extra):
    return ["train", *TINY_TRAIN_ARGS, "--data", corpus, "--out", run, "--log-interval", 1, "--eval-interval", 2,
            *extra]


# ----------------------------------------------------------------------------- TensorBoard
def tensorboard_scalars(tb_dir) -> tuple[dict[tuple[str, int], float], list[str]]:
    """``({(tag, step): value}, text tags)`` as TensorBoard itself reads ``tb_dir``
    (orphaned events of a restarted run purged); a step logged twice fails."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            assert (tag, event.step) not in out, f"{tag} logged twice at step {event.step}"
            out[tag, event.step] = event.value
    return out, acc.Tags()["tensors"]


def test_tensorboard_scalars_equal_metrics_jsonl_and_a_resumed_run_appends(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    import lmn.trainer.loop as loop

    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    real, calls = loop.batch_loss, {"n": 0}

    def nan_at_3(*args, **kwargs):  # update 3 diverges: steps 1-2 are logged past the only checkpoint (0)
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "batch_loss", nan_at_3)
    argv = _train_args(corpus, run, "--max-iters", 6, "--ckpt-interval", 4, "--log", "tensorboard")
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and "training diverged" in err, err
    before, _ = tensorboard_scalars(run / "tb")
    assert {step for tag, step in before if tag == "train/loss"} == {1, 2}  # written before the run failed
    assert before == {k: as_float32(v) for k, v in expected_scalars(run).items()}

    monkeypatch.setattr(loop, "batch_loss", real)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--log", "tensorboard")
    assert status == 0, err
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2  # appended, one file per session
    got, text_tags = tensorboard_scalars(run / "tb")
    want = expected_scalars(run)
    assert {step for tag, step in want if tag == "train/loss"} == set(range(1, 7))
    assert got == {k: as_float32(v) for k, v in want.items()}  # steps 1-2 of the first session purged, not doubled
    assert "config/text_summary" in text_tags
    assert "tb" in read_run_manifest(run)["files"]

    # --force removes tb/ (it is lmn's), and a run without --log leaves none
    (run / "notes.txt").write_text("mine")
    status, _, err = run_cli(capsys, *_train_args(corpus, run, "--max-iters", 2, "--force"))
    assert status == 0, err
    assert not (run / "tb").exists() and (run / "notes.txt").read_text() == "mine"
    assert "tb" not in read_run_manifest(run)["files"]


def test_a_tb_directory_lmn_did_not_write_is_not_written_into(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    status, _, err = run_cli(capsys, *_train_args(corpus, run, "--max-iters", 2))
    assert status == 0, err
    (run / "tb").mkdir()
    (run / "tb" / "mine.txt").write_text("mine")
    before = (run / "lmn-run.json").read_bytes()
    status, _, err = run_cli(capsys, *_train_args(corpus, run, "--max-iters", 2, "--force", "--log", "tensorboard"))
    one_line(status, err, f"{run / 'tb'} exists and lmn did not write it", "move it away")
    assert (run / "tb" / "mine.txt").read_text() == "mine" and (run / "lmn-run.json").read_bytes() == before


# ----------------------------------------------------------------------------- wandb
def wandb_records(run_file: Path) -> list:
    """The records of a ``.wandb`` file (wandb's LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header, after a 7-byte file header), as wandb's protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_file: Path) -> tuple[dict[tuple[str, int], float], dict, int | None]:
    """``({(key, step): value}, the run record's fields, exit code)`` of one offline run."""
    history, run, exit_code = {}, {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            step = row.pop("step")
            for key, value in row.items():
                if not key.startswith("_"):
                    assert (key, step) not in history, f"{key} logged twice at step {step}"
                    history[key, step] = value
        elif kind == "run":
            run = {"id": record.run.run_id, "project": record.run.project, "name": record.run.display_name,
                   "config": {u.key: json.loads(u.value_json) for u in record.run.config.update}}
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return history, run, exit_code


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def test_wandb_offline_run_holds_the_metrics_and_resume_continues_its_id(tmp_path, capsys, monkeypatch, wandb_offline):
    import wandb

    import lmn.trainer.loop as loop

    corpus, run = small_corpus(tmp_path), tmp_path / "lmn-w"
    real, calls = loop.estimate_loss, {"n": 0}

    def ctrl_c_at_step_4(*args, **kwargs):  # a second Ctrl-C: the session ends at once, past its checkpoint (2)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "estimate_loss", ctrl_c_at_step_4)
    argv = _train_args(corpus, run, "--max-iters", 6, "--ckpt-interval", 2, "--log", "wandb")
    status, _, err = run_cli(capsys, *argv)
    assert status == 130, err
    assert wandb.run is None  # finished on the way out
    first = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(first) == 1
    history, info, exit_code = wandb_history(first[0])
    assert exit_code == 130
    assert history == expected_scalars(run)  # steps 1-4, the last two past the checkpoint
    assert {s for k, s in history if k == "train/loss"} == {1, 2, 3, 4}
    run_id = json.loads((run / "wandb-run.json").read_text())["id"]
    assert (info["id"], info["project"], info["name"]) == (run_id, "lmn", "lmn-w")

    monkeypatch.setattr(loop, "estimate_loss", real)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--log", "wandb")
    assert status == 0, err
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)  # the same wandb run
    second = next(f for f in files if f != first[0])
    history, info, exit_code = wandb_history(second)
    assert exit_code == 0 and info["id"] == run_id
    assert info["config"]["train"]["max_iters"] == 6 and info["config"]["preset"] == "smoke"
    want = expected_scalars(run)
    assert history == {k: v for k, v in want.items() if k[1] > 2}  # the session's records, exactly
    assert {s for k, s in want if k == "train/loss"} == set(range(1, 7))

    status, _, err = run_cli(capsys, *_train_args(corpus, run, "--max-iters", 2, "--force"))
    assert status == 0, err
    assert not LOGGER_NAMES & set(os.listdir(run)) and not LOGGER_NAMES & set(read_run_manifest(run)["files"])


def test_wandb_project_option_and_offline_mode_flag(tmp_path, capsys, monkeypatch, wandb_offline):
    monkeypatch.delenv("WANDB_MODE")
    corpus, run = small_corpus(tmp_path), tmp_path / "run"
    status, _, err = run_cli(capsys, *_train_args(corpus, run, "--max-iters", 2, "--log", "wandb:offline",
                                                  "--wandb-project", "mine"))
    assert status == 0, err
    (file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history, info, _ = wandb_history(file)
    assert info["project"] == "mine" and history == expected_scalars(run)
    assert json.loads((run / "wandb-run.json").read_text())["project"] == "mine"


@pytest.mark.slow
def test_under_ddp_only_process_0_logs(tmp_path):
    import torch

    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    run = tmp_path / "ddp"
    argv = [str(a) for a in _train_args(small_corpus(tmp_path), run, "--max-iters", 2, "--log", "tensorboard,wandb")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-home"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb-home")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "--", "lmn.cli", *argv],  # "--": else torchrun reads --log as its --log-dir
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "final.json").read_text())["world_size"] == 2
    assert len(list((run / "tb").iterdir())) == 1  # one writer: process 0's
    (file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    want = expected_scalars(run)
    assert tensorboard_scalars(run / "tb")[0] == {k: as_float32(v) for k, v in want.items()}
    assert wandb_history(file)[0] == want


def test_wandb_that_cannot_start_is_one_line_naming_offline_mode(tmp_path, capsys, monkeypatch, wandb_offline):
    import wandb

    def refuse(**kwargs):  # what wandb online does without an API key
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    status, _, err = run_cli(capsys, *_train_args(small_corpus(tmp_path), tmp_path / "run", "--log", "wandb:online"))
    assert status == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line == ("lmn train: error: --log wandb: wandb could not start a run (UsageError: No API key configured. "
                    "Use `wandb login` to log in.); log in with `wandb login`, or log without an account: "
                    "WANDB_MODE=offline or --log wandb:offline")
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))  # nothing trained


# ----------------------------------------------------------------------------- the seam
class Recorder:
    """A logger that keeps what it was given."""

    name = "recorder"

    def __init__(self):
        self.scalars, self.configs, self.closed = {}, [], []

    def log_config(self, config):
        self.configs.append(config)

    def log_scalars(self, step, scalars):
        for tag, value in scalars.items():
            self.scalars[tag, step] = value

    def close(self, error=None):
        self.closed.append(error)


def _recorded_run(tmp_path, monkeypatch, **overrides):
    import lmn.trainer.loop as loop

    logger = Recorder()

    def open_loggers(specs, run_dir, *, resumed, step, config, wandb_project=None):
        logger.log_config(config)
        return [logger]

    monkeypatch.setattr(loop, "check_available", lambda specs: None)
    monkeypatch.setattr(loop, "open_loggers", open_loggers)
    settings = dict(max_iters=4, eval_interval=2, eval_iters=1, block_size=16, batch_size=2, whole_val=False,
                    log_interval=1, model_config={"d_model": 8, "n_layers": 1})
    cfg = preset_config("smoke", data=str(small_corpus(tmp_path)), out_dir=str(tmp_path / "run"),
                        **{**settings, **overrides})
    return loop, cfg, logger


def test_the_loggers_get_every_record_and_close_when_the_run_finishes(tmp_path, monkeypatch):
    loop, cfg, logger = _recorded_run(tmp_path, monkeypatch, whole_val=True)
    train(cfg, stream=open(os.devnull, "w"), log="tensorboard")
    assert logger.closed == [None]
    assert logger.scalars == expected_scalars(cfg.out_dir)
    assert ("final/whole_val_loss", 4) in logger.scalars
    assert logger.configs == [json.loads((Path(cfg.out_dir) / "config.json").read_text())]


@pytest.mark.parametrize("how", ["diverged", "ctrl-c", "error"])
def test_the_loggers_close_on_every_exit_path_and_metrics_jsonl_keeps_its_records(tmp_path, monkeypatch, how):
    loop, cfg, logger = _recorded_run(tmp_path, monkeypatch)
    real, calls = loop.batch_loss, {"n": 0}
    raised = {"diverged": loop.TrainingDiverged, "ctrl-c": KeyboardInterrupt, "error": OSError}[how]

    def fail_at_3(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        if calls["n"] == 3 and how != "diverged":
            raise raised("stop")
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "batch_loss", fail_at_3)
    with pytest.raises(raised):
        train(cfg, stream=open(os.devnull, "w"), log=["tensorboard"])
    assert len(logger.closed) == 1 and isinstance(logger.closed[0], raised)
    assert {s for k, s in expected_scalars(cfg.out_dir) if k == "train/loss"} == {1, 2}
    assert logger.scalars == expected_scalars(cfg.out_dir)


def test_a_logger_that_fails_to_close_is_a_warning_and_the_run_stands(tmp_path, monkeypatch):
    from lmn.trainer.loggers import LoggerWarning

    loop, cfg, logger = _recorded_run(tmp_path, monkeypatch)

    def broken(error=None):
        raise OSError("disk gone")

    logger.close = broken
    with pytest.warns(LoggerWarning, match="did not close cleanly: OSError: disk gone"):
        summary = train(cfg, stream=open(os.devnull, "w"), log="tensorboard")
    assert summary["step"] == 4 and (Path(cfg.out_dir) / "final.json").is_file()


# ----------------------------------------------------------------------------- errors, and no flag
@pytest.mark.parametrize("name,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_package_is_one_line_naming_the_extra_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                                     name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    run = tmp_path / "run"
    status, _, err = run_cli(capsys, *_train_args(small_corpus(tmp_path), run, "--log", name))
    line = one_line(status, err, f"--log {name} needs the {name} package", f"pip install 'torch-lmn[{name}]'")
    assert line.startswith("lmn train: error:")
    assert not run.exists()


@pytest.mark.parametrize("argv,needle", [
    (["--log", "mlflow"], "--log 'mlflow': choose from tensorboard, wandb"),
    (["--log", "wandb:cloud"], "--log 'wandb:cloud'"),
    (["--log", "wandb", "--log", "wandb:offline"], "gives wandb twice"),
    (["--wandb-project", "p"], "--wandb-project names the project of --log wandb"),
])
def test_bad_log_options_are_one_line(tmp_path, capsys, argv, needle):
    run = tmp_path / "run"
    status, _, err = run_cli(capsys, *_train_args(small_corpus(tmp_path), run, *argv))
    one_line(status, err, needle)
    assert not run.exists()


def test_parse_log_accepts_repeated_and_comma_separated_names():
    from lmn.trainer.loggers import parse_log

    assert parse_log([]) == ()
    assert parse_log(["tensorboard,wandb:offline", "tensorboard"]) == ("tensorboard", "wandb:offline")
    assert parse_log("wandb, tensorboard") == ("wandb", "tensorboard")


def test_without_the_flag_nothing_new_is_written_or_imported(tmp_path):
    """A run without --log writes what it always wrote, and neither ``import lmn`` nor the
    run imports tensorboard or wandb (a fresh process: this one may have them loaded)."""
    run = tmp_path / "run"
    code = ("import sys; import lmn; from lmn.cli import main; "
            "status = main(sys.argv[1:]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorboard') "
            "or m.startswith('torch.utils.tensorboard'))); sys.exit(status)")
    argv = [str(a) for a in _train_args(small_corpus(tmp_path), run, "--max-iters", 2)]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "final.json", "lmn-run.json", "metrics.jsonl",
                                       "tokenizer.json"]
    assert read_run_manifest(run)["files"] == ["lmn-run.json", "lmn-run.lock", "config.json", "metrics.jsonl",
                                               "tokenizer.json", "checkpoints", "final.json"]
