"""Training and evaluation of LMN and the baselines under the paper's Table 1 protocol.

One run = one directory::

    config.json        the fully resolved TrainConfig (+ corpus, parameter count, versions)
    tokenizer.json     the character vocabulary of the corpus
    metrics.jsonl      one JSON record per line: "train" (step, loss, tokens/s),
                       "eval" (step, train_loss, val_loss), "final" (whole-split loss)
    model.safetensors  weights (metadata: model kind, model config, step)
    trainer_state.pt   step, optimizer state, RNG states, sha256 of model.safetensors;
                       read with torch.load(weights_only=True), so no pickle code runs
    final.json         the summary Table 1 is made from

Steps count optimizer updates: the "train" record of step s holds the loss of the batch
that produced update s; the "eval" record of step s is measured after s updates.

Determinism: weights are initialised after ``torch.manual_seed(seed)``; training batches
come from a ``torch.Generator`` seeded ``seed`` (checkpointed with the optimizer and the
weights), and the estimate at step s from a generator seeded by ``(seed, s)`` alone --
fresh random batches at each evaluation, yet independent of where a run was stopped. A
resumed run therefore takes bit-identical steps (on the same device and thread count).

Data parallel (``torchrun --nproc_per_node N -m lmn.cli train ...``): every rank draws
the same global batch and keeps its ``batch_size / N`` rows, and DDP averages gradients,
so a step equals the single-process step on the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LMNConfig
from .data import CharTokenizer, check_split_sizes, load_corpus, sequential_windows, split_tokens
from .data.batches import gather_windows, window_starts
from .data.corpus import sha256_file

MODEL_KINDS = ("lmn", "gpt2", "mamba")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

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


# ----------------------------------------------------------------------------- config
def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are the paper's LMN protocol."""

    model: str = _opt("lmn", f"model kind: {', '.join(MODEL_KINDS)}")
    model_config: dict = field(
        default_factory=dict,
        metadata={"help": "overrides of the model's own config (vocab_size comes from the corpus)"},
    )
    data: str = _opt("tinyshakespeare", "corpus name (tinyshakespeare) or path to a UTF-8 text file")
    train_frac: float = _opt(0.9, "leading fraction of the corpus used for training; the rest validates")
    block_size: int = _opt(512, "tokens per training window")
    batch_size: int = _opt(16, "windows per step (global batch, split across DDP processes)")
    lr: float = _opt(1e-3, "AdamW learning rate (constant, no schedule)")
    weight_decay: float = _opt(0.01, "AdamW weight decay (0.01 is torch's default)")
    max_iters: int = _opt(5000, "optimizer steps")
    eval_interval: int = _opt(100, "estimate train/val loss every this many steps")
    eval_iters: int = _opt(200, "random batches per split in each estimate")
    ckpt_interval: int = _opt(100, "save a checkpoint every this many steps (and at the end)")
    log_interval: int = _opt(10, "log the training loss every this many steps")
    whole_val: bool = _opt(True, "at the end, evaluate the whole validation split in non-overlapping windows")
    seed: int = _opt(1337, "seed of initialisation and batch sampling")
    dtype: str = _opt("float32", f"compute dtype: {', '.join(DTYPES)} (bfloat16 via autocast)")
    gradient_checkpointing: bool = _opt(False, "recompute each block in backward instead of keeping its "
                                        "activations (less memory for long block_size, for some extra time; "
                                        "same losses)")
    device: str = _opt("auto", "cpu, cuda, cuda:N, or auto (cuda if available)")
    threads: int = _opt(1, "torch CPU threads per process (0 = torch's default)")
    out_dir: str = _opt("", "run directory (default runs/<model>-seed<seed>)")

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}, got {self.model!r}")
        if not isinstance(self.model_config, dict):
            raise ValueError(f"model_config must be a dict, got {type(self.model_config).__name__}")
        for name in ("block_size", "batch_size", "eval_interval", "eval_iters", "ckpt_interval", "log_interval"):
            _check_int(name, getattr(self, name), 1)
        _check_int("max_iters", self.max_iters, 0)
        _check_int("threads", self.threads, 0)
        _check_int("seed", self.seed, 0)
        if self.seed >= 2**31:
            raise ValueError(f"seed must be < 2**31, got {self.seed}")
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"train_frac must be in (0, 1), got {self.train_frac!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}") from None
        if not self.out_dir:
            self.out_dir = f"runs/{self.model}-seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


# Presets: overrides of the TrainConfig defaults, which are the paper's protocol.
PRESETS: dict[str, dict] = {
    "paper-lmn": {"model": "lmn"},
    "paper-gpt2": {"model": "gpt2"},
    # The paper's protocol on a shorter budget: on CPU, transformers' Mamba (even with
    # mambapy's parallel scan) takes ~4 s per 16 x 512 step, so 5,000 steps with the full
    # evaluation schedule would take over 12 hours. 1,000 steps, 20 batches per estimate.
    "paper-mamba": {"model": "mamba", "max_iters": 1000, "eval_iters": 20},
    # A seconds-long run for tests and CI.
    "smoke": {
        "model": "lmn",
        "model_config": {"d_model": 16, "n_layers": 2, "n_heads": 2},
        "block_size": 64,
        "batch_size": 8,
        "lr": 3e-3,
        "max_iters": 40,
        "eval_interval": 20,
        "eval_iters": 4,
        "ckpt_interval": 20,
        "log_interval": 5,
    },
}

# Fields that may change when a run is resumed: they do not change what is computed
# (``data`` is checked by the corpus sha256 instead of by name).
RESUMABLE_FIELDS = frozenset({"max_iters", "device", "threads", "log_interval", "ckpt_interval", "out_dir", "data",
                              "gradient_checkpointing"})


def preset_config(name: str, **overrides) -> TrainConfig:
    """The TrainConfig of preset ``name`` with ``overrides`` applied (``model_config``
    overrides are merged into the preset's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[name]}
    model_config = {**values.get("model_config", {}), **overrides.pop("model_config", {})}
    values.update(overrides)
    values["model_config"] = model_config
    return TrainConfig(**values)


def saved_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a run directory (raises CheckpointError if absent or unreadable)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None


# ----------------------------------------------------------------------------- models
def model_config_class(kind: str):
    if kind == "lmn":
        return LMNConfig
    from .baselines import get_baseline

    return get_baseline(kind)[1]


def resolve_model_config(kind: str, overrides: dict, vocab_size: int) -> dict:
    """Full config dict of model ``kind``: its defaults, then ``overrides``, then the
    corpus's ``vocab_size``. Validated by the model's config class."""
    if "vocab_size" in overrides and overrides["vocab_size"] != vocab_size:
        raise ValueError(
            f"vocab_size is set by the corpus ({vocab_size} characters), not by the model config "
            f"(got {overrides['vocab_size']})"
        )
    return normalize_model_config(kind, {**overrides, "vocab_size": vocab_size})


def normalize_model_config(kind: str, model_config: dict) -> dict:
    """``model_config`` completed with the current defaults of the model's config class,
    so configs saved before a field was added still compare equal."""
    cls = model_config_class(kind)
    return cls.from_dict({**cls().to_dict(), **model_config}).to_dict()


def build_model(kind: str, model_config: dict) -> nn.Module:
    """A freshly initialised model; seed the global RNG first for a reproducible init."""
    if kind == "lmn":
        from .model import LMN

        return LMN(LMNConfig.from_dict(model_config))
    from .baselines import get_baseline

    model_cls, config_cls = get_baseline(kind)
    return model_cls(config_cls.from_dict(model_config))


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "gradient_checkpointing") and not hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing = True  # LMN: a runtime switch (lmn.model.LMN)
        return
    inner = getattr(model, "hf", model)  # the baselines wrap a transformers model
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.x spelling
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"gradient_checkpointing is not supported for model {type(model).__name__}")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- checkpoints
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


def _atomic_write_text(path: Path, text: str) -> None:
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


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        """Average a Python float over processes (identity when not distributed)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.item() / self.world_size

    def sum_(self, t: Tensor) -> Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def _init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    if world <= 1:
        return Dist(), device
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist, device


# ----------------------------------------------------------------------------- evaluation
def _loss(model: nn.Module, x: Tensor, y: Tensor, autocast) -> Tensor:
    with autocast:
        logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def estimate_loss(model, splits, cfg: TrainConfig, generator, dist: Dist, device, autocast) -> dict:
    """Mean loss over ``eval_iters`` random global batches per split (the paper's estimate)."""
    model.eval()
    out = {}
    for name, data in splits.items():
        total = 0.0
        for _ in range(cfg.eval_iters):
            x, y = _local_batch(data, cfg, generator, dist, device)
            total += _loss(model, x, y, autocast).item()
        out[name] = dist.mean(total / cfg.eval_iters)
    model.train()
    return out


@torch.no_grad()
def evaluate_whole(model, data: Tensor, block_size: int, batch_size: int, dist: Dist, device, autocast) -> tuple[float, int]:
    """Mean loss (nats/token) over every target of ``data``, in non-overlapping windows;
    returns ``(loss, n_targets)``. Batches are shared out round-robin across processes."""
    model.eval()
    acc = torch.zeros(2, dtype=torch.float64)  # (sum of -log p, number of targets)
    for i, (x, y) in enumerate(sequential_windows(data, block_size, batch_size)):
        if i % dist.world_size != dist.rank:
            continue
        with autocast:
            logits = model(x.to(device))
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="sum")
        acc += torch.tensor([nll.item(), y.numel()], dtype=torch.float64)
    dist.sum_(acc)
    model.train()
    return acc[0].item() / acc[1].item(), int(acc[1].item())


def _local_batch(data: Tensor, cfg: TrainConfig, generator, dist: Dist, device) -> tuple[Tensor, Tensor]:
    """This process's rows of the next global batch: every process draws the same offsets."""
    starts = window_starts(len(data), cfg.block_size, cfg.batch_size, generator)
    per = cfg.batch_size // dist.world_size
    x, y = gather_windows(data, starts[dist.rank * per : (dist.rank + 1) * per], cfg.block_size)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# ----------------------------------------------------------------------------- progress
def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per update
    otherwise (log files)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open = False

    def update(self, step: int, loss: float, tokens_per_s: float, eta_s: float) -> None:
        if not self.enabled:
            return
        width = len(str(self.total))
        frac = step / self.total if self.total else 1.0
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = (
            f"step {step:>{width}}/{self.total} [{bar}] loss {loss:.4f} | "
            f"{tokens_per_s / 1000:.1f}k tok/s | ETA {_fmt_duration(eta_s)}"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- run info
def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _versions(kind: str) -> dict:
    from . import __version__

    out = {"lmn": __version__, "torch": torch.__version__}
    if kind != "lmn":
        import transformers

        out["transformers"] = transformers.__version__
    return out


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


# ----------------------------------------------------------------------------- training
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


def _check_resume_compatible(cfg: TrainConfig, saved: dict, corpus_sha: str) -> None:
    old = TrainConfig.from_dict(saved["train"])
    old.model_config = normalize_model_config(old.model, old.model_config)
    diffs = [
        f"{f.name}={getattr(old, f.name)!r} (run) vs {getattr(cfg, f.name)!r} (now)"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_FIELDS and getattr(old, f.name) != getattr(cfg, f.name)
    ]
    if diffs:
        raise CheckpointError(f"cannot resume {cfg.out_dir} with a different configuration: {'; '.join(diffs)}")
    if saved.get("corpus", {}).get("sha256") != corpus_sha:
        raise CheckpointError(
            f"cannot resume {cfg.out_dir}: the corpus differs from the one it was trained on "
            f"(sha256 {saved.get('corpus', {}).get('sha256')} vs {corpus_sha})"
        )


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False, preset: str | None = None,
          stream=None) -> dict:
    """Run (or resume) training as configured; returns the final summary (final.json).

    Args:
        cfg: the run's configuration; ``cfg.model_config`` may be partial.
        resume: continue the run in ``cfg.out_dir`` from its checkpoint.
        force: start over in an existing, non-empty ``cfg.out_dir``.
        preset: name recorded in config.json.
        stream: where progress goes (default stderr); only process 0 writes.
    Raises:
        ValueError, CorpusError, CheckpointError: bad configuration, corpus or checkpoint.
    """
    dist, device = _init_distributed(cfg.device)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world_size} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = prepare_run_dir(cfg, resume=resume, force=force)
    normalize_model_config(cfg.model, {"vocab_size": 1, **cfg.model_config})  # bad options fail before any I/O

    # --- data: the vocabulary is every character of the corpus, sorted
    corpus_path, text = load_corpus(cfg.data)
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    train_ids, val_ids = split_tokens(ids, cfg.train_frac)
    check_split_sizes(train_ids, val_ids, cfg.block_size, what=f"corpus {str(corpus_path)!r}")
    corpus_info = {"path": str(corpus_path), "sha256": sha256_file(corpus_path), "n_chars": len(text),
                   "vocab_size": tokenizer.vocab_size, "n_train": len(train_ids), "n_val": len(val_ids)}

    # --- model config, resolved against the corpus
    cfg = replace(cfg, model_config=resolve_model_config(cfg.model, cfg.model_config, tokenizer.vocab_size))
    if cfg.model == "gpt2" and cfg.block_size > cfg.model_config["n_positions"]:
        raise ValueError(f"block_size {cfg.block_size} exceeds the GPT-2 baseline's n_positions "
                         f"{cfg.model_config['n_positions']}")
    if resume:
        saved = saved_config(run_dir)
        _check_resume_compatible(cfg, saved, corpus_info["sha256"])
        preset = preset or saved.get("preset")
        saved_tok = CharTokenizer.load(run_dir / TOKENIZER_FILE)
        if saved_tok != tokenizer:
            raise CheckpointError(f"cannot resume {run_dir}: its tokenizer differs from the corpus's characters")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.model_config).to(device)
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    n_params = num_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed_before, train_time_before = 0, 0.0, 0.0
    if resume:
        state = load_checkpoint(run_dir, model, cfg.model, cfg.model_config, require_state=True)
        try:
            optimizer.load_state_dict(state["optimizer"])
            train_gen.set_state(state["rng"]["train"])
            torch.set_rng_state(state["rng"]["torch"])
            step = int(state["step"])
            elapsed_before, train_time_before = float(state["elapsed_s"]), float(state["train_time_s"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{run_dir / STATE_FILE} is inconsistent with this run ({err})") from None
        if step > cfg.max_iters:
            raise ValueError(f"{run_dir} is already at step {step}; --max-iters {cfg.max_iters} cannot go back "
                             f"(give --max-iters {step} or more)")

    last_eval = _last_eval(run_dir, upto=step) if resume else None

    # --- run directory: nothing was written before this point
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        config_doc = {"preset": preset, "train": cfg.to_dict(), "corpus": corpus_info, "params": n_params,
                      "versions": _versions(cfg.model)}
        _atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config_doc, indent=2) + "\n")
        if not resume:
            tokenizer.save(run_dir / TOKENIZER_FILE)
        # Forget records past the checkpoint: they are about to be recomputed.
        kept = [r for r in read_metrics(run_dir) if r["type"] != "final" and r["step"] <= step] if resume else []
        _atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    dist.barrier()

    train_model = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    autocast = (torch.autocast(device.type, dtype=DTYPES[cfg.dtype]) if cfg.dtype != "float32" else nullcontext())
    splits = {"train": train_ids, "val": val_ids}
    progress = Progress(cfg.max_iters, stream, enabled=dist.is_main)
    metrics = open(run_dir / METRICS_FILE, "a", encoding="utf-8") if dist.is_main else None
    tokens_per_step = cfg.batch_size * cfg.block_size
    if dist.is_main:
        progress.message(
            f"{cfg.model}: {n_params:,} parameters | corpus {corpus_path} ({len(text):,} chars, vocab "
            f"{tokenizer.vocab_size}) | {dist.world_size} process(es) on {device} | "
            f"{'resuming at step ' + str(step) if resume else 'run dir ' + str(run_dir)}"
        )

    def log(record: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint(run_dir, model, cfg.model, cfg.model_config, {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "rng": {"train": train_gen.get_state(), "torch": torch.get_rng_state()},
                "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "train_time_s": train_time_before + train_time,
            })
        dist.barrier()

    t_start = time.perf_counter()
    train_time = 0.0  # seconds spent in training steps this session (no evaluation)
    start_step = step
    window_t, window_steps = 0.0, 0
    with _DeferredStop(enabled=not dist.enabled) as stop:
        while True:
            # The step a checkpoint was taken at was evaluated before it, unless the
            # run stopped in between; then that evaluation is still due.
            evaluated = last_eval is not None and last_eval["step"] == step
            if (step % cfg.eval_interval == 0 or step == cfg.max_iters) and not evaluated:
                t0 = time.perf_counter()
                eval_gen = torch.Generator().manual_seed(_eval_seed(cfg.seed, step))
                losses = estimate_loss(model, splits, cfg, eval_gen, dist, device, autocast)
                elapsed = elapsed_before + time.perf_counter() - t_start
                last_eval = {"type": "eval", "step": step, "train_loss": losses["train"],
                             "val_loss": losses["val"], "elapsed_s": elapsed}
                log(last_eval)
                progress.message(f"eval step {step}: train {losses['train']:.4f} | val {losses['val']:.4f} "
                                 f"({time.perf_counter() - t0:.1f}s)")
            if step > start_step and (step % cfg.ckpt_interval == 0 or step == cfg.max_iters or stop.requested):
                checkpoint()
            if stop.requested:
                progress.message(f"stopped: checkpoint at step {step} in {run_dir}; continue with --resume")
                raise KeyboardInterrupt
            if step >= cfg.max_iters:
                break

            t0 = time.perf_counter()
            x, y = _local_batch(train_ids, cfg, train_gen, dist, device)
            loss = _loss(train_model, x, y, autocast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = loss.item()  # waits for the step to finish, so timing is honest on GPU
            dt = time.perf_counter() - t0
            train_time += dt
            window_t += dt
            window_steps += 1
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                loss_value = dist.mean(loss_value)
                tok_s = window_steps * tokens_per_step / window_t
                per_step = (time.perf_counter() - t_start) / (step - start_step)  # includes evaluation
                log({"type": "train", "step": step, "loss": loss_value, "tokens_per_s": tok_s,
                     "elapsed_s": elapsed_before + time.perf_counter() - t_start})
                progress.update(step, loss_value, tok_s, per_step * (cfg.max_iters - step))
                window_t, window_steps = 0.0, 0

    # --- final: whole validation split, summary
    summary = {
        "model": cfg.model,
        "preset": preset,
        "params": n_params,
        "step": step,
        "seed": cfg.seed,
        "final_train_loss": last_eval["train_loss"] if last_eval else None,
        "final_val_loss": last_eval["val_loss"] if last_eval else None,
    }
    if cfg.whole_val:
        t0 = time.perf_counter()
        whole, n_targets = evaluate_whole(model, val_ids, cfg.block_size, cfg.batch_size, dist, device, autocast)
        summary.update(whole_val_loss=whole, whole_val_bits_per_char=whole / math.log(2), whole_val_tokens=n_targets)
        log({"type": "final", "step": step, "whole_val_loss": whole, "whole_val_bits_per_char": whole / math.log(2)})
        progress.message(f"whole validation split ({n_targets:,} tokens): {whole:.4f} nats = "
                         f"{whole / math.log(2):.4f} bits/char ({time.perf_counter() - t0:.1f}s)")
    total_train_time = train_time_before + train_time
    summary.update(
        wall_time_s=elapsed_before + time.perf_counter() - t_start,
        train_time_s=total_train_time,
        tokens_per_s=step * tokens_per_step / total_train_time if total_train_time > 0 else None,
        block_size=cfg.block_size,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        device=str(device),
        world_size=dist.world_size,
        threads=torch.get_num_threads(),
        machine=machine_info(),
        versions=_versions(cfg.model),
        corpus=corpus_info,
    )
    if metrics is not None:
        metrics.close()
        _atomic_write_text(run_dir / FINAL_FILE, json.dumps(summary, indent=2) + "\n")
    dist.barrier()
    return summary


def _eval_seed(seed: int, step: int) -> int:
    """Seed of the batches of the estimate at ``step``: distinct for every (seed, step)."""
    return (seed + 1) * 2**32 + step


def _last_eval(run_dir: Path, upto: int) -> dict | None:
    evals = [r for r in read_metrics(run_dir) if r.get("type") == "eval" and r["step"] <= upto]
    return evals[-1] if evals else None


class _DeferredStop:
    """Turn the first SIGINT/SIGTERM into a request honoured between steps (checkpoint,
    then KeyboardInterrupt), so a stop never lands inside an optimizer update; a second
    signal interrupts at once. Off under DDP, where processes could see the request at
    different steps; there the periodic checkpoints are the resume points."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# ----------------------------------------------------------------------------- loading for inference
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
    model = build_model(cfg.model, cfg.model_config)
    load_checkpoint(run_dir, model, cfg.model, cfg.model_config, require_state=False)
    return model.to(device).eval(), tokenizer, doc
