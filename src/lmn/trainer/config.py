"""The run's configuration: :class:`TrainConfig`, the presets, and what may change on resume."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from ..kinds import get_kind, kind_names
from ..validation import check_int

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LR_SCHEDULES = ("constant", "cosine")
DECAY_RULES = ("all", "matrices")


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are the paper's LMN protocol."""

    model: str = _opt("lmn", "model kind (see lmn.kinds): " + ", ".join(kind_names("train")))
    model_size: str = _opt("paper", "named size of the model kind, as its file lists them (paper: the "
                           "paper's ~71K-parameter budget, tiny, large); --model-opt fields apply on top")
    model_config: dict = field(
        default_factory=dict,
        metadata={"help": "overrides of the model's own config (vocab_size comes from the task)"},
    )
    task: str = _opt("text", "task (see lmn.tasks); text: next-character prediction on --data; dataset: the same "
                     "on a token dataset directory (--dataset DIR)")
    task_options: dict = field(default_factory=dict, metadata={"help": "options of the task (--task-opt KEY=VALUE)"})
    data: str = _opt("tinyshakespeare", "corpus name (tinyshakespeare) or path to a UTF-8 text file (the dataset "
                     "task: the directory lmn data prepare wrote)")
    train_frac: float = _opt(0.9, "leading fraction of the corpus used for training; the rest validates")
    packing: bool = _opt(False, "the dataset task only: every window carries the dataset's document starts "
                         "(Batch.doc_starts), so the model's memory restarts at each document boundary inside a "
                         "window (LMN's tree and state, GPT-2's attention by a block-diagonal mask, the recurrent "
                         "peers' state; positions count from the document's start) and the prediction at a document's "
                         "first token reads that token alone. Off: windows read across documents, as nanoGPT's "
                         "training does. The windows, their targets and the tokens scored are the same either way (a "
                         "document's first token is still predicted, from the end of the one before); training, the "
                         "estimates and the whole-split evaluation all follow it; --resume keeps it and refuses a "
                         "change")
    block_size: int = _opt(512, "tokens per training window")
    batch_size: int = _opt(16, "windows per step (global batch, split across DDP processes)")
    lr: float = _opt(1e-3, "AdamW learning rate (the peak of --lr-schedule)")
    lr_schedule: str = _opt("constant", "constant (the paper's), or cosine: linear warm-up over --warmup-iters, "
                            "then cosine decay to --min-lr at --lr-decay-iters, --min-lr after (nanoGPT's)")
    warmup_iters: int = _opt(0, "steps of linear learning-rate warm-up from 0 (cosine schedule)")
    lr_decay_iters: int = _opt(0, "step at which the cosine schedule reaches --min-lr (0: the run's first "
                               "--max-iters; a resumed run with more steps stays at --min-lr)")
    min_lr: float = _opt(0.0, "final learning rate of the cosine schedule")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.999, "AdamW beta2 (nanoGPT uses 0.99)")
    weight_decay: float = _opt(0.01, "AdamW weight decay (0.01 is torch's default)")
    decay: str = _opt("all", "which parameters weight decay applies to: all (torch's default), or matrices "
                      "(tensors of 2+ dimensions: weights and embeddings, not biases or norms; nanoGPT's rule)")
    grad_clip: float = _opt(0.0, "clip the global gradient norm to this value before each step (0: no clipping)")
    early_stop: int = _opt(0, "stop when the validation estimate has not improved for this many evaluations in a "
                           "row (0: never; train to --max-iters)")
    keep_best: bool = _opt(False, "keep the weights of the best validation estimate: RUN/best.safetensors, and the "
                           "final whole-split evaluation uses them")
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
    fsdp: bool = _opt(False, "under torchrun: shard parameters, gradients and optimizer state with FSDP2 "
                      "(fully_shard per block, then the root) instead of replicating them with DDP")
    compile: bool = _opt(False, "run the training step's model through torch.compile (evaluation stays eager; "
                         "on CPU it needs a C++ compiler; not with --fsdp or --gradient-checkpointing)")
    device: str = _opt("auto", "cpu, cuda, cuda:N, or auto (cuda if available)")
    threads: int = _opt(1, "torch CPU threads per process, set by the lmn command (0 = torch's default)")
    out_dir: str = _opt("", "run directory (default runs/<model>-seed<seed>)")

    def __post_init__(self) -> None:
        if self.model not in kind_names("train"):
            raise ValueError(f"model must be one of {', '.join(kind_names('train'))}, got {self.model!r}")
        for name in ("model_config", "task_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for name in ("block_size", "batch_size", "eval_interval", "eval_iters", "ckpt_interval", "log_interval"):
            check_int(name, getattr(self, name), min=1)
        check_int("max_iters", self.max_iters, min=0)
        check_int("threads", self.threads, min=0)
        check_int("seed", self.seed, min=0, max=2**31 - 1)
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"train_frac must be in (0, 1), got {self.train_frac!r}")
        for name, lo_ok in (("lr", lambda v: v > 0), ("weight_decay", lambda v: v >= 0)):
            value = getattr(self, name)
            if not (lo_ok(value) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.decay not in DECAY_RULES:
            raise ValueError(f"decay must be one of {', '.join(DECAY_RULES)}, got {self.decay!r}")
        check_int("warmup_iters", self.warmup_iters, min=0)
        check_int("early_stop", self.early_stop, min=0)
        for name in ("keep_best", "packing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_int("lr_decay_iters", self.lr_decay_iters, min=0)
        for name in ("min_lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr_schedule == "cosine" and self.lr_decay_iters == 0:
            # fixed when the run is made, so that a run resumed with more --max-iters keeps its schedule
            self.lr_decay_iters = self.max_iters
        if self.lr_schedule == "cosine" and self.lr_decay_iters < self.warmup_iters:
            raise ValueError(f"lr_decay_iters ({self.lr_decay_iters}) must be at least warmup_iters "
                             f"({self.warmup_iters})")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}") from None
        if self.compile and (self.fsdp or self.gradient_checkpointing):  # (neither combination is tested)
            raise ValueError(f"--compile with --{'fsdp' if self.fsdp else 'gradient-checkpointing'} is not supported; "
                             "use one of them")
        if not self.out_dir:
            self.out_dir = f"runs/{self.model}-seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that follows ``step`` updates (a function of the
        step alone, so a resumed run follows the same schedule). Cosine: nanoGPT's rule --
        ``lr * (step + 1) / warmup_iters`` while ``step < warmup_iters``, then a cosine from
        ``lr`` down to ``min_lr`` at ``lr_decay_iters`` (0 is replaced by ``max_iters`` when
        the config is made), ``min_lr`` after."""
        if self.lr_schedule == "constant":
            return self.lr
        if step < self.warmup_iters:
            return self.lr * (step + 1) / self.warmup_iters
        end = self.lr_decay_iters
        if step >= end:
            return self.min_lr
        ratio = (step - self.warmup_iters) / max(end - self.warmup_iters, 1)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """From a dict (e.g. config.json's "train"); fields added since are defaulted."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)


def cli_flags(values: dict, base: dict, skip=()) -> list[str]:
    """The ``lmn train`` flags that turn the TrainConfig fields ``base`` into ``values``
    (both ``to_dict()`` form): one per field that differs, fields in ``skip`` left out."""
    flags = []
    for key, value in values.items():
        if key in skip or value == base.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


# Presets: overrides of the TrainConfig defaults, which are the paper's protocol. Each
# model kind states its own ``paper-<kind>`` budget (lmn.kinds.base.ModelKind.preset).
PRESETS: dict[str, dict] = {
    **{f"paper-{name}": {"model": name, **get_kind(name).preset}
       for name in kind_names("train") if get_kind(name).preset is not None},
    # The recommended LMN of issue 21 (docs/results/memory.md): the paper's protocol and size with
    # the memory mechanisms that recalled best on the probes measured there (a gated merge, a
    # 16-token window, the per-level score bias from the token and a sink slot). It misses the
    # issue's recall targets; memory.md says by how much. paper-lmn stays the paper's model.
    "lmn-r": {"model": "lmn", "model_config": {"summarizer": "gated", "window": 16, "level_gate": "data",
                                               "sink": True}},
    # A seconds-long run for tests and CI.
    "smoke": {
        "model": "lmn",
        "model_size": "tiny",  # every kind has one (LMN: d 16, 2 layers, 2 heads)
        "block_size": 64,
        "batch_size": 8,
        "lr": 3e-3,
        "max_iters": 40,
        "eval_interval": 20,
        "eval_iters": 4,
        "ckpt_interval": 20,
        "log_interval": 5,
    },
    # nanoGPT's Shakespeare-char setting (karpathy/nanoGPT, config/train_shakespeare_char.py and
    # train.py's defaults) for every kind with a ``nanogpt`` size (~10.7M parameters, nanoGPT's
    # GPT: LMN and GPT-2): a GPU run (issue 13, item 4).
    **{f"nanogpt-{name}": {
        "model": name, "model_size": "nanogpt", "model_config": {"dropout": 0.2},
        "block_size": 256, "batch_size": 64, "lr": 1e-3, "lr_schedule": "cosine", "warmup_iters": 100,
        "lr_decay_iters": 5000, "min_lr": 1e-4, "beta2": 0.99, "weight_decay": 0.1, "decay": "matrices",
        "grad_clip": 1.0, "max_iters": 5000, "eval_interval": 250, "eval_iters": 200, "ckpt_interval": 250,
        "log_interval": 10, "dtype": "bfloat16",
    } for name in kind_names("train") if "nanogpt" in get_kind(name).sizes},
}

# Fields that may change when a run is resumed: they do not change what is computed
# (``data`` is checked by the task's record, e.g. the corpus sha256, instead of by name).
RESUMABLE_FIELDS = frozenset({"max_iters", "device", "threads", "log_interval", "ckpt_interval", "out_dir", "data",
                              "gradient_checkpointing", "fsdp", "compile"})


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
