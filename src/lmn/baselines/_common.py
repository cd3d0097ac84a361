"""What the baseline wrappers share: config (de)serialisation, input checks, the module
around a transformers model, and decoding through its cache."""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields

import torch
from torch import Tensor, nn

from ..documents import check_doc_starts, run_documents
from ..kinds.base import Decoder
from ..validation import check_int


class ConfigMixin:
    """``to_dict``/``from_dict`` for a dataclass config; unknown fields are an error."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**data)

    def _check_positive_ints(self, *names: str) -> None:
        for name in names:
            check_int(f"{type(self).__name__}.{name}", getattr(self, name), min=1)


def check_heads(expand: int, hidden_size: int, head_dim: int, n_groups: int) -> None:
    """Mamba-2's head layout: ``expand * hidden_size`` splits into heads of ``head_dim``, and
    the heads into ``n_groups`` groups (sizes already checked to be positive integers)."""
    inner = expand * hidden_size
    if inner % head_dim:
        raise ValueError(f"expand * hidden_size ({inner}) must be divisible by head_dim ({head_dim})")
    if (inner // head_dim) % n_groups:
        raise ValueError(f"the {inner // head_dim} heads must be divisible by n_groups ({n_groups})")


def check_idx(idx: Tensor, vocab_size: int, max_len: int | None = None) -> None:
    """``idx`` must be ``(B, T)`` integer ids in ``[0, vocab_size)``, ``T <= max_len``."""
    if not isinstance(idx, Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, time) tensor of token ids, got {shape}")
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    if idx.numel() == 0:
        raise ValueError(f"idx is empty (shape {tuple(idx.shape)})")
    if max_len is not None and idx.shape[1] > max_len:
        raise ValueError(f"sequence length {idx.shape[1]} exceeds the model's {max_len} positions")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"idx contains token id {lo if lo < 0 else hi}, outside [0, {vocab_size})")


def import_transformers(kind: str):
    """``transformers``, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise ImportError(f"the {kind} baseline needs HuggingFace transformers: pip install 'torch-lmn[train]'") from None
    return transformers


class HFModel(nn.Module):
    """A transformers causal LM behind the trainer's contract: ``forward(idx (B, T)) ->
    logits (B, T, vocab)``. Subclasses set ``config_class`` and build ``self.hf`` in
    ``make_hf(config)`` (random init: nothing is downloaded)."""

    config_class: type = None

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.hf = self.make_hf(config)

    def make_hf(self, config) -> nn.Module:
        raise NotImplementedError

    def max_positions(self) -> int | None:
        return None

    def num_parameters(self) -> int:
        # parameters() yields a tied weight once, so the head is not counted twice.
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, doc_starts: Tensor | None = None) -> Tensor:
        """``doc_starts``: packed rows, ``(B, T)`` bool, True where a document starts
        (:mod:`lmn.documents`): every document is run alone (:func:`lmn.documents.run_documents`,
        exact for these causal models; GPT-2 masks its attention instead)."""
        check_idx(idx, self.config.vocab_size, self.max_positions())
        if doc_starts is not None:
            return run_documents(self._logits, idx, check_doc_starts(doc_starts, idx))
        return self._logits(idx)

    def _logits(self, idx: Tensor) -> Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits


# ----------------------------------------------------------------------------- decoding
CACHE_KEYWORDS = ("cache", "past_key_values", "cache_params", "state")


class HFDecoder(Decoder):
    """Decoding through a transformers model's own cache, whatever its keyword is called in
    the installed version (``cache``, ``past_key_values``, ``cache_params`` or RWKV's
    ``state``): a forward per prefill chunk, then one per token, as ``generate()`` does."""

    def __init__(self, model: nn.Module, max_chunk: int = 1024):
        self.hf = getattr(model, "hf", model)
        self.cache, self.pos = None, 0
        params = inspect.signature(self.hf.forward).parameters
        self.cache_kw = next(k for k in CACHE_KEYWORDS if k in params)
        self.wants_position = "cache_position" in params and self.cache_kw == "cache_params"

    def _forward(self, ids: Tensor) -> Tensor:
        kwargs = {"use_cache": True}
        if self.cache is not None:
            kwargs[self.cache_kw] = self.cache
        if self.wants_position:  # transformers 4.x Mamba needs it spelled out
            kwargs["cache_position"] = torch.arange(self.pos, self.pos + ids.shape[1], device=ids.device)
        out = self.hf(input_ids=ids, **kwargs)
        self.cache = next(getattr(out, k) for k in CACHE_KEYWORDS if getattr(out, k, None) is not None)
        self.pos += ids.shape[1]
        return out.logits

    def prefill(self, chunk: Tensor) -> None:
        self._forward(chunk)

    def step(self, token: Tensor) -> Tensor:
        return self._forward(token[:, None])[:, -1]

    def state_bytes(self) -> int:
        return tensor_bytes(self.cache)


def tensor_bytes(obj, _seen=None, _depth=0) -> int:
    """Bytes of every distinct tensor reachable from a (HF) cache object: lists, tuples,
    dicts and the attributes of transformers' cache classes."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.data_ptr(), obj.numel())
        if key in seen:
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if _depth > 4:
        return 0
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif type(obj).__module__.startswith("transformers") and hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return 0
    return sum(tensor_bytes(v, seen, _depth + 1) for v in items)


class StateDecoder(Decoder):
    """The bench decoder of a plain-PyTorch kind with its own streaming state: a model with
    ``prefill(idx, state, max_chunk=) -> (logits, state)``, ``init_state(batch, device=)`` and
    ``step(token, state) -> (logits, state)``, whose state has ``nbytes`` (log-linear Mamba-2, S4D)."""

    def __init__(self, model, max_chunk: int = 1024):
        self.model, self.max_chunk, self.state = model, max_chunk, None

    def prefill(self, chunk: Tensor) -> None:
        _, self.state = self.model.prefill(chunk, self.state, max_chunk=self.max_chunk)

    def step(self, token: Tensor) -> Tensor:
        if self.state is None:
            self.state = self.model.init_state(1, device=token.device)
        return self.model.step(token, self.state)[0]

    def state_bytes(self) -> int:
        return 0 if self.state is None else self.state.nbytes


def enable_checkpointing(model: nn.Module) -> None:
    """A kind's ``checkpointing`` hook for a model with a ``gradient_checkpointing`` switch."""
    model.gradient_checkpointing = True


def state_stream(kind: str):
    """The ``stream`` of a kind whose model has ``prefill(idx) -> (logits, state)`` and
    ``step(token, state)``: sampled ``(B,)`` tokens (:func:`lmn.generation.sample_next`),
    ``idx`` prefilled in the model's parallel form, then one streaming step per token (none
    after the last)."""

    def stream(model, idx, max_new_tokens, temperature, top_k, generator, native):
        from ..generation import sample_next

        if native:
            raise ValueError(f"the {kind} model has no native decoder; drop --native")
        with torch.no_grad():
            logits, state = model.prefill(idx)
            logits = logits[:, -1]
            for n in range(max_new_tokens):
                token = sample_next(logits, temperature, top_k, generator)
                yield token
                if n + 1 < max_new_tokens:
                    logits, state = model.step(token, state)

    return stream

