"""Baselines for the Table 1 comparison: thin wrappers over HuggingFace ``transformers``
models with random init (nothing is downloaded).

Every wrapper has the trainer's model contract -- ``forward(idx (B, T)) -> logits
(B, T, vocab)`` and ``num_parameters()`` -- and a small config dataclass with
``to_dict``/``from_dict``. ``transformers`` is imported only when a baseline is built,
so ``import lmn`` works without it.
"""

from __future__ import annotations

import importlib

# kind -> (module, model class, config class); the module is imported on first use.
_BASELINES = {
    "gpt2": ("lmn.baselines.gpt2", "GPT2Baseline", "GPT2BaselineConfig"),
    "mamba": ("lmn.baselines.mamba", "MambaBaseline", "MambaBaselineConfig"),
}
BASELINES = tuple(_BASELINES)


def get_baseline(kind: str):
    """``(model_class, config_class)`` of baseline ``kind``.

    Raises:
        ValueError: unknown kind.
        ImportError: ``transformers`` is not installed (with the pip command to fix it).
    """
    if kind not in _BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
    module_name, model_name, config_name = _BASELINES[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if getattr(err, "name", None) and err.name.split(".")[0] == "transformers":
            raise ImportError(
                f"the {kind} baseline needs HuggingFace transformers: pip install 'lmn[train]'"
            ) from None
        raise
    return getattr(module, model_name), getattr(module, config_name)
