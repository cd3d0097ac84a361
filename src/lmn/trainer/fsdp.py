"""FSDP2 for the trainer's data-parallel path (``lmn train --fsdp`` under torchrun).

Parameters, gradients and optimizer state are sharded across the processes with
``torch.distributed.fsdp.fully_shard``: once per block (the children of the model's
largest ``nn.ModuleList``, whatever the kind: LMN's ``blocks``, GPT-2's ``h``, Mamba's
``layers``), then the root. Each process still takes its ``batch_size / N`` rows of the
same global batch and gradients are averaged (reduce-scatter), so a step equals the
single-process step as with DDP (``tests/trainer/test_fsdp.py``); what changes is that no process
holds more than one block's full parameters at a time, for models larger than one device.

Checkpoints stay in the single-process format: the full weights and a full optimizer
state (keyed like ``optimizer.state_dict()`` of the unsharded model) are gathered on every
process and written by process 0, so a run can be resumed with or without ``--fsdp`` and
with any number of processes. A parameter whose first dimension does not split evenly
(a vocabulary of 65 on 2 processes) is gathered from padded shards; :func:`_compact` gives it
its own storage before it is written (``tests/trainer/test_fsdp.py``, 59 characters).
Evaluation runs the sharded model on every process in lockstep (FSDP's all-gathers are
collectives).

Why not ``torch.distributed.checkpoint`` (DCP) for sharded saves: a DCP checkpoint is a
directory of per-process shard files plus metadata, read back through DCP (or converted
with ``dcp_to_torch_save``); ``load_run``, ``lmn generate``, ``lmn convert`` and a
one-process ``--resume`` would all need that reader, and the checkpoint manifest (one
``model.safetensors`` and one trainer state, hashed) would change format. Its gain is that
no process holds the full state at once; here the full state is gathered to process 0's
CPU memory (``cpu_offload``) one tensor at a time, which costs host memory of one model
plus its Adam state (the paper model: ~1 MiB). DCP becomes the right choice only for a
model whose full state does not fit one host's memory, which none of the presets is.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# FSDP2 warns when the root returns a view; the trainer never writes into the logits in place
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return fully_shard, FSDPModule


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model`."""
    try:
        return isinstance(model, _fsdp()[1])
    except ImportError:  # a torch without FSDP2
        return False


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: the children of its ``nn.ModuleList`` holding the most
    parameters (none: the model is sharded as one unit)."""
    best, size = [], 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            n = sum(p.numel() for p in module.parameters())
            if n > size:
                best, size = list(module), n
    return best


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every block, then the root, over all processes (in place)."""
    try:
        fully_shard, _ = _fsdp()
        from torch.distributed.device_mesh import init_device_mesh
    except ImportError as err:
        raise ValueError(f"--fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6): {err}") from None
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in block_modules(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def check_fsdp(cfg, world_size: int) -> None:
    """Refuse what FSDP2 cannot do here, in one line."""
    if not cfg.fsdp:
        return
    if world_size < 2:
        raise ValueError("--fsdp shards across processes: launch with torchrun --nproc_per_node N (N >= 2)")
    if cfg.keep_best:
        raise ValueError("--fsdp with --keep-best is not supported (the best weights would have to be gathered at "
                         "every improvement); use --early-stop alone, or train without --fsdp")
    if cfg.gradient_checkpointing:
        raise ValueError("--fsdp with --gradient-checkpointing is not supported (the checkpointed blocks run "
                         "outside FSDP's hooks); use one of them")


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _compact(value):
    """``value`` with every tensor owning exactly its storage. A parameter whose first
    dimension does not split evenly over the processes (a vocabulary of 65 on 2) is sharded
    padded (33 + 33 rows); its gathered full tensor is then a view of the first 65 rows of
    the padded buffer, which safetensors refuses to write ("None is covering the entire
    storage") and ``torch.save`` would write with the padding."""
    if isinstance(value, torch.Tensor):
        whole = value.is_contiguous() and value.storage_offset() == 0
        if whole and value.untyped_storage().nbytes() == value.numel() * value.element_size():
            return value
        return value.clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    return value


def full_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The full weights and the full optimizer state in ``optimizer.state_dict()``'s own
    format (parameters by index), on process 0 (the others: ``({}, None)``). A collective:
    every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = _compact(get_model_state_dict(model, options=_options()))
    if not optimizer.state:  # before the first step: get_optimizer_state_dict would initialise the
        # state by a zero-gradient step, which counts as Adam's first (a run checkpoints step 0)
        return weights, optimizer.state_dict() if weights else None
    osd = get_optimizer_state_dict(model, optimizer, options=_options())
    if not osd:  # (gathered on process 0 only: the others get empty dicts)
        return weights, None
    index = {name: i for i, name in enumerate(_names(model))}
    state = {index[name]: _compact(value) for name, value in osd["state"].items()}
    groups = [{**g, "params": [index[name] for name in g["params"]]} for g in osd["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """Load a single-process ``optimizer.state_dict()`` into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _names(model)
    osd = {"state": {names[i]: value for i, value in state_dict["state"].items()},
           "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state_dict["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, osd, options=_options())


def reshard_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, make) -> torch.optim.Optimizer:
    """A new optimizer over the sharded parameters, made by ``make(model)`` (the same
    groups and settings as ``optimizer``, which was made over the unsharded ones), carrying
    over the state of ``optimizer`` (e.g. when resuming)."""
    saved = optimizer.state_dict()
    new = make(model)
    if len(new.param_groups) != len(optimizer.param_groups):
        raise ValueError("the sharded model's parameter groups differ from the unsharded model's")
    for group, old in zip(new.param_groups, optimizer.param_groups):
        group.update({k: v for k, v in old.items() if k != "params"})
    if saved["state"]:
        load_optimizer(model, new, saved)
    return new


def plain_model(build, weights: dict) -> nn.Module | None:
    """An unsharded module holding ``weights`` (built on the meta device, then the tensors
    assigned: no second copy), for writing the checkpoint; None for no weights (not process 0)."""
    if not weights:
        return None
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build()
    model.load_state_dict(weights, assign=True)
    return model
