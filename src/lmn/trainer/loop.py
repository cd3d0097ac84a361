"""The training run: set up (task, model, optimizer, run directory), loop, finish.

``train(cfg)`` reads top to bottom as the run goes: check the configuration, build the task
and the model, restore a checkpoint when resuming, write the run directory, then alternate
evaluation, checkpoints and optimizer steps until ``max_iters``, and finish with the
whole-split evaluation and ``final.json``.

Steps count optimizer updates: the "train" record of step s holds the loss of the batch
that produced update s; the "eval" record of step s is measured after s updates.

Determinism: weights are initialised after ``torch.manual_seed(seed)``; training batches
come from a ``torch.Generator`` seeded ``seed`` (checkpointed with the optimizer and the
weights), and the estimate at step s from a generator seeded by ``(seed, s)`` alone
(:mod:`lmn.trainer.evaluation`). A resumed run therefore takes bit-identical steps (on the
same device and thread count). The torch thread count is the caller's to set (the ``lmn``
command sets it from ``cfg.threads``).

Safety: the run directory is locked for the whole session (:mod:`lmn.trainer.lock`; process
0 holds it), taken before anything in it is read when it exists, else when it is made. A
loss or weights that become NaN or infinite stop the run (:class:`TrainingDiverged`) before
a checkpoint or summary of them is written: the last good checkpoint stays the newest. Every
record written is strict JSON (a non-finite number is null, named under ``"non_finite"``).
Under DDP/FSDP what process 0 alone does (the lock, the run directory, checkpoints) ends in
one agreement: when it fails, every process stops.

Experiment loggers (``log=("tensorboard", "wandb")``, :mod:`lmn.trainer.loggers`) get each
record after metrics.jsonl has it, on process 0, and are closed however the session ends.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import torch
from torch import nn

from .. import atomic
from ..limits import check_train
from ..tasks import Task, make_task
from .config import DTYPES, TrainConfig
from .distributed import Dist, init_distributed
from .evaluation import batch_loss, check_takes_documents, estimate_loss, evaluate_whole, local_batch
from .fsdp import check_fsdp, full_checkpoint, is_sharded, plain_model, reshard_optimizer, shard_model
from .models import (build_model, check_model_config, check_positions, check_requirements,
                     enable_gradient_checkpointing, num_parameters, resolve_model_config, versions)
from .optim import clip_gradients, make_optimizer, set_lr
from ..records import git_commit
from .lock import LOCK_FILE, RunLock
from .loggers import check_available, close_loggers, log_record, logger_files, open_loggers, parse_log
from .progress import DeferredStop, Progress, machine_info
from .rundir import (CONFIG_FILE, FINAL_FILE, METRICS_FILE, CheckpointError, atomic_write_text,
                     check_config_unchanged, check_logger_dirs, check_resume_compatible, check_resume_model, clean_stale,
                     discard_checkpoints_after, is_empty_run_dir, last_eval, legacy_files, lmn_files, load_checkpoint,
                     prepare_run_dir, read_metrics, read_run_manifest, record_files, remove_run_files, save_best,
                     save_checkpoint, saved_config, write_run_manifest)


# what a run records of where and how it ran (final.json; result tables copy it per run)
PROVENANCE = ("git", "machine", "threads", "versions")


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite; the run stopped before saving them."""


@dataclass
class Run:
    """What one training session holds; the loop's functions read and advance it."""

    cfg: TrainConfig
    task: Task
    run_dir: Path
    dist: Dist
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # made after the run directory is written
    train_gen: torch.Generator
    preset: str | None
    progress: Progress
    lock: RunLock | None = None  # the run directory's, held by process 0
    saved_step: int | None = None  # the newest checkpoint on disk (of this session or the one resumed)
    autocast: object = None
    train_model: nn.Module | None = None  # the DDP wrapper, or the model itself
    metrics: IO | None = None  # metrics.jsonl, open on the main process only
    log_specs: tuple = ()  # --log: the experiment loggers asked for (lmn.trainer.loggers.parse_log)
    wandb_project: str | None = None
    loggers: list = field(default_factory=list)  # open on the main process only
    step: int = 0
    start_step: int = 0
    from_checkpoint: bool = False  # resumed: a checkpoint of start_step exists already
    elapsed_before: float = 0.0  # wall seconds of earlier sessions of this run
    train_time_before: float = 0.0  # seconds in training steps of earlier sessions
    train_time: float = 0.0  # seconds in training steps of this session
    t_start: float = 0.0
    last_eval: dict | None = None
    window_t: float = 0.0  # time and steps since the last "train" record
    window_steps: int = 0
    # --early-stop / --keep-best: {"step", "val_loss", "since" (evaluations without improvement),
    # "weights" (CPU copies, --keep-best only)}; checkpointed with the trainer state
    best: dict | None = None
    stopped_early: bool = False

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def log(self, record: dict) -> None:
        """One record: to metrics.jsonl (written and flushed first), then to the loggers."""
        if self.metrics is not None:
            self.metrics.write(json_line(record))
            self.metrics.flush()
        log_record(self.loggers, record)


def strict_json(doc: dict) -> dict:
    """``doc`` with every non-finite float of its top level as null, and their values named
    under ``"non_finite"`` (``{"loss": "nan"}``): strict JSON that keeps what happened."""
    bad = {k: repr(v) for k, v in doc.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return doc
    return {**{k: None if k in bad else v for k, v in doc.items()}, "non_finite": bad}


def json_line(record: dict) -> str:
    """One metrics.jsonl line: strict JSON (:func:`strict_json`), newline-terminated."""
    return json.dumps(strict_json(record), allow_nan=False) + "\n"


def _on_main(dist: Dist, fn) -> None:
    """Run ``fn`` on process 0 only, then agree: every process raises when it failed (its
    own error on process 0; a CheckpointError pointing to it elsewhere). One process: just
    ``fn``. Replaces a barrier."""
    err = None
    if dist.is_main:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- re-raised below, after the others know
            err = e
    failed = dist.mean(0.0 if err is None else 1.0) > 0 if dist.enabled else err is not None
    if err is not None:
        raise err
    if failed:
        raise CheckpointError("process 0 stopped with an error (its message says why); this process stops too")


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False, preset: str | None = None,
          stream=None, log=(), wandb_project: str | None = None) -> dict:
    """Run (or resume) training as configured; returns the final summary (final.json).

    Args:
        cfg: the run's configuration; ``cfg.model_config`` may be partial.
        resume: continue the run in ``cfg.out_dir`` from its newest intact checkpoint (at
            step 0 when it has none yet).
        force: start over in an existing lmn run directory (deleting only what lmn wrote).
        preset: name recorded in config.json.
        stream: where progress goes (default stderr); only process 0 writes.
        log: experiment loggers beside metrics.jsonl (:func:`lmn.trainer.loggers.parse_log`:
            ``"tensorboard"``, ``"wandb"``, ``"wandb:offline"``, comma-separated or a list);
            their packages are checked before anything else.
        wandb_project: the wandb project (default: the one the run recorded, else
            ``$WANDB_PROJECT``, else ``lmn``).
    Raises:
        ValueError, CorpusError, CheckpointError: bad configuration, data or checkpoint.
    """
    specs = parse_log(log)
    check_available(specs)  # before anything is read, written or trained
    dist, device = init_distributed(cfg.device)
    dist.share(cfg.batch_size)  # divisible by the number of processes
    check_fsdp(cfg, dist.world_size)
    check_requirements(cfg.model)
    lock = RunLock(cfg.out_dir)
    try:
        _on_main(dist, lambda: _lock_existing(lock))  # before the directory is read: one trainer at a time
        return _train(cfg, dist, device, lock, resume=resume, force=force, preset=preset, stream=stream,
                      log_specs=specs, wandb_project=wandb_project)
    finally:
        lock.release()


def _lock_existing(lock: RunLock) -> None:
    """Take the lock of an existing run directory that may be used (an lmn run, or empty);
    a directory that is neither is refused by :func:`prepare_run_dir` without a lock file
    appearing in it, a new one is locked when it is made (:func:`_write_run_dir`)."""
    run_dir = lock.run_dir
    if run_dir.is_dir() and (lmn_files(run_dir) is not None or is_empty_run_dir(run_dir)):
        lock.acquire()


def _train(cfg: TrainConfig, dist: Dist, device, lock: RunLock, *, resume: bool, force: bool, preset, stream,
           log_specs: tuple = (), wandb_project: str | None = None) -> dict:
    run_dir, from_checkpoint = prepare_run_dir(cfg, resume=resume, force=force)
    if log_specs:
        _on_main(dist, lambda: check_logger_dirs(run_dir, logger_files(log_specs)))
    saved = saved_config(run_dir) if resume and (run_dir / CONFIG_FILE).is_file() else None
    if saved is not None:  # what the run is, before the options are read as another kind's
        check_resume_model(run_dir, cfg.model, saved)
        if from_checkpoint:
            check_config_unchanged(run_dir, saved)  # a hand-edited config.json is not used silently
    check_model_config(cfg.model, cfg.model_config, cfg.model_size)  # bad options fail before any I/O
    task = make_task(cfg)
    if saved is not None:  # the data first: a changed corpus also changes the vocabulary
        try:
            task.check_resume(run_dir, saved.get(task.record_key, {}))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    cfg = replace(cfg, model_config=resolve_model_config(cfg.model, cfg.model_config, task.vocab_size,
                                                         cfg.model_size))
    check_positions(cfg.model, cfg.model_config, task.seq_len)
    check_train(cfg, task.seq_len, device, dist.world_size)  # sizes that cannot fit: refused before any I/O
    if saved is not None:
        check_resume_compatible(cfg, saved, task)
        preset = preset or saved.get("preset")
    run = _build(cfg, task, run_dir, dist, device, preset, stream)
    if cfg.packing:  # a kind that cannot reset at document boundaries: refused before anything is written
        check_takes_documents(run.model, remedy=f"train {cfg.model!r} without --packing")
    run.lock = lock
    run.log_specs, run.wandb_project = log_specs, wandb_project
    if not from_checkpoint:
        if resume:
            run.progress.message(f"{run_dir} has no checkpoint yet: starting at step 0")
        _write_run_dir(run)  # before the optimizer, whose first construction imports torch._dynamo (seconds):
    run.optimizer = make_optimizer(run.model, cfg)
    if from_checkpoint:  # a kill from here on finds a run directory that resumes
        _restore(run)
        _write_run_dir(run)
    _wrap(run)
    try:
        _on_main(dist, lambda: _open_loggers(run))
        with DeferredStop(enabled=not dist.enabled) as stop:
            _loop(run, stop)
        summary = _finish(run)
    except BaseException as err:  # diverged, stopped, failed: the loggers close too, then it goes on
        _close(run, err)
        raise
    _close(run, None)
    return summary


# ----------------------------------------------------------------------------- setup
def _build(cfg: TrainConfig, task: Task, run_dir: Path, dist: Dist, device, preset, stream) -> Run:
    """Model (seeded init) and training generator: a run at step 0 (its optimizer is made
    next, by :func:`train`)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.model_config).to(device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(cfg.model, model)
    train_gen = torch.Generator().manual_seed(cfg.seed)
    autocast = torch.autocast(device.type, dtype=DTYPES[cfg.dtype]) if cfg.dtype != "float32" else nullcontext()
    return Run(cfg=cfg, task=task, run_dir=run_dir, dist=dist, device=device, model=model, optimizer=None,
               train_gen=train_gen, preset=preset, autocast=autocast,
               progress=Progress(cfg.max_iters, stream, enabled=dist.is_main))


def _restore(run: Run) -> None:
    """Weights, optimizer, RNG states and clocks from the run directory's checkpoint."""
    cfg = run.cfg

    def restore(state: dict) -> None:  # a state that does not fit passes the checkpoint over for the one before
        run.optimizer.load_state_dict(state["optimizer"])
        run.train_gen.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch"])
        run.step = run.start_step = int(state["step"])
        run.elapsed_before, run.train_time_before = float(state["elapsed_s"]), float(state["train_time_s"])
        run.best = state.get("best")

    load_checkpoint(run.run_dir, run.model, cfg.model, cfg.model_config, require_state=True, restore=restore)
    run.from_checkpoint = True
    run.saved_step = run.step
    if run.step > cfg.max_iters:
        raise ValueError(f"{run.run_dir} is already at step {run.step}; --max-iters {cfg.max_iters} cannot go "
                         f"back (give --max-iters {run.step} or more)")
    run.last_eval = last_eval(run.run_dir, upto=run.step)


def _write_run_dir(run: Run) -> None:
    """The run manifest first, then config.json, the task's files and metrics.jsonl
    (nothing was written before this point), each name recorded in the manifest before it
    is written. A run that does not continue from a checkpoint starts over: what lmn wrote
    in the directory before (by its manifest) is removed first, nothing else. A directory
    made here is locked as it appears."""
    cfg, run_dir, dist = run.cfg, run.run_dir, run.dist
    n_params = num_parameters(run.model)
    resume = run.from_checkpoint

    def write() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.lock is not None and not run.lock.held:  # the directory did not exist when the run started
            run.lock.acquire()
            if not is_empty_run_dir(run_dir):
                raise ValueError(f"run directory {run_dir} was written by another lmn train while this one started; "
                                 "choose another --out, or pass --resume or --force")
        clean_stale(run_dir)
        if resume:
            discard_checkpoints_after(run_dir, run.step)  # damaged ones, passed over
            if read_run_manifest(run_dir) is None:  # a run of checkpoint format 1: its record begins now
                write_run_manifest(run_dir, legacy_files(run_dir))
            record_files(run_dir, LOCK_FILE, CONFIG_FILE, METRICS_FILE, *logger_files(run.log_specs))
        else:
            if lmn_files(run_dir) is not None:
                remove_run_files(run_dir)
            write_run_manifest(run_dir, [CONFIG_FILE, METRICS_FILE, *logger_files(run.log_specs)])
        doc = {"preset": run.preset, "train": cfg.to_dict(), run.task.record_key: run.task.record(),
               "params": n_params, "versions": versions(cfg.model)}
        atomic_write_text(run_dir / CONFIG_FILE, atomic.dumps_json(doc, indent=2, where=run_dir / CONFIG_FILE))
        if not resume:
            before = set(os.listdir(run_dir))
            run.task.save(run_dir)
            record_files(run_dir, *sorted(set(os.listdir(run_dir)) - before))
        # Forget records past the checkpoint: they are about to be recomputed.
        kept = [r for r in read_metrics(run_dir) if r["type"] != "final" and r["step"] <= run.step] if resume else []
        atomic_write_text(run_dir / METRICS_FILE, "".join(map(json_line, kept)))

    _on_main(dist, write)


def _wrap(run: Run) -> None:
    """The DDP wrapper (or FSDP shards), the open metrics file, the first progress line."""
    cfg, run_dir, dist = run.cfg, run.run_dir, run.dist
    n_params = num_parameters(run.model)
    resume = run.from_checkpoint
    run.train_model = run.model
    if dist.enabled and cfg.fsdp:  # sharded in place (lmn.trainer.fsdp); the optimizer follows the shards
        shard_model(run.model, run.device)
        run.optimizer = reshard_optimizer(run.model, run.optimizer, lambda model: make_optimizer(model, cfg))
    elif dist.enabled:
        ids = [run.device] if run.device.type == "cuda" else None
        run.train_model = nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    if cfg.compile:  # the training step's model only: evaluation's shapes vary, it runs run.model eagerly
        run.train_model = torch.compile(run.train_model)
    run.metrics = open(run_dir / METRICS_FILE, "a", encoding="utf-8") if dist.is_main else None
    where = f"resuming at step {run.step}" if resume else f"run dir {run_dir}"
    run.progress.message(f"{cfg.model}: {n_params:,} parameters | {run.task.describe()} | {dist.world_size} "
                         f"process(es) on {run.device} | {where}")


def _open_loggers(run: Run) -> None:
    """The experiment loggers (process 0), given config.json once."""
    if not run.log_specs:
        return
    config = json.loads((run.run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    run.loggers = open_loggers(run.log_specs, run.run_dir, resumed=run.from_checkpoint, step=run.step,
                               config=config, wandb_project=run.wandb_project)
    run.progress.message(f"logging to {', '.join(run.log_specs)} as well as {run.run_dir / METRICS_FILE}")


def _close(run: Run, error: BaseException | None) -> None:
    """Close the loggers (``error``: what ended the session) and metrics.jsonl, whose
    lines are each flushed already."""
    loggers, run.loggers = run.loggers, []
    close_loggers(loggers, error)
    if run.metrics is not None and not run.metrics.closed:
        run.metrics.close()


# ----------------------------------------------------------------------------- loop
def _loop(run: Run, stop: DeferredStop) -> None:
    """Evaluate, checkpoint, step, until ``max_iters`` (or a stop request)."""
    cfg = run.cfg
    run.t_start = time.perf_counter()
    while True:
        _maybe_evaluate(run)
        run.stopped_early = bool(cfg.early_stop and run.best and run.best["since"] >= cfg.early_stop)
        ended = run.step >= cfg.max_iters or run.stopped_early
        due = run.step % cfg.ckpt_interval == 0 or ended or stop.requested
        if due and (run.step > run.start_step or not run.from_checkpoint):  # a new run saves step 0 too
            _checkpoint(run)
        if stop.requested:
            run.progress.message(f"stopped: checkpoint at step {run.step} in {run.run_dir}; continue with --resume")
            raise KeyboardInterrupt
        if ended:
            if run.stopped_early:
                run.progress.message(f"early stop at step {run.step}: no better validation estimate in "
                                     f"{cfg.early_stop} evaluations since step {run.best['step']}")
            break
        _train_step(run)


def _maybe_evaluate(run: Run) -> None:
    """The periodic estimate, every ``eval_interval`` steps and at the end. The step a
    checkpoint was taken at was evaluated before it, unless the run stopped in between;
    then that evaluation is still due."""
    cfg = run.cfg
    evaluated = run.last_eval is not None and run.last_eval["step"] == run.step
    if evaluated or not (run.step % cfg.eval_interval == 0 or run.step == cfg.max_iters):
        return
    t0 = time.perf_counter()
    losses = estimate_loss(run.model, run.task, cfg, run.step, run.dist, run.device, run.autocast)
    bpb = run.task.bits_per_byte("val", losses["val"]) if "val" in losses else None
    run.last_eval = {"type": "eval", "step": run.step, **{f"{s}_loss": v for s, v in losses.items()},
                     **({} if bpb is None else {"val_bpb": bpb}), "elapsed_s": run.elapsed()}
    _track_best(run, losses["val"])
    run.log(run.last_eval)
    shown = " | ".join(f"{s} {v:.4f}" for s, v in losses.items()) + ("" if bpb is None else f" ({bpb:.4f} bits/byte)")
    run.progress.message(f"eval step {run.step}: {shown} ({time.perf_counter() - t0:.1f}s)")


def _track_best(run: Run, val_loss: float) -> None:
    """Follow the best validation estimate (``--early-stop``, ``--keep-best``): its step and
    loss, the evaluations since, and with ``--keep-best`` a CPU copy of its weights. A tie
    is no improvement."""
    cfg = run.cfg
    if not (cfg.early_stop or cfg.keep_best):
        return
    if run.best is not None and not val_loss < run.best["val_loss"]:
        run.best["since"] += 1
        return
    weights = None
    if cfg.keep_best:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
    run.best = {"step": run.step, "val_loss": val_loss, "since": 0, "weights": weights}


def _train_step(run: Run) -> None:
    """One optimizer update on the next training batch; a "train" record every
    ``log_interval`` steps."""
    cfg = run.cfg
    t0 = time.perf_counter()
    batch = local_batch(run.task, "train", cfg.batch_size, run.train_gen, run.dist, run.device)
    loss = batch_loss(run.train_model, run.task, batch, run.autocast)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(run.model, cfg.grad_clip)
    lr = cfg.lr_at(run.step)
    set_lr(run.optimizer, lr)
    run.optimizer.step()
    run.step += 1
    loss_value = loss.item()  # waits for the step to finish, so timing is honest on GPU
    if not run.dist.enabled and not math.isfinite(loss_value):  # (under DDP: the mean below, the same on all)
        raise _diverged(run, f"the loss is {loss_value}")
    dt = time.perf_counter() - t0
    run.train_time += dt
    run.window_t += dt
    run.window_steps += 1
    if run.step % cfg.log_interval == 0 or run.step == cfg.max_iters:
        loss_value = run.dist.mean(loss_value)
        if not math.isfinite(loss_value):
            raise _diverged(run, f"the loss is {loss_value}")
        tok_s = run.window_steps * cfg.batch_size * run.task.seq_len / run.window_t
        per_step = (time.perf_counter() - run.t_start) / (run.step - run.start_step)  # includes evaluation
        extra = {} if cfg.lr_schedule == "constant" else {"lr": lr}
        if grad_norm is not None:
            extra["grad_norm"] = run.dist.mean(float(grad_norm))  # before clipping
        run.log({"type": "train", "step": run.step, "loss": loss_value, "tokens_per_s": tok_s,
                 "elapsed_s": run.elapsed(), **extra})
        run.progress.update(run.step, loss_value, tok_s, per_step * (cfg.max_iters - run.step))
        run.window_t, run.window_steps = 0.0, 0


def _checkpoint(run: Run) -> None:
    """Save a checkpoint of this step (process 0; the others wait for it), unless the
    weights are not finite: then the run stops and the previous checkpoint stays."""
    model, optimizer_state = run.model, None
    if is_sharded(run.model):  # gathered by every process, in the single-process format
        weights, optimizer_state = full_checkpoint(run.model, run.optimizer)
        model = plain_model(lambda: build_model(run.cfg.model, run.cfg.model_config), weights)

    def save() -> None:
        if not _finite(model):
            raise _diverged(run, "the weights are not finite")
        save_checkpoint(run.run_dir, model, run.cfg.model, run.cfg.model_config, {
            "step": run.step,
            "optimizer": optimizer_state if optimizer_state is not None else run.optimizer.state_dict(),
            "rng": {"train": run.train_gen.get_state(), "torch": torch.get_rng_state()},
            "elapsed_s": run.elapsed(),
            "train_time_s": run.train_time_before + run.train_time,
            "best": run.best,
        }, train_config=run.cfg.to_dict())

    _on_main(run.dist, save)
    run.saved_step = run.step


def _finite(model: nn.Module) -> bool:
    """Whether every floating-point weight of ``model`` is finite (one synchronisation)."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _diverged(run: Run, what: str) -> TrainingDiverged:
    if run.saved_step is None:
        kept = "no checkpoint was written"
    else:
        kept = f"{run.run_dir} keeps its checkpoint of step {run.saved_step} (--resume continues from it)"
    return TrainingDiverged(f"training diverged: {what} at step {run.step}; try a lower --lr than {run.cfg.lr:g} "
                            f"(start over with --force, or a new --out); {kept}")


# ----------------------------------------------------------------------------- finish
def _finish(run: Run) -> dict:
    """The whole-split evaluation, then the summary (written to final.json)."""
    cfg, task = run.cfg, run.task
    summary = {"model": cfg.model, "preset": run.preset, "params": num_parameters(run.model), "step": run.step,
               "seed": cfg.seed}
    for split in task.splits:
        summary[f"final_{split}_loss"] = run.last_eval[f"{split}_loss"] if run.last_eval else None
    if run.last_eval is not None and "val_bpb" in run.last_eval:  # (a text task's; not in runs made before it)
        summary["final_val_bpb"] = run.last_eval["val_bpb"]
    if run.best is not None:
        summary.update(best_step=run.best["step"], best_val_loss=run.best["val_loss"], stopped_early=run.stopped_early)
    if cfg.keep_best and run.best is not None:  # the best weights: saved, and used for the whole-split evaluation
        if run.dist.is_main:
            save_best(run.run_dir, run.best["weights"], cfg.model, cfg.model_config, run.best["step"],
                      run.best["val_loss"])
        run.model.load_state_dict(run.best["weights"])
        summary["whole_split_weights"] = f"best (step {run.best['step']})"
    if cfg.whole_val and task.whole_split is not None:
        t0 = time.perf_counter()
        metrics = evaluate_whole(run.model, task, cfg.batch_size, run.dist, run.device, run.autocast)
        whole = {f"whole_{task.whole_split}_{k}": v for k, v in metrics.items()}
        summary.update(whole)
        run.log({"type": "final", "step": run.step, **whole})
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in metrics.items())
        run.progress.message(f"whole {task.whole_split} split: {shown} ({time.perf_counter() - t0:.1f}s)")
    train_time = run.train_time_before + run.train_time
    tokens = run.step * cfg.batch_size * task.seq_len
    summary.update(
        wall_time_s=run.elapsed(), train_time_s=train_time,
        tokens_per_s=tokens / train_time if train_time > 0 else None,
        block_size=cfg.block_size, batch_size=cfg.batch_size, dtype=cfg.dtype, device=str(run.device),
        world_size=run.dist.world_size, threads=torch.get_num_threads(), machine=machine_info(), git=git_commit(),
        versions=versions(cfg.model), **{task.record_key: task.record()},
    )
    if run.metrics is not None:
        run.metrics.close()
        record_files(run.run_dir, FINAL_FILE)
        atomic_write_text(run.run_dir / FINAL_FILE, atomic.dumps_json(strict_json(summary), indent=2,
                                                                      where=run.run_dir / FINAL_FILE))
    run.dist.barrier()
    return summary
