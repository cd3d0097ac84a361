"""Mamba baseline: ``transformers.MambaForCausalLM``, random init, sized to the paper's
models: d 44, 4 layers, state 16, expand 2, conv 4, tied head -> 71,016 parameters for a
65-symbol vocabulary (LMN: 71,489; GPT-2: 69,344). ``large`` (bench): d 400, 8 layers:
8,381,600 (LMN's count at the same depth).

Speed on CPU: without the ``mamba-ssm`` CUDA kernels transformers runs the selective scan
in PyTorch. Its plain path loops over time, and the backward of that loop allocates a
full-size gradient per time step: ~110 s per 16 x 512 training step on one core. With the
``mambapy`` package installed, transformers uses mambapy's parallel scan instead (same
recurrence, different summation order): ~4 s per step. We ask for it
(``use_mambapy=True``) and warn when it is missing. Even so, the ``paper-mamba`` preset
uses a shorter budget than the paper's 5,000 steps.

Decoding caveat (transformers' implementation): a forward over more than one token starts
its selective scan from a zero SSM state, so after a chunked prefill the SSM state
*values* are not those of one long pass. Its size and the cost of a step do not depend on
them, which is what ``lmn bench decode`` measures.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

from torch import nn

from ..kinds.base import BenchSpec, ModelKind, hf_checkpointing
from ._common import ConfigMixin, HFDecoder, HFModel, import_transformers


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

    def to_hf(self):
        return import_transformers("mamba").MambaConfig(
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


class MambaBaseline(HFModel):
    """``forward(idx (B, T)) -> logits (B, T, vocab)``."""

    config_class = MambaBaselineConfig

    def make_hf(self, config: MambaBaselineConfig) -> nn.Module:
        if importlib.util.find_spec("mambapy") is None:
            warnings.warn(
                "mambapy is not installed: Mamba's scan falls back to a per-time-step loop that trains "
                "~25x slower on CPU; pip install mambapy",
                stacklevel=3,
            )
        return import_transformers("mamba").MambaForCausalLM(config.to_hf())


KINDS = {"mamba": ModelKind(
    name="mamba",
    title="Mamba",
    config_class=MambaBaselineConfig,
    model_class=MambaBaseline,
    decoder=HFDecoder,
    sizes={"paper": {}, "large": {"hidden_size": 400, "num_hidden_layers": 8},
           "tiny": {"hidden_size": 16, "num_hidden_layers": 2}},
    enable_checkpointing=hf_checkpointing,
    requires=("transformers",),
    bench=BenchSpec(describe={"decode": "through transformers' Mamba cache",
                              "bench-train": "transformers' Mamba (PyTorch scan)",
                              "state": "Mamba's conv + SSM cache"}),
    # The paper's protocol on a shorter budget: on CPU, transformers' Mamba (even with
    # mambapy's parallel scan) takes ~4 s per 16 x 512 step, so 5,000 steps with the full
    # evaluation schedule would take over 12 hours. 1,000 steps, 20 batches per estimate.
    preset={"max_iters": 1000, "eval_iters": 20},
)}
