"""lmn.hf: the transformers adapter. Round-trip through save_pretrained/from_pretrained,
greedy generate == LMN.generate, left-padded batches == each prompt alone, the cache is
LMN's state, pipeline("text-generation"), `lmn convert` of the committed run, written whole
or not at all with the modes of files made in place (issue 23)."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", minversion="5.24")  # lmn.hf needs transformers 5 (its "cache")

from lmn import LMN, LMNConfig, state_nbytes  # noqa: E402
from tests.lmn_testdata import kill_while_writing, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "docs" / "results" / "runs" / "lmn-s1337"
CHARS = sorted(set("\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=len(CHARS), d_model=16, n_layers=2, n_heads=2, n_banks=2)
    cfg.update(kw)
    return LMN(LMNConfig(**cfg)).eval()


def test_import_lmn_does_not_import_transformers():
    code = "import sys, lmn, lmn.model, lmn.generation; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_round_trip_through_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmn.hf import LMNCharTokenizer, LMNForCausalLM, LMNHFConfig

    model = _model(stride=3, read="digits", summarizer="conv")
    hf = LMNForCausalLM.from_lmn(model)
    tok = LMNCharTokenizer(chars=CHARS)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and json.loads((tmp_path / "config.json").read_text())[
        "model_type"] == "lmn"

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LMNHFConfig) and config.lmn_config() == model.config
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, LMNForCausalLM)
    a, b = hf.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    idx = torch.randint(0, len(CHARS), (2, 30))
    assert torch.equal(loaded(idx).logits, model(idx))

    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok2, LMNCharTokenizer) and tok2.padding_side == "left"
    text = "Hello, world!\n  What? 'tis so ;: ."
    ids = tok2(text)["input_ids"]
    assert ids == [CHARS.index(c) for c in text] and tok2.decode(ids) == text
    assert tok2.pad_token_id == len(CHARS)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok2("caf\u00e9")


@pytest.mark.parametrize("kw", [{}, {"stride": 3, "read": "digits"}, {"pos_encoding": "sinusoidal"},
                                {"summarizer": "gated", "window": 4, "sink": True, "level_gate": "data", "pinned": 2}])
def test_greedy_generate_equals_lmn_generate(kw):
    from lmn.hf import LMNCache, LMNForCausalLM

    model = _model(**kw)
    hf = LMNForCausalLM.from_lmn(model)
    idx = torch.randint(0, len(CHARS), (1, 13), generator=torch.Generator().manual_seed(1))
    out = hf.generate(idx, max_new_tokens=40, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, model.generate(idx, 40, temperature=0))
    cache = out.cache
    assert isinstance(cache, LMNCache)  # the streaming state, not a KV cache: O(log n) bytes
    (rows, state), = cache.groups
    assert state.pos == 13 + 39 and cache.nbytes == state_nbytes(model.config, 1, 13 + 39)


def test_left_padded_batch_equals_each_prompt_alone():
    from lmn.hf import LMNCharTokenizer, LMNForCausalLM

    model = _model()
    hf = LMNForCausalLM.from_lmn(model)
    tok = LMNCharTokenizer(chars=CHARS)
    prompts = ["ROMEO:", "a", "What light through yonder window breaks?", "ROMEO:", "Juliet, "]
    batch = tok(prompts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0  # left padding
    out = hf.generate(**batch, max_new_tokens=25, do_sample=False)
    for i, p in enumerate(prompts):
        alone = model.generate(torch.tensor([tok(p)["input_ids"]]), 25, temperature=0)
        assert torch.equal(out[i, -25:], alone[0, -25:]), p
    # with an eos, finished rows are fed the <pad> id (outside the model's vocabulary) and ignored
    eos = int(out[0, -25])  # the first token row 0 generates: it stops there
    stopped = hf.generate(**batch, max_new_tokens=25, do_sample=False, eos_token_id=eos)
    for i, p in enumerate(prompts):
        alone = hf.generate(torch.tensor([tok(p)["input_ids"]]), max_new_tokens=25, do_sample=False, eos_token_id=eos)
        assert tok.decode(stopped[i], skip_special_tokens=True) == tok.decode(alone[0]), p
    # the forward (no cache) gives each row the logits of its prompt alone, zeros at the pads
    logits = hf(**batch).logits
    for i, p in enumerate(prompts):
        n = len(p)
        assert torch.allclose(logits[i, -n:], model(torch.tensor([tok(p)["input_ids"]]))[0], atol=1e-6)
        assert not logits[i, :-n].any()


def test_bad_masks_are_clear_errors():
    from lmn.hf import LMNForCausalLM

    hf = LMNForCausalLM.from_lmn(_model())
    idx = torch.randint(0, len(CHARS), (2, 6))
    right = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="right padding cannot be continued"):
        hf.generate(idx, attention_mask=right, max_new_tokens=2, do_sample=False)
    hf(idx, attention_mask=right)  # without a cache right padding is harmless
    with pytest.raises(ValueError, match="one run of ones"):
        hf(idx, attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="no real token"):
        hf(idx, attention_mask=torch.tensor([[0] * 6, [1] * 6]))


def test_pipeline_and_convert_of_the_committed_run(tmp_path):
    from transformers import pipeline

    from lmn.cli import main
    from lmn.trainer import load_run

    out = tmp_path / "hf"
    assert main(["convert", str(RUN), str(out)]) == 0
    with pytest.raises(SystemExit):
        main(["convert", str(RUN), str(out)])  # not empty: refused without --force
    pipe = pipeline("text-generation", model=str(out))
    text = pipe("ROMEO:", max_new_tokens=30, do_sample=False)[0]["generated_text"]

    model, tokenizer, _ = load_run(RUN)
    ref = model.generate(tokenizer.encode("ROMEO:")[None], 30, temperature=0)
    assert text == tokenizer.decode(ref[0])
    texts = pipe(["ROMEO:", "JULIET:\nO"], max_new_tokens=10, do_sample=False, batch_size=2)
    assert texts[0][0]["generated_text"] == tokenizer.decode(ref[0, :16])


# ----------------------------------------------------------------------------- issue 23: convert, whole or not at all
def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _modes(root):
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(Path(root).iterdir())}


@pytest.fixture
def umask022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from lmn.cli import main

    previous = os.umask(0o022)
    try:
        out = tmp_path_factory.mktemp("good") / "hf"
        assert main(["convert", str(RUN), str(out)]) == 0
    finally:
        os.umask(previous)
    return out


def _previous(converted, tmp_path):
    out = tmp_path / "hf"
    shutil.copytree(converted, out)
    (out / "notes.txt").write_text("mine")  # a file of the user's, which --force keeps
    return out, _snapshot(out)


def test_convert_gives_files_the_modes_of_files_made_in_place(converted, tmp_path, umask022):
    assert set(_modes(converted).values()) == {"0o644"}, _modes(converted)  # safetensors makes its file 0600
    assert "model.safetensors" in _modes(converted)
    out, _ = _previous(converted, tmp_path)
    os.chmod(out / "config.json", 0o600)
    from lmn.cli import main

    assert main(["convert", str(RUN), str(out), "--force"]) == 0
    modes = _modes(out)
    assert modes.pop("config.json") == "0o600" and set(modes.values()) == {"0o644"}, modes
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_full_disk_during_convert_is_one_line_and_keeps_the_previous_directory(converted, tmp_path, monkeypatch,
                                                                                 capsys):
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    from lmn import atomic

    out, before = _previous(converted, tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000))
    status, _, err = run_cli(capsys, "convert", RUN, out, "--force")  # too little room, known before writing
    monkeypatch.undo()
    assert status == 1 and len(err.splitlines()) == 1 and "5,000 free" in err, err
    assert err.rstrip().endswith(f"free): {str(out / 'model.safetensors')!r}"), err
    assert _snapshot(out) == before

    def fill_the_disk(tensors, filename, metadata=None):  # what safetensors raises on a full disk, part-way
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", fill_the_disk)
    status, _, err = run_cli(capsys, "convert", RUN, out, "--force")
    assert status == 1 and err.splitlines() == [f"lmn convert: error: OSError: [Errno 28] No space left on device: "
                                                f"{str(out / 'model.safetensors')!r}"], err
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    status, _, err = run_cli(capsys, "convert", RUN, tmp_path / "new")  # a new directory: nothing at all
    assert status == 1 and "No space left on device" in err and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_real_write_failure_during_convert_is_one_line(converted, tmp_path):
    out, before = _previous(converted, tmp_path)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "  # no file past 64 KiB: write() fails
            "from lmn.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "convert", str(RUN), str(out), "--force"], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"lmn convert: error: OSError: [Errno {errno.EFBIG}] File too large: {str(out / 'model.safetensors')!r}"], \
        proc.stderr[-3000:]
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_killed_convert_leaves_the_previous_directory(converted, tmp_path):
    """SIGKILL while the new directory is written beside the old one (held at its fsync):
    the previous directory is as it was and loads; what is left is the temporary."""
    from transformers import AutoModelForCausalLM

    import lmn.hf  # noqa: F401  (registers the model type)

    out, before = _previous(converted, tmp_path)
    pid = kill_while_writing(["convert", RUN, out, "--force"],
                             lambda pid: (tmp_path / f".hf.tmp{pid}" / "model.safetensors").exists(), "the conversion")
    tmp = tmp_path / f".hf.tmp{pid}"
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == [tmp.name, "hf"]
    AutoModelForCausalLM.from_pretrained(out)
