"""Model configuration for Logarithmic Memory Networks.

Glossary (code name -> paper symbol / meaning):
    d_model    embedding width d
    n_banks    number of independent memory banks (the paper's "multi-memory")
    summarizer the learned function S that maps a pair of level i-1 nodes to a level i node
    expand     k of the expander summarizer; level i then holds 1 + i*k vectors per bank
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SUMMARIZERS = ("linear", "conv", "dwsep")
POS_ENCODINGS = ("none", "sinusoidal")


@dataclass
class LMNConfig:
    """Hyper-parameters of an LMN language model.

    The defaults are the paper's Table 1 model (71,489 parameters).

    Args:
        vocab_size: number of token ids; inputs must lie in ``[0, vocab_size)``.
        d_model: width of the residual stream.
        n_layers: number of LMN blocks.
        n_heads: attention heads of the single-vector attention; must divide ``d_model``.
        n_banks: memory banks per layer (one summarizer each for ``"linear"``).
        summarizer: ``"linear"`` (per-bank Linear(2d -> d)), ``"conv"`` (one Conv1d with
            kernel 2 / stride 2 over all banks' channels) or ``"dwsep"``
            (depthwise-separable version of ``"conv"``).
        expand: k of the expander summarizer (0 disables it).
        ff_mult: hidden width of the feed-forward network is ``ff_mult * d_model``.
        pos_encoding: ``"none"`` (the paper's LMN) or ``"sinusoidal"`` (ablation: added to
            the token embedding).
        norm_eps: epsilon of the RMSNorm/LayerNorm layers; ``None`` uses torch's default
            (machine epsilon of the dtype for RMSNorm, 1e-5 for LayerNorm).
        chunk_size: positions the parallel form attends at once (a power of two). A
            memory/speed knob only: results do not depend on it.
    """

    vocab_size: int = 65
    d_model: int = 32
    n_layers: int = 4
    n_heads: int = 4
    n_banks: int = 2
    summarizer: str = "linear"
    expand: int = 0
    ff_mult: int = 4
    pos_encoding: str = "none"
    norm_eps: float | None = None
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_banks", "ff_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LMNConfig.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.expand, bool) or not isinstance(self.expand, int) or self.expand < 0:
            raise ValueError(f"LMNConfig.expand must be an integer >= 0, got {self.expand!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"LMNConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.summarizer not in SUMMARIZERS:
            raise ValueError(
                f"LMNConfig.summarizer must be one of {SUMMARIZERS}, got {self.summarizer!r}"
            )
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"LMNConfig.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}"
            )
        if (
            isinstance(self.chunk_size, bool)
            or not isinstance(self.chunk_size, int)
            or self.chunk_size < 1
            or self.chunk_size & (self.chunk_size - 1)
        ):
            raise ValueError(f"LMNConfig.chunk_size must be a power of two >= 1, got {self.chunk_size!r}")
        if self.norm_eps is not None and not (self.norm_eps > 0):
            raise ValueError(f"LMNConfig.norm_eps must be > 0 or None, got {self.norm_eps!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def level_set_size(self, level: int) -> int:
        """Vectors per bank held by one node of ``level`` (1 + level*k with the expander)."""
        return 1 + level * self.expand

    def slots_per_level(self, level: int) -> int:
        """Memory slots that ``level`` (>= 1) contributes to the attention, over all banks."""
        return self.n_banks * self.level_set_size(level)

    def n_slots(self, t: int) -> int:
        """Number of attended slots at 0-based position ``t`` (slot 0 = the token itself)."""
        levels = (t + 1).bit_length() - 1
        return 1 + sum(self.slots_per_level(i) for i in range(1, levels + 1))

    def architecture(self) -> dict:
        """The fields that define the function (everything but runtime knobs)."""
        d = asdict(self)
        d.pop("chunk_size")
        return d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LMNConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LMNConfig field(s): {', '.join(unknown)}")
        return cls(**data)
