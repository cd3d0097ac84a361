"""lmn.export: the fixed-shape streaming step equals LMN's own logits, eagerly, as a
torch.export program and in onnxruntime (200 tokens after a prompt, max |diff| <= 1e-4);
`lmn export` and the onnxruntime-only example on the committed run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmn import LMN, LMNConfig
from lmn.export import StreamStep, export_onnx, export_program

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "docs" / "results" / "runs" / "lmn-s1337"
PROMPT, NEW = 37, 200


def _model(**kw):
    torch.manual_seed(0)
    return LMN(LMNConfig(**kw)).eval()


def _tokens(vocab, n, seed=1):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _args(state):
    return state["pos"], state["nodes"], state["slot_q"], state["slot_v"]


@pytest.mark.parametrize("kw", [
    {}, {"stride": 3, "read": "digits"}, {"stride": 4}, {"read": "digits", "summarizer": "dwsep"},
    {"pos_encoding": "sinusoidal", "summarizer": "conv", "n_banks": 3},
    {"max_level": 2}, {"max_level": 2, "stride": 3, "read": "digits"},
])
def test_pure_step_equals_parallel_form(kw):
    if "max_level" in kw and "max_level" not in LMNConfig.__dataclass_fields__:
        pytest.skip("this LMNConfig has no max_level")
    model = _model(vocab_size=11, d_model=8, n_layers=2, n_heads=2, **kw)
    idx = torch.randint(0, 11, (2, 140), generator=torch.Generator().manual_seed(2))
    step = StreamStep(model, max_tokens=200)
    with torch.no_grad():
        ref = model(idx)
        s = _args(step.initial_state(2))
        for t in range(idx.shape[1]):  # from the empty stream
            logits, *s = step(idx[:, t], *s)
            assert (logits - ref[:, t]).abs().max() <= 1e-5, t
        _, state = model.prefill(idx[:, :PROMPT])  # from a prefilled LMNState
        s = _args(step.state_from(state))
        for t in range(PROMPT, idx.shape[1]):
            logits, *s = step(idx[:, t], *s)
            assert (logits - ref[:, t]).abs().max() <= 1e-5, t
    assert int(s[0][0]) == idx.shape[1]


def test_onnx_stream_matches_eager(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from lmn.export import OrtStepper

    model = _model()  # the paper's size
    path = export_onnx(model, tmp_path / "step.onnx", max_tokens=4096)
    idx = _tokens(65, PROMPT + NEW)
    with torch.no_grad():
        ref = model(idx)[0]
        _, state = model.prefill(idx[:, :PROMPT])
        tensors = StreamStep(model, 4096).state_from(state)
    ort = OrtStepper(path).load(tensors)
    worst = 0.0
    for t in range(PROMPT, PROMPT + NEW):
        logits = torch.from_numpy(ort.step(idx[0, t : t + 1].numpy()))
        worst = max(worst, (logits[0] - ref[t]).abs().max().item())
    assert worst <= 1e-4
    # greedy from the empty stream, prompt stepped in ONNX: LMN.generate's tokens
    ort = OrtStepper(path)
    prompt = idx[0, :PROMPT].tolist()
    for tok in prompt:
        logits = ort.step([tok])
    out = []
    for _ in range(50):
        out.append(int(logits[0].argmax()))
        logits = ort.step([out[-1]])
    assert out == model.generate(idx[:, :PROMPT], 50, temperature=0)[0, PROMPT:].tolist()


def test_exported_program_matches_eager(tmp_path):
    model = _model(stride=3, read="digits")
    program = export_program(model, max_tokens=4096)
    torch.export.save(program, tmp_path / "step.pt2")
    step = torch.export.load(tmp_path / "step.pt2").module()
    idx = _tokens(65, PROMPT + NEW)
    with torch.no_grad():
        ref = model(idx)[0]
        _, state = model.prefill(idx[:, :PROMPT])
        s = _args(StreamStep(model, 4096).state_from(state))
        worst = 0.0
        for t in range(PROMPT, PROMPT + NEW):
            logits, *s, overflow = step(idx[:, t], *s)  # the exported program reports a full stream
            worst = max(worst, (logits[0] - ref[t]).abs().max().item())
            assert not overflow.any()
    assert worst <= 1e-4


def test_refusals():
    with pytest.raises(ValueError, match="expand = 0 only"):
        StreamStep(_model(expand=1, d_model=8, n_heads=2, n_layers=1))
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1"):
        StreamStep(_model(d_model=8, n_heads=2, n_layers=1), max_tokens=0)
    with pytest.raises(TypeError, match="takes an lmn.LMN"):
        StreamStep(torch.nn.Linear(2, 2))


def test_cli_export_and_onnxruntime_example(tmp_path):
    pytest.importorskip("onnxruntime")
    from lmn.cli import main
    from lmn.trainer import load_run

    out = tmp_path / "lmn_step.onnx"
    args = ["export", "--checkpoint", str(RUN), "--format", "onnx", "--out", str(out), "--max-tokens", "5000"]
    assert main(args) == 0
    meta = json.loads((tmp_path / "lmn_step.onnx.json").read_text())  # named after the file it describes
    assert [i["name"] for i in meta["inputs"]] == ["token", "pos", "nodes", "slot_q", "slot_v"]
    assert meta["state"]["capacity_tokens"] >= 5000 and meta["state"]["levels"] == 12
    assert meta["inputs"][2]["shape"] == [4, 1, 13, 1, 64]
    with pytest.raises(SystemExit):
        main(args)  # exists: refused without --force

    code = [sys.executable, str(ROOT / "examples" / "stream_onnx.py"), str(out), "--prompt", "ROMEO:", "--tokens", "60"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([*code[:1], "-c", "import sys; sys.modules['torch'] = None; "
                           f"sys.argv = {code[1:]!r}; exec(open({code[1]!r}).read())"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    model, tokenizer, _ = load_run(RUN)
    ref = model.generate(tokenizer.encode("ROMEO:")[None], 60, temperature=0)
    assert proc.stdout.rstrip("\n") == tokenizer.decode(ref[0])


def test_streams_at_different_positions_share_one_call():
    """Each stream carries its own position: two streams prefilled to different lengths,
    batched into one state, step together exactly as each alone."""
    model = _model(vocab_size=11, d_model=8, n_layers=2, n_heads=2, stride=3, read="digits")
    step = StreamStep(model, max_tokens=500)
    a, b = _tokens(11, 120, seed=3), _tokens(11, 150, seed=4)
    with torch.no_grad():
        ref_a, ref_b = model(a)[0], model(b)[0]
        sa = step.state_from(model.prefill(a[:, :37])[1])
        sb = step.state_from(model.prefill(b[:, :90])[1])
        s = [torch.cat([sa[k], sb[k]], dim=0 if k == "pos" else 1) for k in ("pos", "nodes", "slot_q", "slot_v")]
        for n in range(60):
            logits, *s = step(torch.stack([a[0, 37 + n], b[0, 90 + n]]), *s)
            assert (logits[0] - ref_a[37 + n]).abs().max() <= 1e-5 and (logits[1] - ref_b[90 + n]).abs().max() <= 1e-5
