"""The ecosystem's standard tools on an LMN (issue 23): PEFT LoRA adapters, dynamic int8
quantization (``torch.ao.quantization.quantize_dynamic``) and ``torch.compile``.

Every fast path calls a linear as a module unless it is a plain ``nn.Linear``
(:func:`lmn.attention.plain_linear`), so an adapted or quantized layer computes the same
function in every form: parallel, a stream continued in pieces, prefill, the streaming
step and cached generation.
"""

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmn import LMN, LMNConfig
from lmn.generation import generate
from tests.conftest import max_abs_diff

CONFIGS = {
    "default": dict(vocab_size=37, d_model=16, n_layers=2, n_heads=2),
    # the pinned memory (its write score is a linear too) and a convolution summarizer
    "pinned-conv": dict(vocab_size=37, d_model=16, n_layers=2, n_heads=2, pinned=3, summarizer="conv"),
}


def _model(name):
    torch.manual_seed(0)
    return LMN(LMNConfig(**CONFIGS[name])).eval()


def _linear_names(model):
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m) is nn.Linear})


def _forms(model, idx):
    """The logits of ``idx`` by every form: parallel, continued in pieces (``state=``),
    chunked prefill (last position), the streaming step from position 0."""
    with torch.no_grad():
        parallel = model(idx)
        first, state = model(idx[:, :5], return_state=True)
        rest, _ = model(idx[:, 5:], state=state)
        last, _ = model.prefill(idx, max_chunk=4)
        state = model.init_state(idx.shape[0])
        steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(idx.shape[1])], dim=1)
    return {"parallel": parallel, "pieces": torch.cat([first, rest], dim=1), "prefill": last, "step": steps}


# ----------------------------------------------------------------------------- PEFT LoRA
@pytest.mark.parametrize("name", CONFIGS)
def test_peft_lora_adapter_is_used_by_every_form_and_equals_the_merged_model(name):
    peft = pytest.importorskip("peft")
    base = _model(name)
    targets = _linear_names(base) + (["conv"] if CONFIGS[name].get("summarizer") == "conv" else [])
    assert {"q", "k", "v", "o", "up", "down", "head"} <= set(targets)
    torch.manual_seed(1)  # init_lora_weights=False: lora_B random, not zero -- the adapter changes the function
    adapted = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                                        init_lora_weights=False))
    lmn = adapted.base_model.model  # the LMN, its linears replaced by LoRA layers
    assert type(lmn.blocks[0].attn.q) is not nn.Linear
    merged = copy.deepcopy(adapted).merge_and_unload()
    assert type(merged.blocks[0].attn.q) is nn.Linear
    idx = torch.randint(0, 37, (2, 23), generator=torch.Generator().manual_seed(2))
    want = _forms(merged, idx)
    assert max_abs_diff(base(idx), want["parallel"]) > 0.1  # the adapter matters
    got = _forms(lmn, idx)
    for form in want:
        assert max_abs_diff(got[form], want[form]) <= 1e-5, form
    assert max_abs_diff(got["prefill"], want["parallel"][:, -1]) <= 1e-5
    assert max_abs_diff(got["step"], want["parallel"]) <= 1e-5
    prompt = idx[:, :4]
    expected = generate(merged, prompt, 24, temperature=0)
    assert torch.equal(generate(lmn, prompt, 24, temperature=0), expected)
    assert not torch.equal(generate(base, prompt, 24, temperature=0), expected)


def test_adapted_modules_are_named_for_the_fixed_layout_forms():
    peft = pytest.importorskip("peft")
    base = _model("default")
    assert base.adapted_modules() == []
    base.refuse_adapted("NativeStepper")  # a plain model passes
    lmn = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["q", "head"])).base_model.model
    assert lmn.adapted_modules() == ["blocks.0.attn.q", "blocks.1.attn.q", "head"]
    with pytest.raises(ValueError, match=r"NativeStepper copies .* blocks\.0\.attn\.q \(peft\..*merge_and_unload"):
        lmn.refuse_adapted("NativeStepper")
    assert _quantized(base).adapted_modules()[:1] == ["blocks.0.attn.q"]
    with pytest.raises(ValueError, match="reads plain nn.Linear weights, .*peft.*merge_and_unload"):
        lmn.blocks[0].attn._fused("qkv")  # what the native step copies: refused, not the base weights


def test_peft_lora_training_with_gradient_checkpointing_trains_the_adapter():
    """The chunked feed-forward recompute reads weights as tensors: with an adapted linear
    the block runs its modules instead, so the loss and the adapter's gradients are the
    merged model's and the plain run's."""
    peft = pytest.importorskip("peft")
    base = _model("default")
    torch.manual_seed(1)
    adapted = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["up", "down"],
                                                                        init_lora_weights=False))
    lmn = adapted.base_model.model.train()
    merged = copy.deepcopy(adapted).merge_and_unload().train()
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(2))
    losses, grads = [], []
    for checkpointing in (False, True):
        lmn.gradient_checkpointing = checkpointing
        lmn.zero_grad()
        loss = F.cross_entropy(lmn(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        losses.append(loss.item())
        grads.append(lmn.blocks[0].ff.up.lora_B["default"].weight.grad.clone())
    want = F.cross_entropy(merged(idx).flatten(0, 1), idx.flatten()).item()
    assert losses[0] == pytest.approx(want, abs=1e-5) and losses[1] == pytest.approx(want, abs=1e-5)
    assert grads[0].abs().max() > 0 and max_abs_diff(grads[0], grads[1]) <= 1e-6


# ----------------------------------------------------------------------------- dynamic int8
def _quantized(model):
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize("name", CONFIGS)
def test_quantize_dynamic_runs_every_form_within_the_int8_error(name):
    """Every linear int8 (weights per tensor, activations quantized per call with a range
    of their own): each form runs, and stays within a loose bound of the float32 logits.

    The bound: one int8 linear's relative error is about its weight step over its range
    (2**-7) plus its activations' (7-bit ``reduce_range`` on x86: 2**-6); through the 7
    chained linears of this model (4 attention, 2 feed-forward, the head; 2 layers) that
    is a few per cent of the logits' scale. 0.1 of the largest float32 logit (measured:
    0.02-0.04 of it at this init) leaves room for the platform's kernels. The forms agree
    to the same bound, not exactly: a dynamic activation range is taken over the whole
    input of each call, so a token quantized with 23 others (parallel) and alone (step)
    is rounded differently -- a property of ``quantize_dynamic``, not of the forms."""
    model = _model(name)
    q = _quantized(model)
    assert type(q.blocks[0].attn.q) is not nn.Linear and type(q.head) is not nn.Linear
    idx = torch.randint(0, 37, (2, 23), generator=torch.Generator().manual_seed(2))
    ref = _forms(model, idx)
    got = _forms(q, idx)
    bound = 0.1 * ref["parallel"].abs().max().item()
    for form in ref:
        assert torch.isfinite(got[form]).all(), form
        assert max_abs_diff(got[form], ref[form]) <= bound, form
    assert max_abs_diff(got["step"], got["parallel"]) <= bound
    loss = lambda logits: F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten()).item()  # noqa: E731
    assert abs(loss(got["parallel"]) - loss(ref["parallel"])) <= 0.05
    # one call of one token: the parallel form of one position is the step's input and call
    with torch.no_grad():
        assert max_abs_diff(q(idx[:, :1])[:, 0], q.step(idx[:, 0], q.init_state(2))[0]) <= 1e-6
        prompt = idx[:, :4]
        out = generate(q, prompt, 12, temperature=0)
        logits, state = q(prompt, return_state=True)  # generate is prefill + steps: the same calls
        tok, toks = logits[:, -1].argmax(-1), []
        for _ in range(12):
            toks.append(tok)
            tok = q.step(tok, state)[0].argmax(-1)
    assert torch.equal(out, torch.cat([prompt, torch.stack(toks, 1)], dim=1))


# ----------------------------------------------------------------------------- torch.compile
def _train_step_grads(model, idx):
    model.zero_grad()
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["default", pytest.param("pinned-conv", marks=pytest.mark.slow)])  # (~20 s)
def test_compile_fullgraph_captures_the_parallel_form(name):
    """One graph for the forward and backward of the parallel form (no graph break: the
    token-range check is skipped while compiling), its logits and gradients the eager ones;
    ``aot_eager`` traces what inductor would compile without needing a C compiler."""
    torch._dynamo.reset()
    model = _model(name)
    idx = torch.randint(0, 37, (2, 19), generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert max_abs_diff(compiled(idx), model(idx)) <= 1e-5
    model.train()
    loss, grads = _train_step_grads(model, idx)
    c_loss, c_grads = _train_step_grads(compiled, idx)
    assert c_loss == pytest.approx(loss, abs=1e-6)
    assert all(max_abs_diff(a, b) <= 1e-5 for a, b in zip(grads, c_grads))
    with pytest.raises(ValueError, match="outside \\[0, 37\\)"):  # the eager model keeps its clear error
        model(torch.tensor([[0, 37]]))


@pytest.mark.slow
def test_compile_inductor_logits_equal_eager():
    """The default backend (inductor, C++ on CPU: needs a compiler) on a one-layer model."""
    import shutil

    if shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LMN(LMNConfig(vocab_size=37, d_model=8, n_layers=1, n_heads=2)).eval()
    idx = torch.randint(0, 37, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_abs_diff(torch.compile(model, fullgraph=True)(idx), model(idx)) <= 1e-5


def test_compile_refuses_the_step_form_by_name():
    torch._dynamo.reset()
    model = _model("default")
    state = model.init_state(1)
    with pytest.raises(Exception, match="LMN.step is not compiled"):
        torch.compile(model.step, fullgraph=True, backend="eager")(torch.tensor([1]), state)
    # without fullgraph dynamo falls back to running the step eagerly: the same logits
    torch._dynamo.reset()
    with torch.no_grad():
        want = model.step(torch.tensor([1]), model.init_state(1))[0]
        got = torch.compile(model.step, backend="eager")(torch.tensor([1]), model.init_state(1))[0]
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- lmn train --compile
ARGS = ["--preset", "smoke", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1", "--block-size", "16",
        "--batch-size", "2", "--max-iters", "2", "--threads", "1", "--no-whole-val",
        "--model-opt", "d_model=8", "--model-opt", "n_layers=1", "--model-opt", "n_heads=2"]


def test_train_compile_flag_compiles_the_training_step(tmp_path, monkeypatch):
    """``--compile`` runs the step through ``torch.compile`` (here the ``aot_eager`` backend,
    so no C compiler is needed): the same losses as the eager run."""
    from lmn.cli import main
    from tests.lmn_testdata import small_corpus

    data = small_corpus(tmp_path, 4000)
    calls = []
    real = torch.compile

    def spy(model, **kw):
        calls.append(type(model).__name__)
        return real(model, backend="aot_eager", **kw)

    torch._dynamo.reset()
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        monkeypatch.setattr(torch, "compile", spy if extra else real)
        assert main(["train", "--data", str(data), "--out", str(tmp_path / name), *ARGS, *extra]) == 0
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert calls == ["LMN"]
    eager = [r["loss"] for r in runs["eager"] if r["type"] == "train"]
    compiled = [r["loss"] for r in runs["compiled"] if r["type"] == "train"]
    assert len(eager) == 2 and compiled == pytest.approx(eager, abs=1e-5)
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["train"]["compile"] is True


@pytest.mark.parametrize("other", ["--fsdp", "--gradient-checkpointing"])
def test_train_compile_refuses_what_it_does_not_support(tmp_path, capsys, other):
    from lmn.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "r"), *ARGS, "--compile", other])
    assert exit_.value.code == 2 and f"--compile with {other} is not supported" in capsys.readouterr().err
