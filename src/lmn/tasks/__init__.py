"""Tasks the trainer runs (:class:`Task`, :class:`Batch`), by name.

    >>> from lmn.tasks import make_task, task_names
    >>> task_names()[:2]
    ('text', 'mqar')

A task is a class with ``from_config(train_config)``; register one with
:func:`register_task` (the tests register a masked toy task this way) or add it to
``TASKS`` below.
"""

from __future__ import annotations

import importlib

from .base import LOSS_KINDS, Batch, Task

# name -> "module:Class", imported on first use
TASKS: dict[str, str] = {
    "text": "lmn.tasks.text:TextTask",
    # synthetic probes (issue 14), generated offline from a seed
    "mqar": "lmn.tasks.mqar:MQARTask",
    "passkey": "lmn.tasks.passkey:PasskeyTask",
    "distance": "lmn.tasks.distance:DistanceTask",
    "selective-copy": "lmn.tasks.selective_copy:SelectiveCopyTask",
    "listops": "lmn.tasks.listops:ListOpsTask",
    "etth1": "lmn.tasks.etth1:ETTh1Task",  # multivariate forecasting (issue 11), for the lmn.timeseries kinds
    # long-range classification on real data (issue 22): sequential Fashion-MNIST, UCR sets
    "sfashion-mnist": "lmn.tasks.fashion_mnist:FashionMNISTTask",
    "ucr": "lmn.tasks.ucr:UCRTask",
    "dataset": "lmn.tasks.dataset:DatasetTask",  # a token dataset on disk (lmn data prepare; lmn train --dataset)
}
_REGISTERED: dict[str, type] = {}


def register_task(name: str, task_class: type) -> None:
    """Make ``task_class`` (with ``from_config(train_config)``) trainable as ``--task name``."""
    if name in TASKS:
        raise ValueError(f"task {name!r} is built in")
    _REGISTERED[name] = task_class


def task_names() -> tuple[str, ...]:
    return (*TASKS, *_REGISTERED)


def task_class(name: str) -> type:
    """The class of task ``name``.

    Raises:
        ValueError: unknown task (the message lists the known ones).
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(task_names())}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_task(cfg) -> Task:
    """The task a :class:`lmn.trainer.TrainConfig` names, built from it (loads its data).

    Raises:
        ValueError: ``cfg.packing`` with a task that has no documents to pack (before its
            data is read).
    """
    cls = task_class(cfg.task)
    if getattr(cfg, "packing", False) and not cls.packs_documents:
        raise ValueError(f"--packing resets the model's memory at document boundaries, but task {cfg.task!r} knows of "
                         f"none inside its rows (the text task's corpus is one stream), so it would change nothing; "
                         f"drop --packing, or "
                         f"prepare documents with lmn data prepare (a folder of files, or JSONL) and train with "
                         f"--dataset DIR --packing")
    task = cls.from_config(cfg)
    if task.loss_kind not in LOSS_KINDS:
        raise ValueError(f"task {cfg.task!r} has loss_kind {task.loss_kind!r}; expected one of {', '.join(LOSS_KINDS)}")
    return task


__all__ = ["LOSS_KINDS", "TASKS", "Batch", "Task", "make_task", "register_task", "task_class", "task_names"]
