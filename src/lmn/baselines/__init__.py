"""Baselines and recurrent peers: thin wrappers over HuggingFace ``transformers`` models
with random init (nothing is downloaded), each registered as a model kind
(:mod:`lmn.kinds`): ``gpt2``, ``mamba``, ``mamba2``, ``rwkv``; and ``loglinear-mamba2`` and
``s4d``, written here in plain PyTorch (:mod:`lmn.baselines.loglinear_mamba2`,
:mod:`lmn.baselines.s4d`).

Every wrapper has the trainer's model contract -- ``forward(idx (B, T)) -> logits
(B, T, vocab)`` and ``num_parameters()`` -- and a small config dataclass with
``to_dict``/``from_dict``. ``transformers`` is imported only when a model is built,
so ``import lmn`` (and reading the registry) works without it.
"""

from __future__ import annotations

from ..kinds import get_kind


def get_baseline(kind: str):
    """``(model_class, config_class)`` of the registered kind ``kind``.

    Raises:
        ValueError: unknown kind.
    """
    spec = get_kind(kind)
    return spec.model_class, spec.config_class
