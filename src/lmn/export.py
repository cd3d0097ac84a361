"""The streaming step as a pure function of fixed-shape tensors, for ``torch.export`` and ONNX.

    from lmn.export import StreamStep, export_onnx

    step = StreamStep(model, max_tokens=2**20)          # weights are the model's own
    tensors = step.initial_state(batch_size=1)          # {"pos", "nodes", "slot_q", "slot_v"}: zeros
    logits, *new = step(token, *tensors.values())       # (B, vocab) and the next state tensors
    export_onnx(model, "lmn_step.onnx", max_tokens=2**20)   # export_model: + lmn_step.onnx.json

``StreamStep.forward(token (B,), pos (B,), nodes, slot_q, slot_v) -> (logits (B, V), pos + 1,
nodes, slot_q, slot_v)`` computes what :meth:`lmn.LMN.step` computes, with no Python
control flow that depends on the position: every stream carries its own position, and
the tree's arithmetic (:mod:`lmn.tree`: the carry height, the base-k digits, which nodes
are read) is done on tensors from it, so one exported graph serves every step.

**State layout** (the one of :class:`lmn.native.NativeStepper`), per layer ``l`` and stream
``b``: ``nodes[l, b]``, ``slot_q[l, b]``, ``slot_v[l, b]`` are ``(levels + 1, k - 1, C)``
with ``C = n_banks * d_model``. ``nodes[l, b, i, j]`` is position ``j`` of the kept nodes
of tree level ``i`` (the base-k counter: at most ``k - 1`` per level; a token, level 0, is
copied into every bank), ``slot_q``/``slot_v`` the attention's ``W_q``/``W_v``
projections of that node (bank ``b``'s at ``[b*d, (b+1)*d)``, heads contiguous in it).
Entries that the counter does not hold are never read (masked by position, not value).
``pos`` is the number of tokens the stream has consumed (int64). The state holds
streams of up to ``capacity = k**(levels + 1) - 1`` tokens. A model whose config caps
its tree (``max_level``) needs only that many levels and has no capacity limit.

**Capacity.** Past the capacity the tree's counter has no level left, and the step would
be wrong. ``StreamStep(model, max_tokens, overflow=True)`` -- what is exported, ONNX and
``torch.export`` alike -- has a sixth output, ``overflow`` (bool, per stream): true where
the stream was already full (``pos == capacity``), and for that stream the logits are
NaN and the state comes back unchanged (``next_pos == pos``), so a runtime that ignores
the flag still cannot read wrong numbers as logits. :class:`OrtStepper` refuses the step
(``ValueError``); the description says so. Without ``overflow`` (the eager default, and
:mod:`lmn.graphs`, which counts on the host) the caller stops at the capacity.

**Files.** :func:`export_model` writes the model and its description beside it,
``NAME.onnx.json`` / ``NAME.pt2.json`` (so an ONNX and a pt2 export of one name share a
folder); the description is also inside the model (ONNX metadata ``lmn-stream-step``, a
pt2 extra file ``lmn-stream-step.json``). Both are written whole or not at all
(:mod:`lmn.atomic`): serialized in memory, the free space checked, then written beside
and renamed; a full disk is one ``OSError`` naming the file, the previous files intact.
:func:`read_description` finds the description (also the ``NAME.json`` of older exports).

Per step the function runs every level's merge and masks the results in (a graph
cannot skip the levels the token does not complete): ``levels`` summarizer calls per
layer instead of one amortised; the state's size is ``3 * n_layers * (levels + 1) *
(k - 1) * C`` numbers per stream. Any stride and read rule; ``expand = 0`` only (a
node's size would otherwise depend on its level).

Tested in ``tests/runtime/test_export.py`` (onnxruntime and the exported program against eager
logits for 200 tokens after a prompt).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import dumps_json, write_together
from .config import LMNConfig
from .documents import reset_rows
from .layout import fill_fixed
from .mechanisms import refuse
from .model import LMN, sinusoidal_encoding
from .summarizers import affine_form
from .tree import n_levels
from .validation import check_int

INPUTS = ("token", "pos", "nodes", "slot_q", "slot_v")
OUTPUTS = ("logits", "next_pos", "next_nodes", "next_slot_q", "next_slot_v", "overflow")
FORMAT = "lmn-stream-step"
VERSION = 2  # 2: the overflow output; the description named NAME.onnx.json / NAME.pt2.json
METADATA_KEY = FORMAT  # the description inside the model: ONNX metadata_props / pt2 extra file (+ ".json")
DEFAULT_MAX_TOKENS = 2**31 - 1


def levels_for(max_tokens: int, stride: int) -> int:
    """Tree levels (>= 1) the state needs for streams of ``max_tokens`` tokens."""
    check_int("max_tokens", max_tokens, min=1)
    levels = max(n_levels(max_tokens, stride), 1)
    if stride ** (levels + 1) > 2**62:
        raise ValueError(f"max_tokens {max_tokens} needs positions beyond int64 for stride {stride}")
    return levels


class StreamStep(nn.Module):
    """:meth:`lmn.LMN.step` as a pure function of fixed-shape tensors (see the module doc).

    Args:
        model: the :class:`lmn.LMN`; its modules are used (not copied).
        max_tokens: the longest stream the state must hold.
        overflow: report a full stream: a sixth output ``overflow`` (bool, ``(B,)``), NaN
            logits and the state unchanged for such a stream (what is exported).
    """

    def __init__(self, model: LMN, max_tokens: int = DEFAULT_MAX_TOKENS, overflow: bool = False):
        super().__init__()
        cfg = getattr(model, "config", None)
        if not isinstance(cfg, LMNConfig) or not hasattr(model, "blocks"):
            raise TypeError(f"StreamStep takes an lmn.LMN, got {type(model).__name__}")
        refuse(cfg, "export", "use LMN.step")  # a memory mechanism beside the tree (lmn.mechanisms)
        if cfg.expand != 0:
            raise ValueError(f"export supports expand = 0 only (this model has expand = {cfg.expand}): "
                             "a node's size would depend on its level")
        self.model, self.config, self.overflow = model, cfg, bool(overflow)
        self.levels = levels_for(max_tokens, cfg.stride)
        self.capacity = cfg.stride ** (self.levels + 1) - 1
        cap = getattr(cfg, "max_level", None)  # a model whose tree stops at a level: a fixed state for any length
        if cap is not None and cap <= self.levels:
            self.levels, self.capacity = cap, None
        k, Lc = cfg.stride, self.levels + 1
        self.register_buffer("_powers", torch.tensor([k**i for i in range(Lc + 1)], dtype=torch.int64),
                             persistent=False)
        # the summarizers' affine forms, split into the k - 1 pending siblings' part and the new
        # node's: a merge is then one matmul on the carry chain (taken now, like the native step)
        self._affine = []
        dtype = model.head.weight.dtype
        for l, block in enumerate(model.blocks):
            form = affine_form(block.memory.summarizer)
            if form is None:  # a summarizer without an affine form: merged by the module itself
                self._affine = None
                break
            W, b = (t.to(dtype) for t in form)
            C = W.shape[0]
            self.register_buffer(f"_sib_w{l}", W[:, : (k - 1) * C].contiguous(), persistent=False)
            self.register_buffer(f"_new_w{l}", W[:, (k - 1) * C :].t().contiguous(), persistent=False)  # (in, out)
            self.register_buffer(f"_sum_b{l}", b.contiguous(), persistent=False)
            self._affine.append(l)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of ``nodes``/``slot_q``/``slot_v`` at batch 1: ``(n_layers, 1, levels + 1, k - 1, C)``."""
        c = self.config
        return (c.n_layers, 1, self.levels + 1, c.stride - 1, c.n_banks * c.d_model)

    def initial_state(self, batch_size: int = 1, dtype=None, device=None) -> dict[str, Tensor]:
        """The state of empty streams: position 0 and zeros."""
        ref = self.model.head.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        shape = (self.state_shape[0], batch_size, *self.state_shape[2:])
        zeros = torch.zeros(shape, dtype=dtype, device=device)
        return {"pos": torch.zeros(batch_size, dtype=torch.int64, device=device), "nodes": zeros,
                "slot_q": zeros.clone(), "slot_v": zeros.clone()}

    @torch.no_grad()
    def state_from(self, state) -> dict[str, Tensor]:
        """An :class:`lmn.LMNState` (e.g. after ``model.prefill``) in this layout."""
        from .state import LMNState

        if not isinstance(state, LMNState):
            raise TypeError(f"state must be an LMNState, got {type(state).__name__}")
        if state.config.architecture() != self.config.architecture():
            raise ValueError("state belongs to a model with a different configuration")
        if self.capacity is not None and state.pos > self.capacity:
            raise ValueError(f"state holds {state.pos} tokens, more than this step's capacity of {self.capacity}")
        B, c = state.batch_size, self.config
        out = self.initial_state(B, dtype=state.dtype, device=state.device)
        out["pos"].fill_(state.pos)
        views = [(out["nodes"][l], out["slot_q"][l], out["slot_v"][l]) for l in range(c.n_layers)]
        fill_fixed(state, views, lambda l, vec: self._project(self.model.blocks[l].attn, vec))  # lmn.layout
        return out

    def _project(self, attn, vec: Tensor) -> tuple[Tensor, Tensor]:
        """``W_q``/``W_v`` projections of node vectors ``(..., n_banks*d)``, per bank."""
        d = self.config.d_model
        x = vec.unflatten(-1, (-1, d))
        q = F.linear(x, attn.q.weight, attn.q.bias).flatten(-2)
        v = F.linear(x, attn.v.weight, attn.v.bias).flatten(-2)
        return q, v

    def forward(self, token: Tensor, pos: Tensor, nodes: Tensor, slot_q: Tensor, slot_v: Tensor):
        c, model = self.config, self.model
        k, KC, Lc, nb, d = c.stride, c.stride - 1, self.levels + 1, c.n_banks, c.d_model
        H, dh = c.n_heads, c.d_head
        B = token.shape[0]
        rule = self.model.blocks[0].memory.tree.rule

        # the counter after this token: base-k digits, carry height, levels present
        count = pos + 1
        full = pos >= self.capacity if self.overflow and self.capacity is not None else None  # (B,): no room left
        powers = self._powers
        dig = torch.remainder(torch.div(count[:, None], powers[None, :Lc], rounding_mode="floor"), k)  # (B, Lc)
        top = (torch.remainder(count[:, None], powers[None, 1:]) == 0).sum(1)  # (B,)
        level = torch.arange(Lc, device=token.device)[None]  # (1, Lc)
        slot = torch.arange(KC, device=token.device)  # (KC,)
        below = level < top[:, None]
        # where each level's new node goes: merged-away nodes stay as their level's latest ("latest")
        at = torch.where(below, 0, dig - 1)
        written = (level == top[:, None]) | (below & rule.keeps_merged)
        write = written[..., None] & (slot == at[..., None])  # (B, Lc, KC)
        if full is not None:  # a full stream's state stays as it was
            write = write & ~full[:, None, None]
        # what this position reads besides itself
        read = rule.step_read_mask(count, dig, powers, level, slot, nb)  # (B, Lc, KC, nb)
        absent = ~read.reshape(B, 1, Lc * KC * nb)

        h = F.embedding(token, model.tok_emb.weight)
        if c.pos_encoding == "sinusoidal":
            h = h + sinusoidal_encoding(pos, d, h.dtype)
        new_nodes, new_q, new_v = [], [], []
        for l, block in enumerate(model.blocks):
            attn, ff = block.attn, block.ff
            x = F.rms_norm(h, block.norm1.normalized_shape, block.norm1.weight, block.norm1.eps)
            # the carry chain: the candidate node of every level (only levels <= top are kept)
            cur = x.repeat(1, nb)  # (B, C): the token in every bank
            chain = [cur]
            if self._affine is not None:  # S(siblings, new) = W_sib siblings + W_new new + b
                sib = F.linear(nodes[l, :, : Lc - 1].reshape(B, Lc - 1, KC * nb * d),
                               getattr(self, f"_sib_w{l}"), getattr(self, f"_sum_b{l}"))
                w_new = getattr(self, f"_new_w{l}")
                # (B, 1, C) pieces: one split, then a matmul and an add per level (fewest graph nodes)
                cur = cur[:, None]
                chain = [cur]
                for part in sib.split(1, dim=1):
                    cur = part + torch.matmul(cur, w_new)
                    chain.append(cur)
                chain = torch.cat(chain, dim=1)  # (B, Lc, C)
            else:
                for i in range(Lc - 1):
                    children = torch.cat([nodes[l, :, i], cur[:, None]], dim=1)  # (B, k, C)
                    children = children.view(B, k, nb, d).transpose(1, 2)[:, :, :, None]  # (B, nb, k, 1, d)
                    cur = block.memory.merge(children).reshape(B, nb * d)
                    chain.append(cur)
                chain = torch.stack(chain, dim=1)
            chain = chain[:, :, None]  # (B, Lc, 1, C)
            q_new, v_new = self._project(attn, chain)
            w = write[..., None]
            nodes_l = torch.where(w, chain, nodes[l])
            sq = torch.where(w, q_new, slot_q[l])
            sv = torch.where(w, v_new, slot_v[l])
            new_nodes.append(nodes_l)
            new_q.append(sq)
            new_v.append(sv)

            # single-vector attention over [x, the slots read]
            qkv = F.linear(x, torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]),
                           torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
            q, kk, v = qkv.view(B, 3, H, dh).unbind(1)  # (B, H, dh)
            slots_q = sq.reshape(B, Lc * KC * nb, H, dh)
            slots_v = sv.reshape(B, Lc * KC * nb, H, dh)
            s_self = (q * kk).sum(-1, keepdim=True)  # (B, H, 1)
            s_mem = torch.einsum("bshe,bhe->bhs", slots_q, kk).masked_fill(absent, float("-inf"))
            probs = torch.softmax(torch.cat([s_self, s_mem], dim=-1) * attn.scale, dim=-1)
            out = probs[..., :1] * v + torch.einsum("bhs,bshe->bhe", probs[..., 1:], slots_v)
            h = h + F.linear(out.reshape(B, d), attn.o.weight, attn.o.bias)
            y = F.rms_norm(h, block.norm2.normalized_shape, block.norm2.weight, block.norm2.eps)
            h = h + ff.plain(y)
        h = F.layer_norm(h, model.ln_f.normalized_shape, model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        logits = F.linear(h, model.head.weight, model.head.bias)
        if not self.overflow:
            return logits, count, torch.stack(new_nodes), torch.stack(new_q), torch.stack(new_v)
        if full is None:  # a capped tree: never full
            full = torch.zeros_like(pos, dtype=torch.bool)
        else:
            logits = logits.masked_fill(full[:, None], float("nan"))
            count = torch.where(full, pos, count)
        return logits, count, torch.stack(new_nodes), torch.stack(new_q), torch.stack(new_v), full

    # ------------------------------------------------------------------ description
    def describe(self, batch_size: int | None = 1, dtype=None) -> dict:
        """Inputs, outputs and the state layout, as written beside an exported file."""
        c = self.config
        dtype = str(dtype or self.model.head.weight.dtype).replace("torch.", "")
        B = batch_size if batch_size is not None else "batch"
        state = [c.n_layers, B, self.levels + 1, c.stride - 1, c.n_banks * c.d_model]
        numbers = 3 * c.n_layers * (self.levels + 1) * (c.stride - 1) * c.n_banks * c.d_model
        item = torch.empty(0, dtype=self.model.head.weight.dtype).element_size()
        tensor = {"shape": state, "dtype": dtype}
        outputs = [{"name": "logits", "shape": [B, c.vocab_size], "dtype": dtype},
                   {"name": "next_pos", "shape": [B], "dtype": "int64"},
                   {"name": "next_nodes", **tensor}, {"name": "next_slot_q", **tensor},
                   {"name": "next_slot_v", **tensor}]
        if self.overflow:
            outputs.append({"name": "overflow", "shape": [B], "dtype": "bool"})
        return {
            "format": FORMAT, "version": VERSION,
            "inputs": [{"name": "token", "shape": [B], "dtype": "int64"},
                       {"name": "pos", "shape": [B], "dtype": "int64"},
                       {"name": "nodes", **tensor}, {"name": "slot_q", **tensor}, {"name": "slot_v", **tensor}],
            "outputs": outputs,
            "overflow": (("true for a stream that was already full (pos == capacity_tokens): its logits are NaN and "
                          "its state comes back unchanged (next_pos == pos); stop that stream, or re-export with a "
                          "larger --max-tokens" if self.capacity is not None else
                          "always false: a capped tree (max_level) holds streams of any length")
                         if self.overflow else None),
            "state": {
                "initial": "pos = 0 and every state tensor zero",
                "feed_back": {"next_pos": "pos", "next_nodes": "nodes", "next_slot_q": "slot_q",
                              "next_slot_v": "slot_v"},
                "layout": "(n_layers, batch, levels + 1, stride - 1, n_banks * d_model): per layer and stream, "
                          "the kept tree nodes of every level (position j of level i; a token is copied into "
                          "every bank) and their W_q / W_v projections (bank b at [b*d, (b+1)*d))",
                "levels": self.levels, "stride": c.stride, "read": c.read,
                "capacity_tokens": self.capacity,  # None: a capped tree (max_level), any length
                "bytes_per_stream": numbers * item + 8,
            },
            "model": c.to_dict(),
        }


# ----------------------------------------------------------------------------- exporting
def _example(step: StreamStep, batch_size: int):
    s = step.initial_state(batch_size)
    return (torch.zeros(batch_size, dtype=torch.int64), s["pos"], s["nodes"], s["slot_q"], s["slot_v"])


def export_program(model: LMN, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 1, overflow: bool = True):
    """``torch.export`` of :class:`StreamStep` (static shapes, ``batch_size`` streams; with the
    ``overflow`` output unless told)."""
    step = StreamStep(model, max_tokens, overflow=overflow).eval()
    with torch.no_grad():
        return torch.export.export(step, _example(step, batch_size))


def description_path(path: str | os.PathLike) -> Path:
    """The description beside an exported file: ``NAME.onnx`` -> ``NAME.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_description(path: str | os.PathLike) -> dict | None:
    """The description of the exported file ``path``: inside it (ONNX metadata, pt2 extra
    file), else ``NAME.onnx.json`` beside it, else the ``NAME.json`` of an export before
    version 2 if it describes this format; ``None`` if there is none."""
    path = Path(path)
    doc = None
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        doc = next((json.loads(p.value) for p in proto.metadata_props if p.key == METADATA_KEY), None)
    elif path.suffix == ".pt2":  # a zip archive: ARCHIVE/extra/NAME is torch.export.save's extra file
        import zipfile

        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_KEY}.json")), None)
            doc = json.loads(archive.read(name)) if name is not None else None
    if doc is not None:
        return doc
    for meta in (description_path(path), path.with_suffix(".json")):
        if meta.is_file():
            doc = json.loads(meta.read_text(encoding="utf-8"))
            if doc.get("format") == FORMAT and doc.get("file_format", path.suffix[1:]) == path.suffix[1:]:
                return doc
    return None


def _onnx_bytes(model: LMN, max_tokens: int, batch_size: int, opset: int, description: dict | None) -> bytes:
    """The ONNX model of :class:`StreamStep` (with ``overflow``), serialized in memory."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'torch-lmn[export]'") from err
    step = StreamStep(model, max_tokens, overflow=True).eval()
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(step, _example(step, batch_size), dynamo=True, input_names=list(INPUTS),
                                        output_names=list(OUTPUTS), opset_version=opset, verbose=False)
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    for node in proto.graph.node:  # drop the exporter's per-node metadata (source locations): ~60 % of the file
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    doc = description if description is not None else step.describe(batch_size)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, dumps_json(doc, indent=None, where="the description")
    return proto.SerializeToString()


def _pt2_bytes(model: LMN, max_tokens: int, batch_size: int, description: dict) -> bytes:
    """``torch.export.save`` of :func:`export_program`, in memory: the archive writer aborts
    the process (a C++ terminate) when its file's write fails, a buffer cannot fail."""
    buffer = io.BytesIO()
    torch.export.save(export_program(model, max_tokens, batch_size), buffer,
                      extra_files={f"{METADATA_KEY}.json": dumps_json(description, indent=2, where="the description")})
    return buffer.getvalue()


def export_onnx(model: LMN, path: str | os.PathLike, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 1,
                opset: int = 18) -> Path:
    """Write :class:`StreamStep` (with ``overflow``) as an ONNX model (one file, weights
    inside, its description in the metadata) to ``path``, whole or not at all."""
    path = Path(path)
    write_together([(path, _onnx_bytes(model, max_tokens, batch_size, opset, None))])
    return path


def write_description(step: StreamStep, path: str | os.PathLike, fmt: str, batch_size: int, extra: dict) -> Path:
    """Write the description (:meth:`StreamStep.describe` + ``extra``) of an export to ``path``."""
    path = Path(path)
    write_together([(path, dumps_json(_description(step, fmt, batch_size, extra), indent=2, where=path).encode())])
    return path


def _description(step: StreamStep, fmt: str, batch_size: int, extra: dict) -> dict:
    return {**step.describe(batch_size), "file_format": fmt, **extra}


def export_model(model: LMN, path: str | os.PathLike, fmt: str, max_tokens: int = DEFAULT_MAX_TOKENS,
                 batch_size: int = 1, force: bool = False, extra: dict | None = None) -> tuple[Path, Path]:
    """Export ``model``'s streaming step to ``path``: ``(model file, its JSON description)``.
    ``fmt``: ``"onnx"`` or ``"pt2"`` (``torch.export.save``); ``path`` must end in ``.fmt``,
    the description goes beside it as ``path + ".json"`` (``extra`` is added to it) and
    inside it. Existing files are kept unless ``force``. Both files are written whole or
    not at all, and renamed into place together; a full disk is an ``OSError`` naming the
    file, before anything is replaced. Loading a training run is the caller's part
    (``lmn export``: :func:`lmn.cli.export_run`), so that this module sits below the trainer."""
    if fmt not in ("onnx", "pt2"):
        raise ValueError(f"--format must be onnx or pt2, got {fmt!r}")
    check_int("batch size", batch_size, min=1)
    path = Path(path)
    if path.suffix != f".{fmt}":
        raise ValueError(f"the output file must end in .{fmt}, got {str(path)!r}")
    meta = description_path(path)
    for p in (path, meta):
        if p.exists() and not force:
            raise ValueError(f"{p} exists; pass --force to overwrite it")
        if p.is_dir():
            raise ValueError(f"{p} is a directory")
    step = StreamStep(model, max_tokens, overflow=True).eval()
    doc = _description(step, fmt, batch_size, {**(extra or {}), "max_tokens": max_tokens})
    if fmt == "onnx":
        data = _onnx_bytes(model, max_tokens, batch_size, 18, doc)
    else:
        data = _pt2_bytes(model, max_tokens, batch_size, doc)
    write_together([(path, data), (meta, dumps_json(doc, indent=2, where=meta).encode())])
    return path, meta


def restart_rows(state: dict, rows: list[int]) -> dict:
    """Restart the streams ``rows`` of a state in the exported layout, in place: position 0
    and zeros, the state of an empty stream (:meth:`StreamStep.initial_state`). The
    exported step keeps a position per row, so a row starts a new document while the
    others go on (torch tensors or numpy arrays; returns ``state``)."""
    if rows:
        state["pos"][rows] = 0
        for name in ("nodes", "slot_q", "slot_v"):
            state[name][:, rows] = 0
    return state


# ----------------------------------------------------------------------------- runtimes
class OrtStepper:
    """Streams through an exported ONNX step with onnxruntime: ``step(tokens (B,)) -> logits``
    (numpy in, numpy out; the state is fed back each call). A step that a full stream
    cannot take (``pos`` at the exported capacity) is refused with a ``ValueError`` and
    changes nothing; ``capacity`` is ``None`` where the model holds any length (or, for an
    export before version 2, is not known: such a file has no ``overflow`` output)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._np = np
        self.batch_size = shapes["token"][0]
        doc = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if doc is None:  # an export before version 2: the description beside it, if there is one
            try:
                found = read_description(path)
            except Exception:  # noqa: BLE001  (no onnx package, unreadable JSON: capacity unknown)
                found = None
            doc = found if found is not None and found["inputs"][2]["shape"] == shapes["nodes"] else None
        else:
            doc = json.loads(doc)
        self.capacity = None if doc is None else doc["state"]["capacity_tokens"]
        dtype = np.float64 if "double" in types["nodes"] else np.float32
        self.state = {"pos": np.zeros(self.batch_size, dtype=np.int64)}
        for name in ("nodes", "slot_q", "slot_v"):
            self.state[name] = np.zeros(shapes[name], dtype=dtype)

    def load(self, tensors: dict) -> "OrtStepper":
        """Take a state from :meth:`StreamStep.state_from` (torch tensors or arrays)."""
        self.state = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in tensors.items()}
        return self

    def _refuse(self, rows) -> None:
        rows = [int(r) for r in rows]
        held = int(self.state["pos"][rows[0]])
        raise ValueError(f"stream{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))} of {self.path.name} "
                         f"{'are' if len(rows) > 1 else 'is'} full: {held:,} tokens, the exported state's capacity; "
                         "re-export with a larger --max-tokens")

    def step(self, tokens, reset=None):
        """``reset``: rows whose token starts a new document (``True`` or a ``(B,)`` bool
        array): those streams restart before it (:func:`restart_rows`), the others go on."""
        tokens = self._np.asarray(tokens, dtype=self._np.int64).reshape(self.batch_size)
        if reset is not None and reset is not False:
            rows = reset_rows(reset, self.batch_size, "OrtStepper.step's reset")
            if rows:  # (copies: a loaded state may share memory with the caller's tensors)
                self.state = restart_rows({k: self._np.array(v, copy=True) for k, v in self.state.items()}, rows)
        if self.capacity is not None and (self.state["pos"] >= self.capacity).any():
            self._refuse(self._np.flatnonzero(self.state["pos"] >= self.capacity))
        out = dict(zip(self.outputs, self.session.run(None, {"token": tokens, **self.state})))
        if "overflow" in out and out["overflow"].any():  # a state loaded past the capacity, say
            self._refuse(self._np.flatnonzero(out["overflow"]))
        self.state = {"pos": out["next_pos"], "nodes": out["next_nodes"], "slot_q": out["next_slot_q"],
                      "slot_v": out["next_slot_v"]}
        return out["logits"]

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.state.values())


__all__ = ["FORMAT", "INPUTS", "OUTPUTS", "OrtStepper", "StreamStep", "description_path", "export_model",
           "export_onnx", "export_program", "levels_for", "read_description", "restart_rows"]
