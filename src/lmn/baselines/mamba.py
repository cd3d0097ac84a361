"""Mamba baseline: ``transformers.MambaForCausalLM``, random init, sized to the paper's
models: d 44, 4 layers, state 16, expand 2, conv 4, tied head -> 71,016 parameters for a
65-symbol vocabulary (LMN: 71,489; GPT-2: 69,344).

Speed on CPU: without the ``mamba-ssm`` CUDA kernels transformers runs the selective scan
in PyTorch. Its plain path loops over time, and the backward of that loop allocates a
full-size gradient per time step: ~110 s per 16 x 512 training step on one core. With the
``mambapy`` package installed, transformers uses mambapy's parallel scan instead (same
recurrence, different summation order): ~4 s per step. We ask for it
(``use_mambapy=True``) and warn when it is missing. Even so, the ``paper-mamba`` preset
uses a shorter budget than the paper's 5,000 steps.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

from torch import Tensor, nn
from transformers import MambaConfig, MambaForCausalLM

from ._common import ConfigMixin, check_idx


@dataclass
class MambaBaselineConfig(ConfigMixin):
    """Size of the Mamba baseline (HF field names)."""

    vocab_size: int = 65
    hidden_size: int = 44
    num_hidden_layers: int = 4
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4

    def __post_init__(self) -> None:
        self._check_positive_ints(
            "vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel"
        )

    def to_hf(self) -> MambaConfig:
        return MambaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            state_size=self.state_size,
            expand=self.expand,
            conv_kernel=self.conv_kernel,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            use_mambapy=True,  # used only if the mambapy package is importable
        )


class MambaBaseline(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``."""

    def __init__(self, config: MambaBaselineConfig):
        super().__init__()
        if not isinstance(config, MambaBaselineConfig):
            raise TypeError(f"MambaBaseline expects a MambaBaselineConfig, got {type(config).__name__}")
        self.config = config
        if importlib.util.find_spec("mambapy") is None:
            warnings.warn(
                "mambapy is not installed: Mamba's scan falls back to a per-time-step loop that trains "
                "~25x slower on CPU; pip install mambapy",
                stacklevel=2,
            )
        self.hf = MambaForCausalLM(config.to_hf())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor) -> Tensor:
        check_idx(idx, self.config.vocab_size)
        return self.hf(input_ids=idx, use_cache=False).logits
