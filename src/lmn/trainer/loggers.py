"""Experiment logging beside ``metrics.jsonl``: TensorBoard and Weights & Biases
(``lmn train --log tensorboard``, ``--log wandb``).

``metrics.jsonl`` stays the run's record, written and flushed first, line by line; a logger
gets the same records afterwards, as scalars named ``<record type>/<field>``
(``train/loss``, ``train/tokens_per_s``, ``eval/val_loss``, ``final/whole_val_loss``) at the
record's step, and the run's config.json once per session. Only process 0 logs (under
DDP/FSDP the others open nothing). A logger is closed however the run ends (finished,
diverged, stopped, failed); a logger that fails to close is a warning, not the run's outcome.

=================  ======================================================================
``--log``          what it writes
=================  ======================================================================
``tensorboard``    event files in ``RUN/tb/`` (``torch.utils.tensorboard``); a resumed run
                   appends a new event file whose start purges the older events past the
                   checkpoint, as metrics.jsonl drops its records past it
``wandb``          a wandb run in ``RUN/wandb/``, named after the run directory, project
                   ``--wandb-project`` (else the one recorded, ``$WANDB_PROJECT``, ``lmn``);
                   its id is kept in ``RUN/wandb-run.json`` so that ``--resume`` continues
                   the same wandb run. Mode: ``$WANDB_MODE`` (wandb's own rule), or the
                   flag's: ``wandb:offline`` (no network: files only, ``wandb sync`` them
                   later) or ``wandb:online``. wandb's history is indexed by the ``step``
                   metric (the optimizer step), so a resumed run's re-done steps are logged
                   again rather than refused as out of order
=================  ======================================================================

Every name is recorded in the run manifest before it is written, so ``--force`` removes
``tb/``, ``wandb/`` and ``wandb-run.json`` whole (:func:`lmn.trainer.rundir.removal_plan`).
Nothing here imports tensorboard or wandb until a run asks for them; a missing package is
one line naming the extra (``pip install 'torch-lmn[tensorboard]'``), before anything runs.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .rundir import TB_DIR, WANDB_DIR, WANDB_RUN_FILE, atomic_write_text

LOGGERS = ("tensorboard", "wandb")
WANDB_MODES = ("online", "offline")
DEFAULT_WANDB_PROJECT = "lmn"
# what each logger needs importable (the module it uses) and the extra that installs it
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
_SKIPPED_FIELDS = ("type", "step", "non_finite")


class LoggerWarning(UserWarning):
    """An experiment logger failed to close; metrics.jsonl is unaffected."""


def parse_log(values) -> tuple[str, ...]:
    """The loggers of ``--log`` values (each one name or several, comma-separated):
    ``tensorboard``, ``wandb``, ``wandb:offline``, ``wandb:online``; repeated ones once.

    Raises:
        ValueError: an unknown name or mode, or wandb given with two modes.
    """
    if isinstance(values, str):
        values = [values]
    specs = []
    for value in values:
        for spec in (s.strip() for s in str(value).split(",")):
            if not spec:
                continue
            name, sep, mode = spec.partition(":")
            if name not in LOGGERS or (sep and (name != "wandb" or mode not in WANDB_MODES)):
                raise ValueError(f"--log {spec!r}: choose from tensorboard, wandb, wandb:offline, wandb:online "
                                 "(several: comma-separated or --log again)")
            if spec not in specs:
                specs.append(spec)
    wandb = [s for s in specs if s.partition(":")[0] == "wandb"]
    if len(wandb) > 1:
        raise ValueError(f"--log gives wandb twice ({', '.join(wandb)}); give it once, with at most one mode")
    return tuple(specs)


def _name(spec: str) -> str:
    return spec.partition(":")[0]


def check_available(specs) -> None:
    """Each logger's package can be imported (checked before anything is written or
    trained); the error names the extra that installs it."""
    import importlib

    for spec in specs:
        module, extra = _NEEDS[_name(spec)]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(f"--log {_name(spec)} needs the {extra} package, which is not installed; install it "
                             f"with: pip install 'torch-lmn[{extra}]'") from None


def logger_files(specs) -> list[str]:
    """The names the loggers write in the run directory (for the run manifest)."""
    names = []
    for spec in specs:
        names += [TB_DIR] if _name(spec) == "tensorboard" else [WANDB_RUN_FILE, WANDB_DIR]
    return names


def record_scalars(record: dict) -> dict[str, float]:
    """The scalars of one metrics.jsonl record: ``{"<type>/<field>": value}`` for each
    number of the record but its step (a non-finite one stays NaN or infinite)."""
    kind = record["type"]
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in _SKIPPED_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool)}


class ExperimentLogger:
    """What the trainer asks of a logger: scalars at a step, the config once, close."""

    name = ""

    def log_config(self, config: dict) -> None:
        raise NotImplementedError

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, error: BaseException | None = None) -> None:
        """Flush and close; ``error``: what ended the run, None when it finished."""
        raise NotImplementedError


class TensorBoardLogger(ExperimentLogger):
    """Event files in ``RUN/tb/``; a session resumed at step s appends one that purges
    the older events past s (TensorBoard's ``purge_step``)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, *, resumed: bool, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.step = step
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR), purge_step=step + 1 if resumed else None)

    def log_config(self, config: dict) -> None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), global_step=self.step)
        self.writer.flush()

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # as up to date as metrics.jsonl if the process is killed

    def close(self, error: BaseException | None = None) -> None:
        self.writer.close()


class WandbLogger(ExperimentLogger):
    """One wandb run in ``RUN/wandb/`` whose id ``RUN/wandb-run.json`` keeps (written before
    the run starts): a resumed lmn run continues it."""

    name = "wandb"

    def __init__(self, run_dir: Path, *, resumed: bool, mode: str | None, project: str | None):
        import wandb

        run_dir = Path(run_dir)
        saved = _read_wandb_run(run_dir) if resumed else None
        run_id = saved["id"] if saved else _new_run_id()
        project = (project or (saved or {}).get("project") or os.environ.get("WANDB_PROJECT")
                   or DEFAULT_WANDB_PROJECT)
        atomic_write_text(run_dir / WANDB_RUN_FILE, json.dumps({"id": run_id, "project": project}, indent=2) + "\n")
        try:
            self.run = wandb.init(project=project, name=run_dir.resolve().name, id=run_id, resume="allow",
                                  dir=str(run_dir), mode=mode, settings=wandb.Settings(console="off"))
        except Exception as err:  # e.g. online without an API key: a setup problem, said in one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"--log wandb: wandb could not start a run ({type(err).__name__}: {first}); log in "
                             "with `wandb login`, or log without an account: WANDB_MODE=offline or "
                             "--log wandb:offline") from None
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({"step": step, **scalars})

    def close(self, error: BaseException | None = None) -> None:
        code = 0 if error is None else 130 if isinstance(error, KeyboardInterrupt) else 1
        self.run.finish(exit_code=code)


def _new_run_id() -> str:
    """A new wandb run id: 8 random lowercase letters and digits (wandb's own form)."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _read_wandb_run(run_dir: Path) -> dict | None:
    try:
        doc = json.loads((run_dir / WANDB_RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"] else None


def open_loggers(specs, run_dir: Path, *, resumed: bool, step: int, config: dict,
                 wandb_project: str | None = None) -> list[ExperimentLogger]:
    """Open each logger of ``specs`` (:func:`parse_log`) on ``run_dir`` and log ``config``;
    ``resumed``: the session continues a checkpoint of ``step``. One that fails to open
    closes those opened before it."""
    loggers: list[ExperimentLogger] = []
    try:
        for spec in specs:
            name, _, mode = spec.partition(":")
            if name == "tensorboard":
                logger = TensorBoardLogger(run_dir, resumed=resumed, step=step)
            else:
                logger = WandbLogger(run_dir, resumed=resumed, mode=mode or None, project=wandb_project)
            loggers.append(logger)
            logger.log_config(config)
    except BaseException as err:
        close_loggers(loggers, err)
        raise
    return loggers


def log_record(loggers, record: dict) -> None:
    """Give one metrics.jsonl record (already written there) to each logger."""
    if loggers:
        scalars = record_scalars(record)
        for logger in loggers:
            logger.log_scalars(int(record["step"]), scalars)


def close_loggers(loggers, error: BaseException | None = None) -> None:
    """Close every logger; one that fails is a :class:`LoggerWarning` (the others still close)."""
    for logger in loggers:
        try:
            logger.close(error)
        except Exception as err:  # noqa: BLE001 -- the run's own outcome stands
            warnings.warn(f"--log {logger.name} did not close cleanly: {type(err).__name__}: {err}", LoggerWarning,
                          stacklevel=2)


__all__ = ["LOGGERS", "ExperimentLogger", "LoggerWarning", "TensorBoardLogger", "WandbLogger", "check_available",
           "close_loggers", "log_record", "logger_files", "open_loggers", "parse_log", "record_scalars"]
