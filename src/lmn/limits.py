"""Limits before work: what a model config and a run's sizes need in memory, estimated
without allocating anything, and checked against what the machine has.

    >>> from lmn.limits import parameter_count, train_estimate
    >>> parameter_count("lmn", {"vocab_size": 65})          # built on the meta device
    71489
    >>> train_estimate("lmn", {"vocab_size": 65}, batch_size=16, seq_len=512).total  # bytes

Every entry point that builds a model from sizes someone typed or a file holds checks them
here first: ``lmn train`` before its run directory exists (:func:`check_train`),
:func:`lmn.trainer.load_run` before it builds the model (:func:`check_run_model`: the
checkpoint's recorded config, then the memory), :class:`lmn.hf.LMNForCausalLM`
(:func:`check_model`), ``lmn probe`` for every model and cell before its first run. An
absurd size is a one-line ``ValueError`` with the estimate in it, not a hang or an attempt
at a 260 GB allocation.

**Parameters** are counted on PyTorch's ``meta`` device (shapes only, no memory): the kind's
model at the config's own size when it has at most :data:`EXACT_LAYERS` layers, else at 2
and 3 layers and extrapolated (every layer has the same shapes), so a deep config costs two
small builds. Two bounds come first and need no build at all: at most :data:`MAX_LAYERS`
layers, and a lower bound of ``layers * width**2`` parameters (every kind has at least one
width x width matrix per layer) at most :data:`MAX_PARAMETERS`; past that the lower bound
is the estimate (building would be pointless, and RWKV's initialisation loops over its
width in Python). The layer count and width are the config fields named in
:data:`LAYER_FIELDS` and :data:`WIDTH_FIELDS` (a kind without them is counted as built).

**Memory**, a deliberately low estimate (what it refuses cannot run): float32 weights, 4
bytes a parameter, to load or run a model; to train with AdamW 16 (weights, gradients, two
moments; divided among the processes under FSDP) plus the activations:
:data:`ACTIVATION_FLOATS` numbers per token, width unit and layer (:data:`CHECKPOINTED_FLOATS`
with gradient checkpointing) and :data:`LOGIT_COPIES` copies of the logits, for this
process's share of the batch.

**The machine's memory** (:func:`memory_limit`): ``$LMN_MEMORY_LIMIT`` when set (bytes, or
``24GB``, ``512MiB``, ...); for a CUDA device its total memory; else the physical memory
(psutil if installed, else ``sysconf``), or the cgroup's limit when that is lower.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from .validation import MAX_LAYERS, check_int

LAYER_FIELDS = ("n_layers", "n_layer", "num_hidden_layers")  # the config field counting a kind's blocks
WIDTH_FIELDS = ("d_model", "n_embd", "hidden_size")  # the config field of its residual width
MAX_PARAMETERS = 10**13  # 40 TB of float32 weights: past it the lower bound is the estimate
EXACT_LAYERS = 12  # counted as built up to this depth, extrapolated from 2 and 3 layers beyond
ACTIVATION_FLOATS = 16  # numbers kept for backward per token, width unit and layer (a low figure)
CHECKPOINTED_FLOATS = 2  # the same with gradient checkpointing (the blocks' inputs, one block's work)
LOGIT_COPIES = 3  # logits, their log-softmax and its gradient
TRAIN_BYTES_PER_PARAMETER = 16  # float32 weights, gradients and AdamW's two moments
WEIGHT_BYTES = 4
ENV = "LMN_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


# ----------------------------------------------------------------------------- formatting
def format_bytes(n: float) -> str:
    """``260 GB``, ``1.5 GB``, ``512 MB`` (decimal units)."""
    for unit, size in (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n)} bytes"


def format_count(n: int) -> str:
    """``71,489``, ``12.3 million``, ``65.0 billion``, ``4.0e18``."""
    if n < 10**6:
        return f"{n:,}"
    if n < 10**9:
        return f"{n / 1e6:.1f} million"
    if n < 10**12:
        return f"{n / 1e9:.1f} billion"
    return f"{n:.1e}".replace("e+", "e")


# ----------------------------------------------------------------------------- parameters
def _kind(kind):
    from .kinds import ModelKind, get_kind

    return kind if isinstance(kind, ModelKind) else get_kind(kind)


def _field(config: dict, names: tuple) -> tuple[str | None, int | None]:
    return next(((n, config[n]) for n in names if n in config), (None, None))


def check_sizes(kind, config: dict, where: str = "the model config") -> None:
    """The hard bounds, checked before anything is built: the layer count an integer in
    ``[1, MAX_LAYERS]``, every size field an integer (``1e9`` read from JSON is a float).

    Raises:
        ValueError: one line naming ``where``, the field and what to give instead.
    """
    kind = _kind(kind)
    for name in (*LAYER_FIELDS, *WIDTH_FIELDS, "vocab_size"):
        if name in config:
            value = config[name]
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                raise ValueError(f"{where}: {kind.name} {name} must be a whole number, got {value!r} (a float: "
                                 f"write {int(value)} without a decimal point or exponent)")
            check_int(f"{where}: {kind.name} {name}", value, min=1)
    name, layers = _field(config, LAYER_FIELDS)
    if layers is not None and layers > MAX_LAYERS:
        raise ValueError(f"{where}: {kind.name} {name}={layers:,} is more than {MAX_LAYERS:,} layers, far past "
                         f"any model that trains; give a smaller {name}")


def lower_bound(config: dict) -> int:
    """``layers * width**2``: at most the parameters of any registered kind (0 without a width field)."""
    layers = _field(config, LAYER_FIELDS)[1] or 1
    width = _field(config, WIDTH_FIELDS)[1] or 0
    return layers * width * width


def _estimate(kind, config: dict, where: str) -> tuple[int, bool]:
    """``(parameters, exact)``: counted on the meta device, or the lower bound alone (``exact``
    False) when that is past :data:`MAX_PARAMETERS`."""
    kind = _kind(kind)
    check_sizes(kind, config, where)
    config = kind.normalize(config)  # the defaults of the fields not given; validated
    bound = lower_bound(config)
    if bound > MAX_PARAMETERS:
        return bound, False
    try:
        return _meta_count(kind.name, json.dumps(config, sort_keys=True)), True
    except (RuntimeError, OverflowError) as err:  # a shape past what torch can describe
        raise ValueError(f"{where}: the {kind.name} model is too large to build "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); give smaller sizes") from None


@functools.lru_cache(maxsize=256)
def _meta_count(kind_name: str, config_json: str) -> int:
    kind = _kind(kind_name)
    config = json.loads(config_json)
    name, layers = _field(config, LAYER_FIELDS)
    if layers is None or layers <= EXACT_LAYERS:
        return _build_count(kind, config)
    two, three = _build_count(kind, {**config, name: 2}), _build_count(kind, {**config, name: 3})
    return two + (layers - 2) * (three - two)


def _build_count(kind, config: dict) -> int:
    """Distinct parameters of the kind's model built on the meta device, its initialisation
    skipped (:class:`_ShapesOnly`); the global RNG and the warnings a real build gives are
    left as they were."""
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), torch.device("meta"), _ShapesOnly():
        warnings.simplefilter("ignore")
        model = kind.build(config)
    return sum(p.numel() for p in model.parameters())


_RESHAPING = frozenset({"resize_", "resize_as_", "set_", "as_strided_", "squeeze_", "unsqueeze_", "t_", "transpose_",
                        "swapdims_", "swapaxes_"})


class _ShapesOnly(TorchFunctionMode):
    """Skip what only fills tensors: ``torch.nn.init``'s functions, and in-place methods of
    meta tensors (none changes a shape; the few that do are passed through). Several have
    Python meta kernels whose first use imports ``torch._dynamo``: seconds, for nothing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.endswith("__") and name not in _RESHAPING and args
                and getattr(args[0], "is_meta", False)):
            return args[0]
        return func(*args, **kwargs)


def parameter_count(kind, config: dict, where: str = "the model config") -> int:
    """The parameters of ``kind``'s model at ``config`` (a full config dict), without
    allocating them.

    Raises:
        ValueError: a size past the hard bounds (:func:`check_sizes`), or a model of more than
            :data:`MAX_PARAMETERS` parameters.
    """
    n, exact = _estimate(kind, config, where)
    if not exact:
        raise ValueError(f"{where}: the {_kind(kind).name} model has at least {format_count(n)} parameters, "
                         f"more than {format_count(MAX_PARAMETERS)}; give smaller sizes")
    return n


# ----------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class Estimate:
    """What a model needs in memory, in bytes (``exact``: the parameters were counted, not
    bounded from below)."""

    params: int
    exact: bool
    weights: int  # weights (+ gradients and optimizer state when training)
    activations: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.activations

    def describe(self) -> str:
        """``~260 GB (65.0 billion parameters)``; ``at least`` when bounded from below."""
        approx = "~" if self.exact else "at least ~"
        return f"{approx}{format_bytes(self.total)} ({format_count(self.params)} parameters)"


def model_estimate(kind, config: dict, where: str = "the model config") -> Estimate:
    """Memory to hold the model's float32 weights (loading it, inference)."""
    n, exact = _estimate(kind, config, where)
    return Estimate(n, exact, WEIGHT_BYTES * n)


def train_estimate(kind, config: dict, batch_size: int, seq_len: int, *, gradient_checkpointing: bool = False,
                   dtype: str = "float32", world_size: int = 1, fsdp: bool = False,
                   where: str = "the model config") -> Estimate:
    """Memory one process needs to train ``kind`` at ``config`` on batches of
    ``batch_size`` x ``seq_len`` (the global batch, shared by ``world_size`` processes)."""
    n, exact = _estimate(kind, config, where)
    weights = TRAIN_BYTES_PER_PARAMETER * n // (world_size if fsdp else 1)
    tokens = max(batch_size // max(world_size, 1), 1) * seq_len
    layers = _field(config, LAYER_FIELDS)[1] or 1
    width = _field(config, WIDTH_FIELDS)[1] or 0
    element = 2 if dtype in ("bfloat16", "float16") else 4
    floats = CHECKPOINTED_FLOATS if gradient_checkpointing else ACTIVATION_FLOATS
    activations = tokens * (width * layers * floats + config.get("vocab_size", 0) * LOGIT_COPIES) * element
    return Estimate(n, exact, weights, activations)


def parse_bytes(text: str) -> int:
    """``"24GB"`` -> 24e9, ``"512MiB"`` -> 512 * 2**20, ``"1e9"`` -> 1e9."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kmgtKMGT]?)(i?)[bB]?\s*", text)
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"{ENV} must be a size in bytes such as 24GB, 512MiB or 8e9, got {text!r}")
    unit = m.group(2).lower()
    scale = 1024 ** "_kmgt".index(unit) if m.group(3) else _UNITS[unit]
    return int(float(m.group(1)) * scale)


def _physical_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max", or v1's "no limit" near 2**63
            return int(text)
    return None


def memory_limit(device="cpu") -> tuple[int | None, str]:
    """``(bytes, how to say it)``: the memory a model on ``device`` may take (None: unknown,
    nothing is refused)."""
    text = os.environ.get(ENV)
    if text:
        n = parse_bytes(text)
        return n, f"{ENV} allows {format_bytes(n)}"
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        n = int(torch.cuda.get_device_properties(index).total_memory)
        return n, f"the GPU {device} has {format_bytes(n)}"
    sizes = [n for n in (_physical_memory(), _cgroup_limit()) if n]
    if not sizes:
        return None, "the machine's memory is unknown"
    return min(sizes), f"this machine has {format_bytes(min(sizes))}"


# ----------------------------------------------------------------------------- the checks
def _describe_model(kind, config: dict) -> str:
    kind = _kind(kind)
    shown = [f"{n}={config[n]:,}" for n in (*WIDTH_FIELDS, *LAYER_FIELDS) if n in config]
    return f"{kind.name} ({', '.join(shown)})" if shown else kind.name


def check_model(kind, config: dict, device="cpu", where: str = "the model config",
                advice: str = "give smaller sizes") -> Estimate:
    """Raise ValueError unless the model's weights fit in ``device``'s memory; the estimate."""
    estimate = model_estimate(kind, config, where)
    for dev in dict.fromkeys(["cpu", str(device)]):  # built on the CPU, then moved
        limit, have = memory_limit(dev)
        if limit is not None and estimate.total > limit:
            raise ValueError(f"{where} needs {estimate.describe()} for the weights of {_describe_model(kind, config)} "
                             f"but {have}; {advice} (or set {ENV}=BYTES to allow more)")
    return estimate


def check_train(cfg, seq_len: int, device="cpu", world_size: int = 1) -> Estimate:
    """Raise ValueError unless training ``cfg`` (a :class:`lmn.trainer.TrainConfig` whose
    ``model_config`` is complete) fits in one process's memory on ``device``; the estimate."""
    where = f"training {_describe_model(cfg.model, cfg.model_config)}"
    estimate = train_estimate(cfg.model, cfg.model_config, cfg.batch_size, seq_len,
                              gradient_checkpointing=cfg.gradient_checkpointing, dtype=cfg.dtype,
                              world_size=world_size, fsdp=cfg.fsdp, where="the model options")
    limit, have = memory_limit(device)
    if limit is not None and estimate.total > limit:
        approx = "~" if estimate.exact else "at least ~"
        raise ValueError(
            f"{where} on batches of {cfg.batch_size:,} x {seq_len:,} tokens needs {approx}"
            f"{format_bytes(estimate.total)} ({format_count(estimate.params)} parameters: "
            f"{format_bytes(estimate.weights)} for weights, gradients and AdamW state, "
            f"{format_bytes(estimate.activations)} for activations) but {have}; lower --batch-size or "
            f"--block-size, or the model's sizes (--model-opt); or set {ENV}=BYTES to allow more")
    return estimate


def check_run_model(run_dir, kind_name: str, model_config: dict, device="cpu") -> Estimate:
    """Before :func:`lmn.trainer.load_run` builds a run's model: its config.json must agree
    with the newest checkpoint's recorded config (read from the weights file's header only;
    an unreadable one is left to the loader), and the model must fit in memory."""
    from .trainer.models import normalize_model_config
    from .trainer.rundir import CONFIG_FILE, MODEL_FILE, CheckpointError, list_checkpoints

    run_dir = Path(run_dir)
    where = f"the model config in {run_dir / CONFIG_FILE}"
    check_sizes(kind_name, model_config, where)
    for ckpt in list_checkpoints(run_dir)[:1]:
        recorded = _recorded(ckpt.path / MODEL_FILE)
        if recorded is None:
            break
        kind, config = recorded
        if kind != kind_name:
            raise CheckpointError(f"checkpoint {ckpt.name} of {run_dir} is a {kind!r} model but {CONFIG_FILE} says "
                                  f"{kind_name!r}; the run's files do not belong together")
        try:
            config = normalize_model_config(kind, config)
        except (TypeError, ValueError):
            break  # the loader says what is wrong with it
        diff = [f"{k}={config.get(k, '<unset>')!r} (checkpoint) vs {model_config.get(k, '<unset>')!r} ({CONFIG_FILE})"
                for k in sorted(set(config) | set(model_config)) if config.get(k, "<unset>") != model_config.get(k, "<unset>")]
        if diff:
            raise CheckpointError(f"{run_dir / CONFIG_FILE} does not match checkpoint {ckpt.name}: {'; '.join(diff)}; "
                                  f"restore the run's {CONFIG_FILE} (the checkpoint records the model it holds)")
    return check_model(kind_name, model_config, device, where,
                       advice=f"this run's {CONFIG_FILE} was edited, or the run needs a larger machine")


def _recorded(path: Path) -> tuple[str, dict] | None:
    """``(kind, model config)`` from a weights file's metadata (its header only), or None."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return meta["model"], json.loads(meta["model_config"])
    except Exception:  # safetensors raises its own error types for a bad header
        return None


__all__ = ["ACTIVATION_FLOATS", "ENV", "Estimate", "LAYER_FIELDS", "MAX_LAYERS", "MAX_PARAMETERS", "WIDTH_FIELDS",
           "check_model", "check_run_model", "check_sizes", "check_train", "format_bytes", "format_count",
           "lower_bound", "memory_limit", "model_estimate", "parameter_count", "parse_bytes", "train_estimate"]
