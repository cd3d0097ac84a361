"""The run directory: its files, atomic checkpoints, metrics, and loading a run back.

One run = one directory::

    config.json        the fully resolved TrainConfig (+ the task's record, e.g. the corpus,
                       parameter count, versions)
    tokenizer.json     the character vocabulary of the corpus (text task)
    metrics.jsonl      one JSON record per line: "train" (step, loss, tokens/s),
                       "eval" (step, <split>_loss), "final" (whole-split metrics)
    model.safetensors  weights (metadata: model kind, model config, step)
    trainer_state.pt   step, optimizer state, RNG states, sha256 of model.safetensors;
                       read with torch.load(weights_only=True), so no pickle code runs
    final.json         the summary Table 1 is made from
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from ..data import CharTokenizer
from ..data.corpus import sha256_file
from .config import RESUMABLE_FIELDS, TrainConfig
from .models import build_model, normalize_model_config

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
FINAL_FILE = "final.json"
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, FINAL_FILE)
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or belongs to another configuration."""


def saved_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a run directory (raises CheckpointError if absent or unreadable)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers see the old file or the new
    one, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_checkpoint(run_dir: Path, model: nn.Module, kind: str, model_config: dict, trainer_state: dict) -> None:
    """Weights to model.safetensors, then ``trainer_state`` (+ the weights' sha256) to
    trainer_state.pt, each atomically. A crash between the two renames leaves a pair whose
    sha256 disagrees, which loading reports."""
    from safetensors.torch import save_model

    step = trainer_state["step"]
    metadata = {
        "format": "pt",
        "lmn_checkpoint": str(CHECKPOINT_FORMAT),
        "model": kind,
        "model_config": json.dumps(model_config, sort_keys=True),
        "step": str(step),
    }
    model_path = run_dir / MODEL_FILE
    _atomic_write(model_path, lambda tmp: save_model(model, str(tmp), metadata=metadata))
    state = {**trainer_state, "format": CHECKPOINT_FORMAT, "model_sha256": sha256_file(model_path)}
    _atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def read_checkpoint_metadata(run_dir: str | os.PathLike) -> dict:
    """Metadata of model.safetensors: ``{"model": kind, "model_config": dict, "step": int}``."""
    from safetensors import safe_open

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} (missing {MODEL_FILE})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {"model": meta["model"], "model_config": json.loads(meta["model_config"]), "step": int(meta["step"])}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is truncated or corrupted, or not an lmn checkpoint ({err})") from None


def load_trainer_state(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"no trainer state in {run_dir} (missing {STATE_FILE}); nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is truncated or corrupted ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an lmn trainer state of format {CHECKPOINT_FORMAT}")
    return state


def load_checkpoint(
    run_dir: str | os.PathLike, model: nn.Module, kind: str, model_config: dict, *, require_state: bool
) -> dict | None:
    """Load weights into ``model`` after checking the checkpoint was made by this model
    kind and config; verify them against trainer_state.pt's sha256 when that file exists.

    Returns:
        the trainer state (or None when absent and not ``require_state``).
    Raises:
        CheckpointError: missing, truncated, corrupted, or another configuration.
    """
    from safetensors.torch import load_model

    meta = read_checkpoint_metadata(run_dir)
    if meta["model"] != kind:
        raise CheckpointError(f"checkpoint in {run_dir} is a {meta['model']!r} model, not {kind!r}")
    try:
        saved_model_config = normalize_model_config(kind, meta["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint in {run_dir} has a model config this version cannot read ({err})") from None
    if saved_model_config != model_config:
        diffs = _dict_diff(saved_model_config, model_config)
        raise CheckpointError(f"checkpoint in {run_dir} was saved from another model config: {diffs}")
    state = None
    if require_state or (Path(run_dir) / STATE_FILE).exists():
        state = load_trainer_state(run_dir)
        if sha256_file(Path(run_dir) / MODEL_FILE) != state.get("model_sha256"):
            raise CheckpointError(
                f"{MODEL_FILE} in {run_dir} does not match {STATE_FILE} (sha256 differs): the checkpoint is "
                "corrupted or was interrupted while saving"
            )
    try:
        load_model(model, str(Path(run_dir) / MODEL_FILE), strict=True)
    except Exception as err:
        raise CheckpointError(f"cannot load weights from {run_dir}: {err}") from None
    return state


def _dict_diff(saved: dict, wanted: dict) -> str:
    keys = sorted(set(saved) | set(wanted))
    parts = [f"{k}={saved.get(k, '<unset>')!r} (checkpoint) vs {wanted.get(k, '<unset>')!r} (now)"
             for k in keys if saved.get(k, "<unset>") != wanted.get(k, "<unset>")]
    return "; ".join(parts)


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
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a line cut short by a crash: ignore it
                break
            raise CheckpointError(f"{path}:{n} is not valid JSON") from None
    return records


def prepare_run_dir(cfg: TrainConfig, *, resume: bool, force: bool) -> Path:
    """Check (without writing) that the run directory may be used."""
    run_dir = Path(cfg.out_dir)
    if resume and force:
        raise ValueError("--resume and --force exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} exists and is not a directory")
    if resume:
        for name in (CONFIG_FILE, MODEL_FILE, STATE_FILE):
            if not (run_dir / name).is_file():
                raise CheckpointError(f"cannot resume: {run_dir / name} does not exist")
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise ValueError(
            f"run directory {run_dir} already exists and is not empty; pass --resume to continue it, "
            "--force to start over in it, or choose another --out"
        )
    return run_dir


def check_resume_compatible(cfg: TrainConfig, saved: dict, task) -> None:
    """The run's saved config must equal ``cfg`` but for :data:`RESUMABLE_FIELDS`, and its
    task record (e.g. the corpus sha256) must match ``task``'s."""
    old = TrainConfig.from_dict(saved["train"])
    old.model_config = normalize_model_config(old.model, old.model_config)
    diffs = [
        f"{f.name}={getattr(old, f.name)!r} (run) vs {getattr(cfg, f.name)!r} (now)"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_FIELDS and getattr(old, f.name) != getattr(cfg, f.name)
    ]
    if diffs:
        raise CheckpointError(f"cannot resume {cfg.out_dir} with a different configuration: {'; '.join(diffs)}")
    try:
        task.check_resume(Path(cfg.out_dir), saved.get(task.record_key, {}))
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def last_eval(run_dir: Path, upto: int) -> dict | None:
    """The last "eval" record at or before step ``upto``."""
    evals = [r for r in read_metrics(run_dir) if r.get("type") == "eval" and r["step"] <= upto]
    return evals[-1] if evals else None


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, CharTokenizer, dict]:
    """Model (eval mode), tokenizer and config.json of a trained run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    doc = saved_config(run_dir)
    try:
        cfg = TrainConfig.from_dict(doc["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} is not a valid run config ({err})") from None
    tokenizer = CharTokenizer.load(run_dir / TOKENIZER_FILE)
    if cfg.model_config.get("vocab_size") != tokenizer.vocab_size:
        raise CheckpointError(f"{run_dir}: tokenizer has {tokenizer.vocab_size} characters but the model "
                              f"expects vocab_size {cfg.model_config.get('vocab_size')}")
    try:  # completed with fields added since the run was made (they default to its behaviour)
        model_config = normalize_model_config(cfg.model, cfg.model_config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} has a model config this version cannot read ({err})") from None
    model = build_model(cfg.model, model_config)
    load_checkpoint(run_dir, model, cfg.model, model_config, require_state=False)
    return model.to(device).eval(), tokenizer, doc
