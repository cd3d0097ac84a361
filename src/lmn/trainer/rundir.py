"""The run directory: its files, checkpoints that survive any kill, metrics, and loading a
run back.

One run = one directory::

    lmn-run.json       the run manifest: that this is an lmn run, and every name lmn wrote
                       here, each recorded before it is first written (``--force``
                       removes these and nothing else); written first
    lmn-run.lock       while a trainer runs: who holds the run (:mod:`lmn.trainer.lock`)
    config.json        the fully resolved TrainConfig (+ the task's record, e.g. the corpus,
                       parameter count, versions)
    tokenizer.json     the text task's tokenizer (char, bytes or bpe; lmn.data.load_tokenizer)
    metrics.jsonl      one JSON record per line: "train" (step, loss, tokens/s),
                       "eval" (step, <split>_loss, val_bpb for text), "final" (whole-split metrics)
    checkpoints/
      step-00000040/   one checkpoint, complete or absent:
        model.safetensors   weights (metadata: model kind, model config, step)
        trainer_state.pt    step, optimizer state, RNG states; read with
                            torch.load(weights_only=True), so no pickle code runs
        checkpoint.json     step, the sha256 of both files and the run's TrainConfig,
                            written last
      step-00000039/   the previous one, kept as a fallback
    final.json         the summary Table 1 is made from (at the end)
    best.safetensors   --keep-best only: the weights of the best validation estimate
    tb/                --log tensorboard only: its event files (:mod:`lmn.trainer.loggers`)
    wandb/             --log wandb only: wandb's run files
    wandb-run.json     --log wandb only: the wandb run id, which --resume continues

A checkpoint is written into ``checkpoints/.tmp-step-N-PID/`` (files, then their checksums,
each fsynced), then made current by one ``rename`` to ``checkpoints/step-N``: a kill at any
moment leaves either the old set of checkpoints or the new one, never a mixed one. A write
that fails (a full disk) is one :class:`CheckpointError` naming the file, and leaves the
previous checkpoints as they were. Readers take the newest checkpoint that loads -- its
files match their checksums and load into the model (and, resuming, into the trainer) --
and fall back to the one before if it does not. The trainer removes stale temporaries (of
a killed save) when it starts, and keeps the newest two checkpoints.

``--force`` removes what the manifest records and, in ``checkpoints/``, lmn's own step
directories (their files only: a step directory holding anything else is refused); other
files there, and ``checkpoints/`` itself when it is not empty then, stay. The loggers'
directories (``tb/``, ``wandb/``), recorded when lmn made them for a logger, go whole: what
is in them is the logger's. A run does not write into one that it did not record. Manifests of
format 1 listed the names lmn *may* write; of those, ``final.json`` and
``best.safetensors`` are removed only when their contents are lmn's.

Resuming compares config.json with the TrainConfig the checkpoint recorded
(:func:`check_config_unchanged`); checkpoints written before that record existed resume
without the check.

Run directories written before this layout (checkpoint format 1: ``model.safetensors`` and
``trainer_state.pt`` beside config.json, no manifest) still load and resume; their
checkpoint counts as one more candidate.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..data import load_tokenizer
from ..data.corpus import sha256_file
from ..limits import check_run_model
from .config import RESUMABLE_FIELDS, TrainConfig
from .lock import LOCK_FILE
from .models import build_model, normalize_model_config

RUN_MANIFEST = "lmn-run.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CHECKPOINT_MANIFEST = "checkpoint.json"
FINAL_FILE = "final.json"
BEST_FILE = "best.safetensors"  # --keep-best: the weights of the best validation estimate
TB_DIR = "tb"  # --log tensorboard: event files
WANDB_DIR = "wandb"  # --log wandb: wandb's run files
WANDB_RUN_FILE = "wandb-run.json"  # --log wandb: the wandb run id (resumed runs continue it)
LOGGER_DIRS = (TB_DIR, WANDB_DIR)  # directories lmn makes for a logger; --force removes them whole
# What lmn may write in a run directory (the task adds its own files, e.g. tokenizer.json);
# the manifest records which of them it did write.
RUN_FILES = (RUN_MANIFEST, LOCK_FILE, CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, FINAL_FILE, BEST_FILE, TB_DIR,
             WANDB_DIR, WANDB_RUN_FILE)
# What a run directory of checkpoint format 1 held (no manifest).
LEGACY_RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, FINAL_FILE)
# Names an older record (a format-1 manifest, a run without one) lists without saying they
# were written: removed by --force only when their contents are lmn's.
_UNCERTAIN_FILES = (FINAL_FILE, BEST_FILE, MODEL_FILE)
CHECKPOINT_FILES = (MODEL_FILE, STATE_FILE, CHECKPOINT_MANIFEST)  # what a step directory holds
CHECKPOINT_FORMAT = 2
RUN_FORMAT = 2  # 1: "files" listed every name lmn might write; 2: the names it wrote
PROGRAM = "lmn"  # the manifest's mark of a directory this package wrote (not a model kind)
KEEP_CHECKPOINTS = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")
_STALE_FILE = re.compile(r"^\.(.+)\.tmp\d+$")
_STALE_DIR = re.compile(r"^\.(?:tmp|trash)-step-\d+-\d+$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or belongs to another configuration."""


class DamagedCheckpoint(CheckpointError):
    """One checkpoint's files are missing, truncated or do not match their checksums."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over for an older, intact one."""


# ----------------------------------------------------------------------------- small files
def saved_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a run directory, checked to be lmn's (raises CheckpointError
    if absent, unreadable, or not an lmn run config)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file, not a run directory; give the directory lmn train wrote "
                              "(its --out)")
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("train"), dict):
        raise CheckpointError(f"{path} is not the config of an lmn run (no \"train\" entry); give a directory "
                              "written by lmn train")
    return doc


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) over ``path`` atomically (:func:`lmn.atomic.write_text`)."""
    atomic.write_text(path, text)


# ----------------------------------------------------------------------------- the run manifest
def read_run_manifest(run_dir: Path) -> dict | None:
    """The run manifest (``lmn-run.json``), or None when there is none or it is not lmn's."""
    try:
        doc = json.loads((Path(run_dir) / RUN_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("program") != PROGRAM or not isinstance(doc.get("files"), list):
        return None
    return doc


def _write_manifest(run_dir: Path, names: list[str], fmt: int = RUN_FORMAT) -> None:
    from .. import __version__

    doc = {"program": PROGRAM, "format": fmt, "lmn": __version__, "files": names,
           "note": "written by lmn train; lmn train --force removes the files listed here and nothing else"}
    atomic.write_text(run_dir / RUN_MANIFEST, atomic.dumps_json(doc, indent=2, where=run_dir / RUN_MANIFEST))


def write_run_manifest(run_dir: Path, files=()) -> None:
    """A new run manifest recording ``files`` (with itself and the lock file) as lmn's: the
    names about to be written."""
    _write_manifest(Path(run_dir), list(dict.fromkeys([RUN_MANIFEST, LOCK_FILE, *files])))


def record_files(run_dir: Path, *names: str) -> None:
    """Add ``names`` to the run manifest before they are first written (rewritten
    atomically, only when a name is new to it). A directory without a manifest (a caller of
    :func:`save_checkpoint` outside a run) records nothing."""
    manifest = read_run_manifest(run_dir)
    if manifest is None:
        return
    missing = [n for n in dict.fromkeys(names) if n not in manifest["files"]]
    if missing:
        fmt = manifest.get("format") if manifest.get("format") in (1, RUN_FORMAT) else RUN_FORMAT
        _write_manifest(Path(run_dir), [*manifest["files"], *missing], fmt)


def _is_legacy_run(run_dir: Path) -> bool:
    """A run directory written before the manifest existed: lmn's config.json."""
    try:
        doc = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("train"), dict) and "preset" in doc


def lmn_files(run_dir: Path) -> list[str] | None:
    """The names lmn wrote in ``run_dir`` by its own record (manifest, or the fixed set of a
    format-1 run); None when ``run_dir`` is not an lmn run."""
    manifest = read_run_manifest(run_dir)
    if manifest is not None:
        return [n for n in manifest["files"] if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]
    if _is_legacy_run(run_dir):
        return list(LEGACY_RUN_FILES)
    return None


def legacy_files(run_dir: Path) -> list[str]:
    """The files of a run without a manifest that are lmn's: what its trainer always wrote,
    and the names it may have written where their contents are lmn's (the record a resumed
    format-1 run gets)."""
    return [n for n in LEGACY_RUN_FILES
            if (run_dir / n).is_file() and (n not in _UNCERTAIN_FILES or _contents_are_lmns(run_dir / n))]


def _contents_are_lmns(path: Path) -> bool:
    """Whether ``path`` holds what lmn writes under its name (a summary, lmn weights)."""
    if path.name == FINAL_FILE:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(doc, dict) and {"model", "step", "params"} <= set(doc)
    try:
        _metadata(path)
    except CheckpointError:
        return False
    return True


def is_empty_run_dir(run_dir: Path) -> bool:
    """Nothing in ``run_dir`` but what a writer killed at once left (temporaries, a lock file)."""
    return all(e.name == LOCK_FILE or _is_stale_file(e) for e in run_dir.iterdir())


def clean_stale(run_dir: Path) -> None:
    """Remove what killed writers left, by lmn's own names only: ``.NAME.tmpPID`` files of
    the run's files, unfinished checkpoint directories and checkpoints half-way through
    deletion."""
    names = {*(lmn_files(run_dir) or ()), *LEGACY_RUN_FILES, RUN_MANIFEST}
    for entry in run_dir.iterdir() if run_dir.is_dir() else ():
        m = _STALE_FILE.match(entry.name)
        if m and m.group(1) in names and not entry.is_dir():
            entry.unlink(missing_ok=True)
    root = run_dir / CHECKPOINTS_DIR
    for entry in root.iterdir() if root.is_dir() else ():
        if _STALE_DIR.match(entry.name):
            _remove(entry)


def _is_stale_file(entry: Path, names=(*RUN_FILES, *LEGACY_RUN_FILES)) -> bool:
    m = _STALE_FILE.match(entry.name)
    return bool(m) and m.group(1) in names and not entry.is_dir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def removal_plan(run_dir: Path) -> list[Path]:
    """What ``--force`` deletes in ``run_dir``, in order (a directory: removed once empty),
    without touching anything. Files: the names the manifest records as written (of an
    older record, the uncertain ones only when their contents are lmn's), never the lock
    or a directory. In ``checkpoints/`` (when lmn made it): each ``step-N`` directory's
    files, then the directory, then ``checkpoints/`` if nothing else is left in it. A
    logger's directory (:data:`LOGGER_DIRS`, when recorded): everything in it, deepest
    first (links as links), then itself.

    Raises:
        CheckpointError: not an lmn run, or a step directory holds files lmn did not write.
    """
    manifest = read_run_manifest(run_dir)
    names = lmn_files(run_dir)
    if names is None:
        raise CheckpointError(f"{run_dir} is not an lmn run directory (no {RUN_MANIFEST}); not deleting anything in it")
    certain = manifest is not None and manifest.get("format") == RUN_FORMAT
    plan = []
    for name in names:
        path = run_dir / name
        if name in (RUN_MANIFEST, LOCK_FILE, CHECKPOINTS_DIR) or not path.is_file() and not path.is_symlink():
            continue  # the manifest is rewritten, the lock is this trainer's, directories are not lmn's files
        if certain or name not in _UNCERTAIN_FILES or _contents_are_lmns(path):
            plan.append(path)
    root = run_dir / CHECKPOINTS_DIR
    if CHECKPOINTS_DIR in names and root.is_dir() and not root.is_symlink():
        foreign = []
        for entry in sorted(root.iterdir()):
            if not (_STEP_DIR.match(entry.name) and entry.is_dir() and not entry.is_symlink()):
                continue  # not lmn's: stays
            inside = sorted(e.name for e in entry.iterdir())
            foreign += [f"{entry.name}/{n}" for n in inside if n not in CHECKPOINT_FILES]
            plan += [entry / n for n in inside if n in CHECKPOINT_FILES] + [entry]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise CheckpointError(f"refusing --force: {root} holds files lmn did not write inside its checkpoints "
                                  f"({shown}); move them out first")
        plan.append(root)
    for name in LOGGER_DIRS:
        top = run_dir / name
        if name in names and top.is_dir() and not top.is_symlink():
            for here, dirs, files in os.walk(top, topdown=False):  # links to directories are listed, not followed
                plan += [Path(here) / n for n in sorted(files)]
                plan += [Path(here) / n for n in sorted(dirs)]
            plan.append(top)
    return plan


def check_logger_dirs(run_dir: Path, names) -> None:
    """The loggers' names (``names``: those a run is about to write) must be new in
    ``run_dir`` or recorded as lmn's: a ``tb/`` or ``wandb/`` of someone else's is not
    written into (``--force`` would then remove it).

    Raises:
        ValueError: naming the path and what to do.
    """
    run_dir = Path(run_dir)
    recorded = set(lmn_files(run_dir) or ()) if run_dir.is_dir() else set()
    for name in names:
        path = run_dir / name
        if (path.exists() or path.is_symlink()) and name not in recorded:
            raise ValueError(f"{path} exists and lmn did not write it (its run manifest {RUN_MANIFEST} does not "
                             f"record it); --log would write there: move it away, or choose another --out")


def remove_run_files(run_dir: Path) -> None:
    """Delete what lmn's own record says it wrote in ``run_dir`` (:func:`removal_plan`) and
    its temporaries; the manifest stays (the caller writes the new one), so an interrupted
    removal can be repeated."""
    plan = removal_plan(run_dir)
    clean_stale(run_dir)
    for path in plan:
        if path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError:  # something not lmn's is left in it
                pass
        else:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """One checkpoint of a run: ``path`` holds its model and trainer-state files."""

    step: int
    path: Path
    format: int  # 2: a step directory; 1: the files beside config.json (older runs)

    @property
    def name(self) -> str:
        return self.path.name if self.format == 2 else f"{MODEL_FILE} (format 1)"


def _step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """Every committed checkpoint of the run, newest first (intact or not)."""
    run_dir = Path(run_dir)
    found = []
    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for entry in root.iterdir():
            m = _STEP_DIR.match(entry.name)
            if m and entry.is_dir():
                found.append(Checkpoint(int(m.group(1)), entry, 2))
    if (run_dir / MODEL_FILE).is_file():
        try:
            step = _metadata(run_dir / MODEL_FILE)["step"]
        except CheckpointError:
            step = -1
        found.append(Checkpoint(step, run_dir, 1))
    return sorted(found, key=lambda c: (c.step, c.format), reverse=True)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return bool(list_checkpoints(run_dir))


def weights_metadata(kind: str, model_config: dict, step: int) -> dict:
    """The metadata every lmn weights file carries (read back by the loaders)."""
    return {"format": "pt", "lmn_checkpoint": str(CHECKPOINT_FORMAT), "model": kind,
            "model_config": json.dumps(model_config, sort_keys=True), "step": str(step)}


def save_checkpoint(run_dir: Path, model: nn.Module, kind: str, model_config: dict, trainer_state: dict, *,
                    train_config: dict | None = None) -> Path:
    """Write checkpoint ``trainer_state["step"]`` as one unit (see the module docstring);
    then drop all but the newest :data:`KEEP_CHECKPOINTS`. Returns its directory.

    Args:
        train_config: the run's ``TrainConfig.to_dict()``, recorded in checkpoint.json (a
            resume compares config.json with it, :func:`check_config_unchanged`).
    Raises:
        CheckpointError: a file could not be written (a full disk: checked against the
            checkpoint's size first, then whatever the write hits), naming it; the previous
            checkpoints are left as they were.
    """
    step = int(trainer_state["step"])
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        record_files(run_dir, CHECKPOINTS_DIR)
        root.mkdir(exist_ok=True)
    final = _step_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    _remove(tmp)
    try:
        tmp.mkdir()
        state = {**trainer_state, "format": CHECKPOINT_FORMAT}
        atomic.check_space(final / MODEL_FILE, _nbytes(model.state_dict()) + _nbytes(state))
        _save_weights(model, tmp / MODEL_FILE, weights_metadata(kind, model_config, step))
        _save_state(state, tmp / STATE_FILE)
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "model": kind,
                    "files": {name: sha256_file(tmp / name) for name in (MODEL_FILE, STATE_FILE)}}
        if train_config is not None:
            manifest["train"] = train_config
        text = atomic.dumps_json(manifest, indent=2, where=final / CHECKPOINT_MANIFEST)
        (tmp / CHECKPOINT_MANIFEST).write_text(text, encoding="utf-8")
        for name in CHECKPOINT_FILES:
            atomic.fsync_path(tmp / name)
        atomic.fsync_dir(tmp)
        if final.exists():  # a damaged checkpoint of this step, passed over when resuming
            _discard(final)
        atomic.rename(tmp, final)  # the commit (then the checkpoints directory is fsynced)
    except OSError as err:
        _remove(tmp)
        raise CheckpointError(_write_failure(err, step, tmp, final, run_dir)) from None
    except BaseException:
        _remove(tmp)
        raise
    for old in reversed([c for c in list_checkpoints(run_dir) if c.format == 2][KEEP_CHECKPOINTS:]):
        _discard(old.path)
    return final


def _nbytes(value) -> int:
    """Bytes of the tensors in ``value`` (nested dicts, lists): what writing it needs at least."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _as_os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` a writer hit: itself, the one torch's writer wraps (its
    ``inline_container.cc`` message), or the one safetensors reports (``os error 28``)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"os error (\d+)|code: (\d+)", str(err))
    if found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code))


def _save_weights(model: nn.Module, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_model

    try:
        save_model(model, str(path), metadata=metadata)
    except Exception as err:  # safetensors reports I/O failures as its own error type
        os_err = _as_os_error(err)
        if os_err is None or os_err is err:
            raise
        raise OSError(os_err.errno, os_err.strerror, str(path)) from None


def _save_state(state: dict, path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write is the ``OSError`` it is
    (given a path, torch writes itself and says only ``PytorchStreamWriter failed``)."""
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
    except (RuntimeError, OSError) as err:
        os_err = _as_os_error(err)
        if os_err is None:
            raise
        raise OSError(os_err.errno, os_err.strerror, str(path)) from None


def _write_failure(err: OSError, step: int, tmp: Path, final: Path, run_dir: Path) -> str:
    """One line for a checkpoint that could not be written: what, where (the checkpoint's
    path, not its temporary), and that the earlier ones are intact."""
    name = os.fsdecode(err.filename) if err.filename is not None else str(final)
    if name.startswith(str(tmp)):
        name = str(final) + name[len(str(tmp)):]
    reason = err.strerror or str(err)
    fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    return (f"cannot write the checkpoint of step {step}: {reason}: {name}; the checkpoints before it are intact "
            f"({fix}, then continue with lmn train --out {run_dir} --resume)")


def save_best(run_dir: Path, weights: dict, kind: str, model_config: dict, step: int, val_loss: float) -> Path:
    """Write the best weights (``--keep-best``) as ``RUN/best.safetensors``, atomically, in
    the checkpoints' format (their metadata adds ``val_loss``)."""
    from safetensors.torch import save_file

    metadata = {**weights_metadata(kind, model_config, step), "val_loss": repr(float(val_loss))}
    path = Path(run_dir) / BEST_FILE
    record_files(Path(run_dir), BEST_FILE)
    with atomic.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=metadata)
    return path


def _discard(path: Path) -> None:
    """Rename a checkpoint directory out of the way (atomic), then delete it."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    atomic.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def discard_checkpoints_after(run_dir: Path, step: int) -> None:
    """Remove step directories newer than ``step`` (the damaged ones a resume passed over)."""
    for c in list_checkpoints(run_dir):
        if c.format == 2 and c.step > step:
            _discard(c.path)


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {"model": meta["model"], "model_config": json.loads(meta["model_config"]), "step": int(meta["step"])}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise DamagedCheckpoint(f"{path} is truncated or corrupted, or not an lmn checkpoint "
                                f"({type(err).__name__})") from None


def _verify(ckpt: Checkpoint, need_state: bool) -> None:
    """Raise DamagedCheckpoint unless the checkpoint's files are there and intact (the
    trainer state only when ``need_state``)."""
    if ckpt.format == 2:
        try:
            manifest = json.loads((ckpt.path / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
            sums = manifest["files"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise DamagedCheckpoint(f"{ckpt.path} has no readable {CHECKPOINT_MANIFEST}") from None
        for name in (MODEL_FILE, STATE_FILE) if need_state else (MODEL_FILE,):
            path = ckpt.path / name
            if not path.is_file():
                raise DamagedCheckpoint(f"{path} is missing")
            if sha256_file(path) != sums.get(name):
                raise DamagedCheckpoint(f"{path} is corrupted (its sha256 differs from {CHECKPOINT_MANIFEST})")
        return
    # format 1: trainer_state.pt holds the weights' sha256
    state_path = ckpt.path / STATE_FILE
    if not state_path.is_file():
        if need_state:
            raise DamagedCheckpoint(f"no trainer state in {ckpt.path} (missing {STATE_FILE})")
        return
    try:
        state = _torch_load(state_path)
    except DamagedCheckpoint:
        if need_state:
            raise
        return  # the weights alone may still be intact; safetensors checks their layout
    if sha256_file(ckpt.path / MODEL_FILE) != state.get("model_sha256"):
        raise DamagedCheckpoint(f"{ckpt.path / MODEL_FILE} does not match {STATE_FILE} (sha256 differs): corrupted "
                                "or interrupted while saving")


def _torch_load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's message suggests weights_only=False: never right for a file like this
        raise DamagedCheckpoint(f"{path} is truncated or corrupted (it does not load as a trainer state)") from None
    if not isinstance(state, dict) or state.get("format") not in (1, CHECKPOINT_FORMAT):
        raise DamagedCheckpoint(f"{path} is not an lmn trainer state")
    return state


def read_checkpoint_metadata(run_dir: str | os.PathLike) -> dict:
    """Metadata of the newest intact checkpoint's weights: ``{"model": kind,
    "model_config": dict, "step": int}``."""
    return _metadata(newest_checkpoint(run_dir, need_state=False).path / MODEL_FILE)


def _candidates(run_dir: Path) -> list[Checkpoint]:
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"{run_dir} has no checkpoint yet (it stopped before its first one); continue it with "
                              f"lmn train --out {run_dir} --resume")
    return candidates


def _passed_over(problems: list[str], ckpt: Checkpoint) -> None:
    for problem in problems:
        warnings.warn(f"passing over a damaged checkpoint: {problem}; using {ckpt.name} (step {ckpt.step})",
                      CheckpointWarning, stacklevel=5)


def newest_checkpoint(run_dir: str | os.PathLike, *, need_state: bool) -> Checkpoint:
    """The newest checkpoint whose files are intact (warning about each damaged one passed
    over); whether it also loads is :func:`load_checkpoint`'s to find out.

    Raises:
        CheckpointError: the run has none, or every one is damaged.
    """
    def verified(ckpt: Checkpoint) -> Checkpoint:
        _verify(ckpt, need_state)
        return ckpt

    return _first_intact(Path(run_dir), verified)


def _first_intact(run_dir: Path, attempt):
    """``attempt(checkpoint)`` for the newest checkpoint where it raises no
    :class:`DamagedCheckpoint`; the ones passed over are said in one CheckpointWarning."""
    problems = []
    for ckpt in _candidates(run_dir):
        try:
            result = attempt(ckpt)
        except DamagedCheckpoint as err:
            problems.append(str(err))
            continue
        _passed_over(problems, ckpt)
        return result
    raise DamagedCheckpoint(f"no intact checkpoint in {run_dir}: {'; '.join(problems)}")


def load_trainer_state(run_dir: str | os.PathLike) -> dict:
    """The trainer state of the newest intact checkpoint."""
    return _torch_load(newest_checkpoint(run_dir, need_state=True).path / STATE_FILE)


def load_checkpoint(
    run_dir: str | os.PathLike, model: nn.Module, kind: str, model_config: dict, *, require_state: bool,
    restore=None,
) -> dict | None:
    """Load the newest checkpoint that loads into ``model`` after checking it was made by
    this model kind and config. A checkpoint whose files do not match their checksums, or
    match them but do not load (weights of other shapes, a trainer state torch refuses or
    ``restore`` cannot use), is passed over with a :class:`CheckpointWarning` for the one
    before.

    Args:
        require_state: the checkpoint must also have an intact trainer state (resuming);
            otherwise only the weights are needed (a damaged state does not block them).
        restore: called with the trainer state once the weights are in; a ``KeyError``,
            ``ValueError``, ``TypeError``, ``IndexError`` or ``RuntimeError`` it raises
            means the state does not fit (the next checkpoint is tried).
    Returns:
        the trainer state (with ``"step"``), or None when not ``require_state``.
    Raises:
        CheckpointError: none loads, or the checkpoint is of another configuration.
    """
    run_dir = Path(run_dir)
    return _first_intact(run_dir, lambda ckpt: _load_one(run_dir, ckpt, model, kind, model_config,
                                                         require_state, restore))


def _load_one(run_dir: Path, ckpt: Checkpoint, model: nn.Module, kind: str, model_config: dict,
              require_state: bool, restore) -> dict | None:
    from safetensors.torch import load_model

    _verify(ckpt, require_state)
    meta = _metadata(ckpt.path / MODEL_FILE)
    where = f"checkpoint {ckpt.name} of {run_dir}"
    if meta["model"] != kind:
        raise CheckpointError(f"{where} is a {meta['model']!r} model, not {kind!r}")
    try:
        saved_model_config = normalize_model_config(kind, meta["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where} has a model config this version cannot read ({err})") from None
    if saved_model_config != model_config:
        raise CheckpointError(f"{where} was saved from another model config: "
                              f"{_dict_diff(saved_model_config, model_config)}")
    state = _torch_load(ckpt.path / STATE_FILE) if require_state else None
    try:
        load_model(model, str(ckpt.path / MODEL_FILE), strict=True)
    except Exception as err:  # e.g. tensors of other shapes than the config's: not this model's weights
        raise DamagedCheckpoint(f"{ckpt.path / MODEL_FILE} does not load into the model "
                                f"({_first_line(err)})") from None
    if restore is not None:
        try:
            restore(state)
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
            raise DamagedCheckpoint(f"{ckpt.path / STATE_FILE} does not fit this run "
                                    f"({type(err).__name__}: {_first_line(err)})") from None
    return state


def _first_line(err: BaseException) -> str:
    """The first informative line of ``err`` (past a heading such as torch's "Error(s) in
    loading state_dict for LMN:")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1]
    return lines[0] if lines else type(err).__name__


def checkpoint_train_config(ckpt: Checkpoint) -> dict | None:
    """The TrainConfig (``to_dict()`` form) a checkpoint recorded, or None: written before
    checkpoints recorded it, or of format 1."""
    if ckpt.format != 2:
        return None
    try:
        recorded = json.loads((ckpt.path / CHECKPOINT_MANIFEST).read_text(encoding="utf-8")).get("train")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _with_defaults(train: dict) -> dict:
    base = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in fields(TrainConfig)}
    return {**base, **train}


def _show(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def check_config_unchanged(run_dir: str | os.PathLike, saved: dict) -> None:
    """Resuming: config.json's ``"train"`` (``saved``, the parsed file) must be what the
    newest checkpoint recorded, but for :data:`RESUMABLE_FIELDS` (a flag given on resume
    rewrites them); every checkpoint of a run records the same. A run whose checkpoints
    have no record (written before lmn kept it) is not checked. Nothing is hashed here:
    whether the checkpoint is intact is the loader's to find out.

    Raises:
        CheckpointError: naming each field that differs, ``train.lr 0.001 -> 0.5``.
    """
    run_dir = Path(run_dir)
    for ckpt in list_checkpoints(run_dir):
        recorded = checkpoint_train_config(ckpt)
        if recorded is not None:
            break
    else:
        return
    if not isinstance(saved.get("train"), dict):
        return
    old, now = _with_defaults(recorded), _with_defaults(saved["train"])
    diffs = []
    for key in old:
        if key in RESUMABLE_FIELDS or old[key] == now.get(key):
            continue
        if key == "model_config" and isinstance(now.get(key), dict) and old["model"] == now.get("model"):
            try:
                a, b = (normalize_model_config(old["model"], c) for c in (old[key], now[key]))
            except (TypeError, ValueError):
                a, b = old[key], now[key]
            diffs += [f"train.model_config.{k} {_show(a.get(k, '<unset>'))} -> {_show(b.get(k, '<unset>'))}"
                      for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
        else:
            diffs.append(f"train.{key} {_show(old[key])} -> {_show(now.get(key, '<unset>'))}")
    diffs += [f"train.{key} (unknown) {_show(now[key])}" for key in now if key not in old]
    if diffs:
        raise CheckpointError(f"cannot resume {run_dir}: {CONFIG_FILE} was changed since checkpoint step {ckpt.step} "
                              f"({'; '.join(diffs)}); restore it or start a new run")


def _dict_diff(saved: dict, wanted: dict) -> str:
    keys = sorted(set(saved) | set(wanted))
    parts = [f"{k}={saved.get(k, '<unset>')!r} (checkpoint) vs {wanted.get(k, '<unset>')!r} (now)"
             for k in keys if saved.get(k, "<unset>") != wanted.get(k, "<unset>")]
    return "; ".join(parts)


# ----------------------------------------------------------------------------- metrics
def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} has no {METRICS_FILE}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # a line cut short by a kill: ignore it
                break
            raise CheckpointError(f"{path}:{n} is not valid JSON") from None
        if not isinstance(record, dict) or "type" not in record or "step" not in record:
            raise CheckpointError(f"{path}:{n} is not an lmn metrics record")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- the directory
def prepare_run_dir(cfg: TrainConfig, *, resume: bool, force: bool) -> tuple[Path, bool]:
    """Check (without writing) that the run directory may be used.

    Returns:
        ``(run_dir, from_checkpoint)``: whether the run continues from a checkpoint (else
        it starts at step 0, in a new or emptied directory).
    Raises:
        ValueError, CheckpointError: the directory may not be used, saying what to do.
    """
    run_dir = Path(cfg.out_dir)
    if resume and force:
        raise ValueError("--resume and --force exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} exists and is not a directory; choose another --out")
    if not run_dir.is_dir() or is_empty_run_dir(run_dir):
        return run_dir, False  # new, empty, or holding only what a writer killed at once left
    names = lmn_files(run_dir)
    if names is None:
        what = "cannot resume" if resume else ("refusing --force" if force else "cannot start a run")
        raise ValueError(f"{what}: {run_dir} is not empty and is not an lmn run directory (no {RUN_MANIFEST}); "
                         "choose another --out")
    if force:
        removal_plan(run_dir)  # refuses now what it would refuse later, before anything is written
        return run_dir, False
    started = has_checkpoint(run_dir)
    if resume:
        if started:
            with warnings.catch_warnings():  # said once, when the checkpoint is loaded
                warnings.simplefilter("ignore", CheckpointWarning)
                newest_checkpoint(run_dir, need_state=True)  # fails now, before anything is written
        return run_dir, started
    if not started:  # stopped before its first checkpoint: nothing to lose, start it again
        return run_dir, False
    raise ValueError(f"run directory {run_dir} already holds a run; pass --resume to continue it, "
                     "--force to start over in it (deletes lmn's files there), or choose another --out")


def check_resume_model(run_dir: Path, model: str, saved: dict) -> None:
    """Resuming with ``--model`` must name the run's own kind (its config fits no other)."""
    kind = saved.get("train", {}).get("model", "lmn")
    if model != kind:
        raise CheckpointError(f"{run_dir} was trained with --model {kind}; resume with --model {kind} "
                              "(or omit --model)")


def check_resume_compatible(cfg: TrainConfig, saved: dict, task) -> None:
    """The run's saved config must equal ``cfg`` but for :data:`RESUMABLE_FIELDS`, and its
    task record (e.g. the corpus sha256) must match ``task``'s."""
    try:
        task.check_resume(Path(cfg.out_dir), saved.get(task.record_key, {}))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    try:
        old = TrainConfig.from_dict(saved["train"])
        old.model_config = normalize_model_config(old.model, old.model_config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{Path(cfg.out_dir) / CONFIG_FILE} is not a valid run config ({err})") from None
    diffs = [
        f"{f.name}={getattr(old, f.name)!r} (run) vs {getattr(cfg, f.name)!r} (now)"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_FIELDS and getattr(old, f.name) != getattr(cfg, f.name)
    ]
    if diffs:
        raise CheckpointError(f"cannot resume {cfg.out_dir} with a different configuration: {'; '.join(diffs)}")


def last_eval(run_dir: Path, upto: int) -> dict | None:
    """The last "eval" record at or before step ``upto``."""
    evals = [r for r in read_metrics(run_dir) if r.get("type") == "eval" and r["step"] <= upto]
    return evals[-1] if evals else None


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, object, dict]:
    """Model (eval mode), tokenizer and config.json of a trained run directory, from its
    newest checkpoint with intact weights. The tokenizer is the run's own, of any kind
    (:func:`lmn.data.load_tokenizer`: char, bytes or bpe)."""
    run_dir = Path(run_dir)
    doc = saved_config(run_dir)
    try:
        cfg = TrainConfig.from_dict(doc["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} is not a valid run config ({err})") from None
    try:
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if cfg.model_config.get("vocab_size") != tokenizer.vocab_size:
        unit = "characters" if tokenizer.kind == "char" else "symbols"
        raise CheckpointError(f"{run_dir}: tokenizer has {tokenizer.vocab_size} {unit} but the model "
                              f"expects vocab_size {cfg.model_config.get('vocab_size')}")
    try:  # completed with fields added since the run was made (they default to its behaviour)
        model_config = normalize_model_config(cfg.model, cfg.model_config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} has a model config this version cannot read ({err})") from None
    check_run_model(run_dir, cfg.model, model_config, device)  # its checkpoint's config, and the memory
    model = build_model(cfg.model, model_config)
    load_checkpoint(run_dir, model, cfg.model, model_config, require_state=False)
    return model.to(device).eval(), tokenizer, doc
