"""lmn.export: the fixed-shape streaming step equals LMN's own logits, eagerly, as a
torch.export program and in onnxruntime (200 tokens after a prompt, max |diff| <= 1e-4);
`lmn export` and the onnxruntime-only example on the committed run; a full stream is
reported, not stepped; every file appears whole or not at all (issue 23)."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmn import LMN, LMNConfig
from lmn import atomic
from lmn.export import StreamStep, export_onnx, export_program
from tests.core.test_atomic import FullDisk
from tests.lmn_testdata import kill_while_writing, run_cli

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


# ----------------------------------------------------------------------------- issue 23
def _export_args(out, fmt, *more):
    return [str(a) for a in ("export", "--checkpoint", RUN, "--format", fmt, "--out", out, *more)]


@pytest.fixture(scope="module")
def readme_pair(tmp_path_factory):
    """The README's two commands, into one folder: ONNX (default capacity), then pt2."""
    pytest.importorskip("onnxscript")
    from lmn.cli import main

    folder = tmp_path_factory.mktemp("pair")
    assert main(_export_args(folder / "lmn_step.onnx", "onnx")) == 0
    assert main(_export_args(folder / "lmn_step.pt2", "pt2", "--max-tokens", 1048576)) == 0  # no --force needed
    return folder


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_readme_pair_of_exports_shares_a_folder(readme_pair, tmp_path):
    pytest.importorskip("onnxruntime")
    from lmn.export import OrtStepper, read_description
    from lmn.trainer import load_run

    assert sorted(_files(readme_pair)) == ["lmn_step.onnx", "lmn_step.onnx.json", "lmn_step.pt2", "lmn_step.pt2.json"]
    onnx_doc = json.loads((readme_pair / "lmn_step.onnx.json").read_text())
    pt2_doc = json.loads((readme_pair / "lmn_step.pt2.json").read_text())
    assert (onnx_doc["file_format"], onnx_doc["state"]["levels"], onnx_doc["version"]) == ("onnx", 30, 2)
    assert (pt2_doc["file_format"], pt2_doc["state"]["levels"]) == ("pt2", 20)
    assert read_description(readme_pair / "lmn_step.onnx") == onnx_doc  # the same description inside each file
    assert read_description(readme_pair / "lmn_step.pt2") == pt2_doc
    assert onnx_doc["outputs"][-1] == {"name": "overflow", "shape": [1], "dtype": "bool"}
    assert "NaN" in onnx_doc["overflow"]

    model, tokenizer, _ = load_run(RUN)
    ref = tokenizer.decode(model.generate(tokenizer.encode("ROMEO:")[None], 40, temperature=0)[0])
    example = [sys.executable, str(ROOT / "examples" / "stream_onnx.py"), "--prompt", "ROMEO:", "--tokens", "40"]
    proc = subprocess.run([*example, str(readme_pair / "lmn_step.onnx")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.rstrip("\n") == ref, proc.stderr
    ort = OrtStepper(readme_pair / "lmn_step.onnx")
    assert ort.capacity == 2**31 - 1 and ort.state["nodes"].shape == (4, 1, 31, 1, 64)

    # an export before version 2: no description inside, no overflow output, its JSON named lmn_step.json,
    # possibly replaced by a pt2 export's: the example and OrtStepper take the one that fits the model
    import onnx

    proto = onnx.load(str(readme_pair / "lmn_step.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "lmn_step.onnx"))
    (tmp_path / "lmn_step.json").write_text(json.dumps(pt2_doc))  # what the second command used to leave
    proc = subprocess.run([*example, str(tmp_path / "lmn_step.onnx")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no description of"), proc.stderr
    assert OrtStepper(tmp_path / "lmn_step.onnx").capacity is None
    (tmp_path / "lmn_step.json").write_text(json.dumps(onnx_doc))
    proc = subprocess.run([*example, str(tmp_path / "lmn_step.onnx")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.rstrip("\n") == ref, proc.stderr
    assert OrtStepper(tmp_path / "lmn_step.onnx").capacity == 2**31 - 1


@pytest.mark.parametrize("kw, max_tokens, capacity", [({}, 5, 7), ({"stride": 3, "read": "digits"}, 9, 26)])
def test_a_full_stream_is_reported_not_stepped(tmp_path, kw, max_tokens, capacity):
    """Up to the capacity every form equals the model; one more step: the eager and
    exported step flag it (NaN logits, state unchanged), OrtStepper refuses it."""
    pytest.importorskip("onnxruntime")
    from lmn.export import OrtStepper

    model = _model(vocab_size=11, d_model=8, n_layers=2, n_heads=2, **kw)
    idx = _tokens(11, capacity + 1)
    step = StreamStep(model, max_tokens, overflow=True)
    assert step.capacity == capacity and step.describe()["state"]["capacity_tokens"] == capacity
    program = export_program(model, max_tokens).module()
    ort = OrtStepper(export_onnx(model, tmp_path / "step.onnx", max_tokens))
    assert ort.capacity == capacity
    with torch.no_grad():
        ref = model(idx)[0]
        eager = _args(step.initial_state(1))
        exported = _args(step.initial_state(1))
        for t in range(capacity):
            logits, *eager, full = step(idx[:, t], *eager)
            assert (logits[0] - ref[t]).abs().max() <= 1e-5 and not full.any(), t
            logits, *exported, full = program(idx[:, t], *exported)
            assert (logits[0] - ref[t]).abs().max() <= 1e-5 and not full.any(), t
            logits = torch.from_numpy(ort.step(idx[0, t : t + 1].numpy()))
            assert (logits[0] - ref[t]).abs().max() <= 1e-4, t
        assert int(eager[0]) == capacity
        for fn, state in ((step, eager), (program, exported)):
            logits, *after, full = fn(idx[:, capacity], *state)
            assert full.tolist() == [True] and torch.isnan(logits).all()
            assert all(torch.equal(a, b) for a, b in zip(after, state))  # next_pos == pos == capacity, state as it was
    before = {k: v.copy() for k, v in ort.state.items()}
    with pytest.raises(ValueError, match=f"stream 0 of step.onnx is full: {capacity} tokens, the exported state's "
                                         "capacity; re-export with a larger --max-tokens"):
        ort.step(idx[0, capacity : capacity + 1].numpy())
    assert all((ort.state[k] == before[k]).all() for k in before)
    ort.capacity = None  # a state that says nothing of its capacity: the graph's own flag refuses it
    with pytest.raises(ValueError, match="is full"):
        ort.step(idx[0, capacity : capacity + 1].numpy())


def test_a_capped_tree_is_never_full():
    if "max_level" not in LMNConfig.__dataclass_fields__:
        pytest.skip("this LMNConfig has no max_level")
    model = _model(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_level=2)
    step = StreamStep(model, max_tokens=100, overflow=True)  # more than its 2 levels hold
    assert step.capacity is None and "always false" in step.describe()["overflow"]
    idx = _tokens(11, 40)
    with torch.no_grad():
        ref = model(idx)[0]
        s = _args(step.initial_state(1))
        for t in range(40):
            logits, *s, full = step(idx[:, t], *s)
            assert not full.any() and (logits[0] - ref[t]).abs().max() <= 1e-5


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_previous_one(readme_pair, tmp_path, monkeypatch,
                                                                             capsys, fmt):
    out = tmp_path / f"lmn_step.{fmt}"
    meta = tmp_path / f"lmn_step.{fmt}.json"
    # too little room, known before writing: nothing written
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    status, _, err = run_cli(capsys, *_export_args(out, fmt))
    monkeypatch.undo()
    assert status == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("lmn export: error: OSError: [Errno 28] No space left on device (") and \
        err.rstrip().endswith(f"bytes to write, 1,000 free): {str(out)!r}"), err
    assert list(tmp_path.iterdir()) == []
    # the disk fills part-way through the model, over a previous export (--force): that export stays
    for name in (out.name, meta.name):
        shutil.copy(readme_pair / name, tmp_path / name)
    before = _files(tmp_path)
    monkeypatch.setattr(atomic, "open", FullDisk(100_000), raising=False)
    status, _, err = run_cli(capsys, *_export_args(out, fmt, "--force"))
    monkeypatch.undo()
    assert status == 1 and err.splitlines() == [f"lmn export: error: OSError: [Errno 28] No space left on device: "
                                                f"{str(out)!r}"], err
    assert _files(tmp_path) == before  # and no temporary left


@pytest.mark.parametrize("fmt", ["pt2"])
def test_a_real_write_failure_of_pt2_is_one_line_not_an_abort(readme_pair, tmp_path, fmt):
    """torch.export.save's archive writer aborts the process (a C++ terminate, exit 134)
    when its file's write fails; the export serializes in memory and writes from Python."""
    out = tmp_path / f"lmn_step.{fmt}"
    for name in (out.name, out.name + ".json"):
        shutil.copy(readme_pair / name, tmp_path / name)
    before = _files(tmp_path)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "  # no file past 64 KiB: write() fails
            "from lmn.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, _export_args(out, fmt, "--force"))],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"lmn export: error: OSError: [Errno {errno.EFBIG}] File too large: "
                                        f"{str(out)!r}"], proc.stderr[-3000:]
    assert _files(tmp_path) == before


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_killed_export_leaves_the_previous_export(readme_pair, tmp_path, fmt):
    """SIGKILL while the new file is written beside the old one (held at its fsync): the
    previous export is intact and loads; what is left is the temporary, by its name."""
    out = tmp_path / f"lmn_step.{fmt}"
    for name in (out.name, out.name + ".json"):
        shutil.copy(readme_pair / name, tmp_path / name)
    before = _files(tmp_path)
    def temporary(pid):
        return atomic.temporary_name(out).with_name(f".{out.name}.tmp{pid}")

    pid = kill_while_writing(_export_args(out, fmt, "--max-tokens", "99", "--force"),
                             lambda pid: temporary(pid).exists() and temporary(pid).stat().st_size > 0, "the export")
    tmp = temporary(pid)
    left = _files(tmp_path)
    assert {k: v for k, v in left.items() if not k.startswith(".")} == before
    assert sorted(k for k in left if k.startswith(".")) == sorted(
        {tmp.name} | ({f".{out.name}.json.tmp{pid}"} & set(left)))
    if fmt == "onnx":
        from lmn.export import OrtStepper

        assert OrtStepper(out).capacity == 2**31 - 1
    else:
        torch.export.load(out)
