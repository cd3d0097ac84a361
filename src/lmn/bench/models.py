"""The benchmarked models at two sizes, and one decode interface over all of them.

Sizes (parameter counts for the 65-symbol vocabulary):

=========  ==========================================  ==============================  ==========================
size       LMN                                          GPT-2 (transformers, SDPA)      Mamba (transformers)
=========  ==========================================  ==============================  ==========================
``paper``  LMNConfig(): d 32, 4 layers, 4 heads,        n_embd 32, 4 layers, 4 heads,   d 44, 4 layers, state 16:
           2 banks: 71,489                              inner 128: 69,344               71,016
``large``  d 256, 8 layers, 8 heads, 2 banks:           n_embd 256, 8 layers, 8 heads,  d 400, 8 layers, state 16:
           8,449,089                                    inner 1024: 6,466,304           8,381,600
=========  ==========================================  ==============================  ==========================

GPT-2's learned position table grows with the context it must reach (``n_positions`` is
raised to the benchmarked length); ``params`` counts it at the usual 512 positions (the
numbers above), ``params_total`` at the size actually built (+n_embd per extra position). Mamba's hidden size at
``large`` is chosen to match LMN's parameter count with the same depth.

A :class:`Decoder` reaches context P by feeding random ids chunk by chunk (so that no
P-token tensor ever exists), then decodes one token at a time:

* LMN: ``model.prefill(chunk, state, max_chunk)``, then ``model.step``;
* ``lmn-native``: the same prefill, then steps through :class:`lmn.native.NativeStepper`
  (the C kernel; CPU only);
* GPT-2: ``forward(chunk, cache, use_cache=True)`` per chunk -- HF's ``DynamicCache``,
  which concatenates on every step, as ``generate()`` uses it;
* Mamba: the same through its cache. Caveat (transformers' implementation): a forward
  over more than one token starts its selective scan from a zero SSM state, so after a
  chunked prefill the SSM state *values* are not those of one long pass. Its size and the
  cost of a step do not depend on them, which is what is measured here.
"""

from __future__ import annotations

import inspect

SIZES = ("paper", "large")
DECODE_MODELS = ("lmn", "lmn-native", "gpt2", "mamba")
TRAIN_MODELS = ("lmn", "lmn-ckpt", "lmn-materialized", "gpt2")

_LMN = {"paper": {}, "large": {"d_model": 256, "n_layers": 8, "n_heads": 8, "n_banks": 2}}
_GPT2 = {"paper": {}, "large": {"n_embd": 256, "n_layer": 8, "n_head": 8, "n_inner": 1024}}
_GPT2_DIMS = {"paper": (4, 32), "large": (8, 256)}  # (n_layer, n_embd), without importing transformers
_MAMBA = {"paper": {}, "large": {"hidden_size": 400, "num_hidden_layers": 8}}


def model_config(size: str, kind: str, n_positions: int | None = None) -> dict:
    """The config fields of ``kind`` at ``size`` (as recorded in the result JSON)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    if kind.startswith("lmn"):
        from lmn import LMNConfig

        return LMNConfig(**_LMN[size]).to_dict()
    if kind == "gpt2":
        from lmn.baselines.gpt2 import GPT2BaselineConfig

        extra = {} if n_positions is None else {"n_positions": max(n_positions, 512)}
        return GPT2BaselineConfig(**_GPT2[size], **extra).to_dict()
    if kind == "mamba":
        from lmn.baselines.mamba import MambaBaselineConfig

        return MambaBaselineConfig(**_MAMBA[size]).to_dict()
    raise ValueError(f"unknown model {kind!r}")


def build_model(size: str, kind: str, n_positions: int | None = None):
    """``(module, info)``: the model (random init from the current torch seed) and
    ``{"params", "params_total", "config"}``. ``lmn-*`` kinds build an :class:`lmn.LMN`;
    GPT-2 and Mamba return the underlying HF model."""
    cfg = model_config(size, kind, n_positions)
    if kind.startswith("lmn"):
        from lmn import LMN, LMNConfig

        model = LMN(LMNConfig.from_dict(cfg))
        if kind == "lmn-ckpt":
            if not hasattr(model, "gradient_checkpointing"):
                raise ValueError("this LMN has no gradient_checkpointing switch")
            model.gradient_checkpointing = True
        n = model.num_parameters()
        return model, {"params": n, "params_total": n, "config": cfg}
    if kind == "gpt2":
        from lmn.baselines.gpt2 import GPT2Baseline, GPT2BaselineConfig

        hf = GPT2Baseline(GPT2BaselineConfig.from_dict(cfg)).hf
        total = sum(p.numel() for p in hf.parameters())
        wpe = hf.transformer.wpe.weight.numel()
        return hf, {"params": total - wpe + 512 * cfg["n_embd"], "params_total": total, "config": cfg}
    import warnings

    from lmn.baselines.mamba import MambaBaseline, MambaBaselineConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "mambapy missing": only training speed depends on it
        hf = MambaBaseline(MambaBaselineConfig.from_dict(cfg)).hf
    n = sum(p.numel() for p in hf.parameters())
    return hf, {"params": n, "params_total": n, "config": cfg}


def model_table(sizes: list[str], kinds: list[str], points: list[dict], seed: int = 0) -> dict:
    """``{size: {kind: {"params", "config"}}}`` for a result JSON: from the first measured
    point of each model (its process built it), else by building it here."""
    table: dict = {}
    for size in sizes:
        table[size] = {}
        for kind in kinds:
            done = next((p for p in points if p["size"] == size and p["model"] == kind and p["status"] == "ok"), None)
            if done is None:
                import torch

                torch.manual_seed(seed)
                _, done = build_model(size, kind)
            config = dict(done["config"])
            if kind == "gpt2":
                config["n_positions"] = 512  # as counted in "params"; the runs raise it to their P
            table[size][kind] = {"params": done["params"], "config": config}
    return table


def gpt2_cache_bytes(size: str, positions: int, batch: int = 1, element_size: int = 4) -> int:
    """K and V of every layer for ``positions`` tokens: 2 * layers * P * n_embd * bytes."""
    n_layer, n_embd = _GPT2_DIMS[size]
    return 2 * n_layer * batch * positions * n_embd * element_size


def tensor_bytes(obj, _seen=None, _depth=0) -> int:
    """Bytes of every distinct tensor reachable from a (HF) cache object: lists, tuples,
    dicts and the attributes of transformers' cache classes."""
    import torch

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


# ----------------------------------------------------------------------------- decoders
class Decoder:
    """Feed a prompt in chunks, then one token at a time; report the state's bytes."""

    def prefill(self, chunk):  # (1, C) ids
        raise NotImplementedError

    def step(self, token):  # (1,) ids
        raise NotImplementedError

    def state_bytes(self) -> int:
        raise NotImplementedError


class LMNDecoder(Decoder):
    def __init__(self, model, max_chunk: int = 1024, native: bool = False):
        self.model, self.max_chunk, self.state = model, max_chunk, None
        self.stepper = None
        if native:
            from lmn.native import NativeStepper

            self.stepper = NativeStepper(model, batch_size=1)  # compiles the kernel once, before timing
        self.handed_over = False  # the prefilled state moved into the native stepper

    def prefill(self, chunk):
        if self.handed_over:
            raise RuntimeError("prefill after native decode steps is not supported by this benchmark")
        _, self.state = self.model.prefill(chunk, self.state, max_chunk=self.max_chunk)

    def step(self, token):
        if self.stepper is not None:
            if not self.handed_over:
                if self.state is not None:
                    self.stepper.load_state(self.state)
                self.state, self.handed_over = None, True
            return self.stepper.step(token)
        if self.state is None:
            self.state = self.model.init_state(1, device=token.device)
        return self.model.step(token, self.state)[0]

    def state_bytes(self) -> int:
        if self.handed_over:
            return self.stepper.nbytes
        return 0 if self.state is None else self.state.nbytes


class HFDecoder(Decoder):
    """GPT-2 or Mamba through transformers' cache (whatever its keyword is called in the
    installed version: ``cache``, ``past_key_values`` or ``cache_params``)."""

    def __init__(self, hf):
        self.hf, self.cache, self.pos = hf, None, 0
        params = inspect.signature(hf.forward).parameters
        self.cache_kw = next(k for k in ("cache", "past_key_values", "cache_params") if k in params)
        self.wants_position = "cache_position" in params and self.cache_kw == "cache_params"

    def _forward(self, ids):
        import torch

        kwargs = {"use_cache": True}
        if self.cache is not None:
            kwargs[self.cache_kw] = self.cache
        if self.wants_position:  # transformers 4.x Mamba needs it spelled out
            kwargs["cache_position"] = torch.arange(self.pos, self.pos + ids.shape[1], device=ids.device)
        out = self.hf(input_ids=ids, **kwargs)
        self.cache = next(getattr(out, k) for k in ("cache", "past_key_values", "cache_params")
                          if getattr(out, k, None) is not None)
        self.pos += ids.shape[1]
        return out.logits

    def prefill(self, chunk):
        self._forward(chunk)

    def step(self, token):
        return self._forward(token[:, None])[:, -1]

    def state_bytes(self) -> int:
        return tensor_bytes(self.cache)


def make_decoder(kind: str, model, max_chunk: int = 1024) -> Decoder:
    if kind.startswith("lmn"):
        return LMNDecoder(model, max_chunk, native=kind == "lmn-native")
    return HFDecoder(model)
