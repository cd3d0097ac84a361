"""LMN for HuggingFace ``transformers``: a config, a causal-LM model whose generation cache
is LMN's own O(log n) streaming state, and the run's tokenizer (a character tokenizer, or a
fast byte-level one for ``bytes`` and ``bpe:N`` runs: :func:`hf_tokenizer`).

    import lmn.hf                                   # registers model type "lmn" with the Auto classes
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained("out/lmn-hf")      # written by `lmn convert RUN OUT`
    tok = AutoTokenizer.from_pretrained("out/lmn-hf")
    batch = tok(["ROMEO:", "JULIET: O"], padding=True, return_tensors="pt")    # left padding
    out = model.generate(**batch, max_new_tokens=50, do_sample=False)
    pipeline("text-generation", model=model, tokenizer=tok)("ROMEO:", max_new_tokens=50)

A thin adapter: :class:`LMNForCausalLM` holds an :class:`lmn.LMN` as ``.lmn`` and calls
its parallel form (prefill) and streaming step; nothing in the core knows about this
module, and ``import lmn`` does not import ``transformers`` (optional extra ``hf``).

**The cache.** ``generate`` gets an :class:`LMNCache` back from the first forward and hands
it to every later one: it holds :class:`lmn.LMNState` objects (O(log n) bytes per stream),
no key/value cache. LMN has no attention mask: a padded position would enter the tree.
So a left-padded batch is split by where each row's real tokens start; each group of rows
is prefilled from its first real token (the pads never enter a state), and decoding steps
every group. A row's tokens are therefore the same as when its prompt is generated alone,
and greedy decoding equals ``LMN.generate(..., temperature=0)`` token for token.
Right padding cannot be continued (the pads would sit between prompt and continuation):
it is refused when a cache is built (without a cache it is harmless, the model is causal).

Tested in ``tests/runtime/test_hf.py``.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PretrainedConfig,
                              PreTrainedModel, PreTrainedTokenizer, PreTrainedTokenizerFast)
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("lmn.hf needs HuggingFace transformers >= 5.24: pip install 'torch-lmn[hf]'") from err
if "cache" not in CausalLMOutputWithPast.__dataclass_fields__:  # pragma: no cover - transformers 4.x
    raise ImportError("lmn.hf needs HuggingFace transformers >= 5.24 (its generation cache API): "
                      "pip install 'torch-lmn[hf]'")

from .atomic import atomic_dir, check_space, dumps_json
from .config import LMNConfig
from .data.tokenizer import CharTokenizer
from .limits import check_model
from .model import LMN
from .state import LayerState, LMNState

MODEL_TYPE = "lmn"
_LMN_FIELDS = tuple(f.name for f in fields(LMNConfig))


# ----------------------------------------------------------------------------- config
class LMNHFConfig(PretrainedConfig):
    """:class:`lmn.LMNConfig`'s fields as a ``transformers`` config (model type ``"lmn"``)."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}

    def __init__(self, **kwargs):
        # every LMNConfig field, with LMNConfig's defaults (fields added to LMNConfig later come along)
        defaults = LMNConfig().to_dict()
        for name in _LMN_FIELDS:
            setattr(self, name, kwargs.pop(name, defaults[name]))
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.lmn_config()  # validate now: a bad field is a one-line error here, not deep in the model

    def lmn_config(self) -> LMNConfig:
        return LMNConfig(**{name: getattr(self, name) for name in _LMN_FIELDS})

    @classmethod
    def from_lmn_config(cls, config: LMNConfig, **kwargs) -> "LMNHFConfig":
        return cls(**config.to_dict(), **kwargs)


# ----------------------------------------------------------------------------- cache
class LMNCache:
    """The generation cache of :class:`LMNForCausalLM`: LMN's streaming states, one per
    group of rows whose real tokens start at the same column (so that one batched
    :class:`lmn.LMNState` serves them), plus the number of columns consumed.

    Its size is ``sum(state.nbytes)``: O(log n) per row, never a key/value cache.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, batch_size: int, groups: list[tuple[Tensor, LMNState]], seen: int):
        self.batch_size = batch_size
        self.groups = groups  # (row indices (G,), state of those rows)
        self.seen = seen

    @property
    def is_linear(self) -> list[bool]:
        return [False]  # generate then slices the inputs by get_seq_length() when the cache is reused

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns of ``input_ids`` consumed so far (pads included)."""
        return self.seen

    @property
    def nbytes(self) -> int:
        return sum(state.nbytes for _, state in self.groups)

    def positions(self) -> Tensor:
        """Real tokens seen by each row, ``(batch,)``."""
        pos = torch.zeros(self.batch_size, dtype=torch.long)
        for rows, state in self.groups:
            pos[rows.cpu()] = state.pos
        return pos

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Row ``r`` continues old row ``beam_idx[r]`` (beam search)."""
        owner = {}
        for g, (rows, _) in enumerate(self.groups):
            for i, row in enumerate(rows.tolist()):
                owner[row] = (g, i)
        picks: dict[int, tuple[list[int], list[int]]] = {}
        for new_row, old_row in enumerate(beam_idx.tolist()):
            g, i = owner[old_row]
            picks.setdefault(g, ([], []))
            picks[g][0].append(new_row)
            picks[g][1].append(i)
        groups = []
        for g, (new_rows, idx) in sorted(picks.items()):
            state = self.groups[g][1]
            sel = torch.tensor(idx, dtype=torch.long, device=state.device)
            rows = torch.tensor(new_rows, dtype=torch.long, device=self.groups[g][0].device)
            groups.append((rows, state.select(sel)))  # every tensor of the state, mechanisms' included
        self.groups, self.batch_size = groups, len(beam_idx)

    def __repr__(self) -> str:
        return f"LMNCache(batch_size={self.batch_size}, groups={len(self.groups)}, seen={self.seen}, nbytes={self.nbytes})"


def _real_spans(attention_mask: Tensor | None, batch: int, T: int) -> tuple[list[int], list[int]]:
    """Per row the first and one-past-last column of its real tokens; the mask must be one
    run of ones per row (zeros before it: left padding; after it: right padding)."""
    if attention_mask is None:
        return [0] * batch, [T] * batch
    if attention_mask.shape != (batch, T):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {(batch, T)}")
    mask = attention_mask.to(torch.bool).cpu()
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError(f"row {int((counts == 0).nonzero()[0])} of attention_mask has no real token")
    starts = mask.int().argmax(1)
    ends = starts + counts
    cols = torch.arange(T)[None]
    if not bool((mask == ((cols >= starts[:, None]) & (cols < ends[:, None]))).all()):
        raise ValueError("attention_mask must be one run of ones per row (padding on the left or the right only); "
                         "LMN has no attention mask to skip tokens in between")
    return starts.tolist(), ends.tolist()


# ----------------------------------------------------------------------------- model
class LMNPreTrainedModel(PreTrainedModel):
    config_class = LMNHFConfig
    base_model_prefix = "lmn"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LMNBlock"]

    def _init_weights(self, module) -> None:
        """No-op: :class:`lmn.LMN` initialises itself (the paper's scheme) when built."""

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.lmn.gradient_checkpointing = enable


class LMNForCausalLM(LMNPreTrainedModel, GenerationMixin):
    """An :class:`lmn.LMN` (``self.lmn``) as a ``transformers`` causal LM (see module doc)."""

    def __init__(self, config: LMNHFConfig):
        super().__init__(config)
        check_model("lmn", config.lmn_config().to_dict(), where="the LMN config")  # before any weight exists
        self.lmn = LMN(config.lmn_config())
        self.post_init()
        if self.generation_config is not None and self.generation_config.pad_token_id is None:
            self.generation_config.pad_token_id = config.vocab_size  # the tokenizer's <pad> (hf_tokenizer)

    @classmethod
    def from_lmn(cls, model: LMN, **config_kwargs) -> "LMNForCausalLM":
        """Wrap a trained :class:`lmn.LMN` (its weights are copied)."""
        if not isinstance(model, LMN):
            raise TypeError(f"from_lmn takes an lmn.LMN, got {type(model).__name__}")
        ref = model.head.weight
        hf = cls(LMNHFConfig.from_lmn_config(model.config, **config_kwargs)).to(device=ref.device, dtype=ref.dtype)
        hf.lmn.load_state_dict(model.state_dict())
        return hf.eval() if not model.training else hf

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is LMN's own state, returned by forward (an LMNCache)

    def get_input_embeddings(self):
        return self.lmn.tok_emb

    def set_input_embeddings(self, value) -> None:
        self.lmn.tok_emb = value

    def get_output_embeddings(self):
        return self.lmn.head

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                cache: LMNCache | None = None, labels: Tensor | None = None, use_cache: bool | None = None,
                inputs_embeds: Tensor | None = None, return_dict: bool | None = None, logits_to_keep=0,
                **kwargs) -> CausalLMOutputWithPast:
        """``input_ids (B, T)``; ``attention_mask`` marks left (or, without a cache, right)
        padding; ``cache``: continue those streams with ``input_ids`` (new tokens only).
        Logits at padded positions are zero."""
        if inputs_embeds is not None:
            raise ValueError("LMNForCausalLM takes input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("LMNForCausalLM needs input_ids")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, time), got {tuple(input_ids.shape)}")
        kwargs.pop("past_key_values", None)
        use_cache = (cache is not None) if use_cache is None else use_cache
        B, T = input_ids.shape
        if cache is not None and cache.seen > 0:
            logits = self._lmn_continue(input_ids, cache)
        else:
            starts, ends = _real_spans(attention_mask, B, T)
            if use_cache and any(e != T for e in ends):
                raise ValueError("right padding cannot be continued with a cache (the pads would enter the stream); "
                                 "pad on the left (tokenizer.padding_side = 'left')")
            logits, cache = self._lmn_prefill(input_ids, starts, ends, use_cache)
        loss = None
        if labels is not None:
            if attention_mask is not None and cache is None:
                labels = labels.masked_fill(attention_mask == 0, -100)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)
        return out if return_dict is not False else out.to_tuple()

    def _lmn_prefill(self, input_ids: Tensor, starts: list[int], ends: list[int], use_cache: bool):
        B, T = input_ids.shape
        V = self.config.vocab_size
        logits = None
        groups = []
        spans = sorted(set(zip(starts, ends)))
        for s, e in spans:
            rows = torch.tensor([r for r in range(B) if (starts[r], ends[r]) == (s, e)], device=input_ids.device)
            idx = input_ids.index_select(0, rows)[:, s:e]
            if use_cache:
                part, state = self.lmn(idx, return_state=True)
                groups.append((rows, state))
            else:
                part = self.lmn(idx)
            if len(spans) == 1 and (s, e) == (0, T):
                logits = part
                break
            if logits is None:
                logits = part.new_zeros(B, T, V)
            logits[rows, s:e] = part
        cache = LMNCache(B, groups, T) if use_cache else None
        return logits, cache

    def _lmn_continue(self, input_ids: Tensor, cache: LMNCache) -> Tensor:
        if input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"input_ids has batch size {input_ids.shape[0]}, the cache {cache.batch_size}")
        # generate feeds the pad id to rows that have finished (after an eos): their outputs are
        # discarded, so any id will do; the tokenizer's <pad> is the id just past the vocabulary
        input_ids = input_ids.masked_fill(input_ids == self.config.vocab_size, 0)
        if len(cache.groups) == 1:  # one group: no scatter (the usual case)
            rows, state = cache.groups[0]
            logits = self._lmn_extend(input_ids, state)
        else:
            logits = None
            for rows, state in cache.groups:
                part = self._lmn_extend(input_ids.index_select(0, rows), state)
                if logits is None:
                    logits = part.new_empty(input_ids.shape[0], *part.shape[1:])
                logits[rows] = part
        cache.seen += input_ids.shape[1]
        return logits

    def _lmn_extend(self, idx: Tensor, state: LMNState) -> Tensor:
        if idx.shape[1] == 1:  # LMN.step: what LMN.generate runs for every new token
            return self.lmn.step(idx[:, 0], state)[0][:, None]
        return self.lmn(idx, state=state)[0]

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask, **kwargs)
        inputs.pop("position_ids", None)  # position is the tree's: LMN takes none
        return inputs


# ----------------------------------------------------------------------------- tokenizer
VOCAB_FILE = "lmn_vocab.json"


class LMNCharTokenizer(PreTrainedTokenizer):
    """lmn's character vocabulary (:class:`lmn.data.CharTokenizer`: id ``i`` is the
    ``i``-th character) as a ``transformers`` tokenizer. One special token, ``<pad>``,
    takes the id after the last character (the model never sees it: padded positions are
    skipped); padding is on the left, as generation needs."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, chars: str | list[str] | None = None,
                 pad_token: str = "<pad>", **kwargs):
        if (vocab_file is None) == (chars is None):
            raise ValueError("LMNCharTokenizer needs exactly one of vocab_file and chars")
        self.char_tokenizer = CharTokenizer.load(vocab_file) if vocab_file is not None else CharTokenizer(chars)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(pad_token=pad_token, **kwargs)

    @classmethod
    def from_char_tokenizer(cls, tokenizer: CharTokenizer, **kwargs) -> "LMNCharTokenizer":
        return cls(chars=tokenizer.chars, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.char_tokenizer.vocab_size

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self.char_tokenizer.stoi)
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        unknown = self.char_tokenizer.unknown_chars(text)
        if unknown:
            raise ValueError(f"character(s) not in the vocabulary of {self.vocab_size}: "
                             f"{', '.join(repr(c) for c in unknown[:20])}")
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.char_tokenizer.stoi[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self.char_tokenizer.chars[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        self.char_tokenizer.save(path)
        return (str(path),)


def hf_tokenizer(tokenizer) -> PreTrainedTokenizer | PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer of an lmn tokenizer (:func:`lmn.data.load_tokenizer`):
    :class:`LMNCharTokenizer` for ``char``; for ``bytes`` and ``bpe`` a
    ``PreTrainedTokenizerFast`` over the same byte-level vocabulary (the same ids). Either
    way ``<pad>`` is the id just past the vocabulary and padding is on the left."""
    if tokenizer.kind == "char":
        return LMNCharTokenizer.from_char_tokenizer(tokenizer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer.library_tokenizer(), pad_token="<pad>",
                                   padding_side="left", clean_up_tokenization_spaces=False)
    if fast.pad_token_id != tokenizer.vocab_size:  # (the vocabulary is numbered 0..V-1 without gaps)
        raise ValueError(f"<pad> got id {fast.pad_token_id}, expected {tokenizer.vocab_size}")
    return fast


# ----------------------------------------------------------------------------- registration
AutoConfig.register(MODEL_TYPE, LMNHFConfig, exist_ok=True)
AutoModelForCausalLM.register(LMNHFConfig, LMNForCausalLM, exist_ok=True)
AutoTokenizer.register(LMNHFConfig, slow_tokenizer_class=LMNCharTokenizer, exist_ok=True)


# ----------------------------------------------------------------------------- conversion
def _os_error(err: Exception) -> OSError | None:
    """An I/O failure that a writer (safetensors: ``SafetensorError``) reports as another
    type, as the ``OSError`` it is (``... (os error 28)``), so that lmn.atomic names the path."""
    import errno
    import re

    if isinstance(err, OSError):
        return err
    found = re.search(r"os error (\d+)", str(err))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code) if code in errno.errorcode else str(err).splitlines()[0])


def convert_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write the model and tokenizer of an ``lmn train`` run directory to ``out_dir`` in
    this format (``config.json``, ``model.safetensors``, ``generation_config.json``,
    the tokenizer files). Returns ``out_dir``.

    The directory is written whole beside ``out_dir`` and then replaces it whole
    (:func:`lmn.atomic.atomic_dir`; with ``force``, files of ``out_dir`` that this does not
    write are carried over): a failure, a full disk or a kill leaves the previous
    directory as it was. Files get the modes of files created in place (0644 under umask
    022), or keep those of the files they replace. A full disk is one ``OSError`` naming
    the file, checked before writing against the weights' size."""
    from .trainer import load_run

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty; pass --force to overwrite its files")
    model, tokenizer, doc = load_run(run_dir)
    if not isinstance(model, LMN):
        raise ValueError(f"{run_dir} is a {doc['train'].get('model')!r} run; convert takes LMN runs")
    hf = LMNForCausalLM.from_lmn(model.eval())
    hf.generation_config.pad_token_id = tokenizer.vocab_size  # the tokenizer's <pad>
    from transformers.utils import logging as hf_logging

    weights = sum(t.numel() * t.element_size() for t in hf.state_dict().values())
    check_space(out / "model.safetensors", weights + 2**16)  # + the JSON files and the tokenizer's
    # written whole into a temporary sibling directory, then swapped into place (lmn.atomic):
    # a failure leaves no half-converted directory, and the previous one as it was
    with atomic_dir(out, merge=True) as tmp:
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            hf.save_pretrained(tmp)
        except Exception as err:
            io_error = _os_error(err)
            if io_error is None or io_error is err:
                raise
            io_error.filename = str(tmp / "model.safetensors")  # renamed to OUT's by atomic_dir
            raise io_error from err
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        hf_tokenizer(tokenizer).save_pretrained(tmp)
        (tmp / "lmn_run.json").write_text(dumps_json({"converted_from": str(run_dir), "train": doc.get("train")},
                                                     indent=2, where=out / "lmn_run.json"), encoding="utf-8")
    return out


__all__ = ["LMNCache", "LMNCharTokenizer", "LMNForCausalLM", "LMNHFConfig", "MODEL_TYPE", "convert_run", "hf_tokenizer"]
