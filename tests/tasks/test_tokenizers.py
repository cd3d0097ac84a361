"""The text task's tokenizers (char, bytes, bpe:N): round trips, BPE fitted on the training
split alone, the one loader every reader of a run uses (old character files included),
train / generate / resume / convert / export with each, and bits per byte against its
definition."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmn.cli import main
from lmn.data import (ByteTokenizer, CharTokenizer, encode_splits, fit_tokenizer, load_tokenizer, parse_tokenizer_spec,
                      split_text, tokenizer_from_dict)
from lmn.data.tokenizer import BYTE_LEVEL_ALPHABET
from tests.lmn_testdata import TINY_TRAIN_ARGS, run_cli

tokenizers = pytest.importorskip("tokenizers")
from lmn.data.bpe import BPETokenizer  # noqa: E402

WORDS = ["the", "king", "queen", "héllo", "wörld", "naïve", "日本", "語", "😀", "façade", "ROMEO:", "and", "of",
         "thee", "thou", "Ελλάδα", "—", "crème", "brûlée"]
ODD = "héllo wörld ✓ 😀 日本語 Ελλάδα \t tab\r\nCRLF \x00 nul  two  spaces\n\n"


def corpus_text(n_words: int = 1500, seed: int = 0) -> str:
    """A deterministic text of non-ASCII words and lines (a corpus of its own, no download)."""
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if len(line) >= rng.randint(3, 9):
            lines.append(" ".join(line))
            line = []
    return "\n".join(lines) + "\n"


def write_corpus(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text() if text is None else text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- specs and round trips
def test_specs():
    assert parse_tokenizer_spec("char") == ("char", None)
    assert parse_tokenizer_spec("bytes") == ("bytes", None)
    assert parse_tokenizer_spec("bpe:300") == ("bpe", 300)
    for bad in ("bpe", "bpe:", "bpe:x", "bpe:-3", "BPE:300", "word", "", 300, None):
        with pytest.raises(ValueError, match="unknown tokenizer"):
            parse_tokenizer_spec(bad)
    with pytest.raises(ValueError, match="more than 256"):
        parse_tokenizer_spec("bpe:256")


def test_byte_level_alphabet_is_the_librarys():
    assert sorted(BYTE_LEVEL_ALPHABET) == sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert len(set(BYTE_LEVEL_ALPHABET)) == 256 and BYTE_LEVEL_ALPHABET[ord("A")] == "A"
    assert BYTE_LEVEL_ALPHABET[ord(" ")] == "Ġ"  # GPT-2's stand-in for a space


def test_bytes_round_trip_on_non_ascii_text():
    tok = ByteTokenizer()
    ids = tok.encode(ODD)
    assert ids.dtype == torch.int64 and ids.tolist() == list(ODD.encode("utf-8"))
    assert tok.decode(ids) == ODD and tok.vocab_size == 256 and tok.unknown_chars(ODD) == []
    assert tok.encode("").shape == (0,) and tok.decode([]) == ""
    assert tok.byte_lengths().tolist() == [1] * 256
    with pytest.raises(ValueError, match="outside"):
        tok.decode([256])


def test_bpe_round_trip_on_non_ascii_text():
    tok = BPETokenizer.fit(corpus_text(), 300)
    assert tok.vocab_size == 300 and tok.spec == "bpe:300"
    for text in (ODD, corpus_text(200, seed=5), "unseen: ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", ""):
        ids = tok.encode(text)
        assert ids.dtype == torch.int64
        assert tok.decode(ids) == text
        assert tok._tok.decode(ids.tolist()) == text  # our byte table reads ids as the library does
        assert int(tok.byte_lengths()[ids].sum()) == len(text.encode("utf-8"))
    assert len(tok.encode(corpus_text())) < 0.6 * len(corpus_text().encode("utf-8"))  # the merges compress


def test_stream_decoder_holds_a_character_split_across_ids():
    tok = ByteTokenizer()
    dec = tok.stream_decoder()
    pieces = [dec([b]) for b in "a😀b".encode("utf-8")]
    assert pieces == ["a", "", "", "", "😀", "b"] and dec.flush() == ""
    dec = tok.stream_decoder()
    assert dec(list("é".encode("utf-8"))[:1]) == "" and dec.flush() == "\ufffd"  # an incomplete end: U+FFFD
    char = CharTokenizer.from_text("ab")
    dec = char.stream_decoder()
    assert dec([1]) + dec([0]) + dec.flush() == "ba"


# ----------------------------------------------------------------------------- fitted on the training split
def test_bpe_is_fitted_on_the_training_split_only():
    train_text = corpus_text(1200)
    val_a = "zqxv zqxv zqxv zqxv " * 60  # a string that exists only in the validation split
    val_b = corpus_text(300, seed=9)
    frac = len(train_text) / (len(train_text) + len(val_a))
    text_a = train_text + val_a
    assert split_text(text_a, frac)[0] == train_text
    tok_a = fit_tokenizer("bpe:400", text_a, frac)
    assert not [t for t in tok_a.token_bytes if b"zq" in t or b"xv" in t]  # never a merge
    assert tok_a == BPETokenizer.fit(train_text, 400)
    # another validation text of the same length: the same tokenizer
    val_b = (val_b * 10)[: len(val_a)]
    assert fit_tokenizer("bpe:400", train_text + val_b, frac) == tok_a
    # while a different training text gives another one
    assert fit_tokenizer("bpe:400", val_b + train_text, 1 - frac) != tok_a
    train_ids, val_ids = encode_splits(tok_a, text_a, frac)
    assert tok_a.decode(train_ids) == train_text and tok_a.decode(val_ids) == val_a


def test_every_tokenizer_splits_the_same_text():
    text = corpus_text(400)
    train, val = split_text(text, 0.9)
    for spec in ("char", "bytes", "bpe:300"):
        tok = fit_tokenizer(spec, text, 0.9)
        tr, va = encode_splits(tok, text, 0.9)
        assert (tok.decode(tr), tok.decode(va)) == (train, val), spec
    char = CharTokenizer.from_text(text)
    from lmn.data import split_tokens

    ids = char.encode(text)
    assert [t.tolist() for t in encode_splits(char, text, 0.9)] == [t.tolist() for t in split_tokens(ids, 0.9)]


# ----------------------------------------------------------------------------- the loader
def test_old_char_tokenizer_files_still_load(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"format": "lmn-char-tokenizer", "chars": ["\\n", " ", "a", "\\u00e9"]}', encoding="utf-8")
    tok = load_tokenizer(path)
    assert isinstance(tok, CharTokenizer) and tok.chars == "\n aé" and tok.kind == "char"
    assert tok == CharTokenizer.load(path)
    tok.save(tmp_path / "again.json")  # a char file is written as it always was (no "kind")
    assert json.loads((tmp_path / "again.json").read_text()) == {"format": "lmn-char-tokenizer",
                                                                 "chars": ["\n", " ", "a", "é"]}
    assert tok.byte_lengths().tolist() == [1, 1, 1, 2]


def test_loader_reads_each_kind_and_refuses_others(tmp_path):
    bpe = BPETokenizer.fit(corpus_text(), 300)
    for tok in (CharTokenizer.from_text("abc"), ByteTokenizer(), bpe):
        tok.save(tmp_path / "t.json")
        back = load_tokenizer(tmp_path / "t.json")
        assert back == tok and type(back) is type(tok) and back.spec == tok.spec
        assert back.encode("abc").tolist() == tok.encode("abc").tolist()
    assert bpe != BPETokenizer.fit(corpus_text(seed=1)[:3000], 300)
    data = bpe.to_dict()
    assert data["kind"] == "bpe" and data["vocab_size"] == 300 and data["requested_vocab_size"] == 300
    for bad, match in (({"format": "lmn-tokenizer", "kind": "words"}, "unknown tokenizer kind 'words'"),
                       ({"format": "other", "kind": "bytes"}, "not an lmn tokenizer"),
                       ({**data, "vocab_size": 301}, "says vocab_size 301"),
                       ({**data, "tokenizer": {**data["tokenizer"], "normalizer": {"type": "NFC"}}}, "no normalizer"),
                       ([], "expected a JSON object")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "missing.json")


def test_missing_tokenizers_library_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    bpe_dict = BPETokenizer.fit(corpus_text(), 300).to_dict()
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers raises ImportError
    with pytest.raises(ImportError, match=r'pip install "torch-lmn\[bpe\]"'):
        tokenizer_from_dict(bpe_dict)
    corpus = write_corpus(tmp_path)
    status, _, err = run_cli(capsys, "train", *TINY_TRAIN_ARGS, "--data", corpus, "--out", tmp_path / "r",
                             "--max-iters", "1", "--task-opt", "tokenizer=bpe:300")
    assert status == 1 and err.count("\n") == 1 and 'pip install "torch-lmn[bpe]"' in err, err
    assert ByteTokenizer().decode(ByteTokenizer().encode("ok")) == "ok"  # bytes need no library


def test_import_lmn_does_not_import_tokenizers():
    code = ("import sys, lmn, lmn.data, lmn.tasks.text, lmn.trainer, lmn.cli; "
            "assert 'tokenizers' not in sys.modules, 'tokenizers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- bits per byte
def test_bits_per_byte_is_the_formula(tmp_path):
    from lmn.tasks.text import TextTask

    text = corpus_text(600)
    path = write_corpus(tmp_path, text)
    val_text = split_text(text, 0.9)[1]
    for spec in ("char", "bytes", "bpe:300"):
        task = TextTask(str(path), 0.9, 16, tokenizer=spec)
        n_tokens, n_bytes = len(task.ids["val"]), len(val_text.encode("utf-8"))
        assert task.n_bytes["val"] == n_bytes and task.info["n_val_bytes"] == n_bytes
        assert task.bits_per_byte("val", 1.5) == pytest.approx(1.5 * n_tokens / n_bytes / math.log(2), rel=1e-12)


def test_whole_split_bits_per_byte_against_a_plain_loop(tmp_path):
    """``bpb`` of the whole-split metrics: the summed nats of every validation target over
    the UTF-8 bytes of those targets, / ln 2."""
    from lmn.tasks.text import TextTask
    from lmn.trainer.distributed import Dist
    from lmn.trainer.evaluation import evaluate_whole

    path = write_corpus(tmp_path, corpus_text(400))
    torch.manual_seed(0)
    for spec in ("char", "bpe:300"):
        task = TextTask(str(path), 0.9, 16, tokenizer=spec)
        model = torch.nn.Sequential(torch.nn.Embedding(task.vocab_size, 8), torch.nn.Linear(8, task.vocab_size))
        metrics = evaluate_whole(model, task, 4, Dist(), torch.device("cpu"), torch.autocast("cpu", enabled=False))
        val = task.ids["val"]
        with torch.no_grad():
            nats = F.cross_entropy(model(val[:-1]), val[1:], reduction="sum").item()
        tok = task.tokenizer  # the bytes of all the targets together
        n_bytes = len(tok.decode(val[1:]).encode("utf-8")) if spec == "char" else len(tok.to_bytes(val[1:]))
        assert metrics["tokens"] == len(val) - 1
        assert metrics["loss"] == pytest.approx(nats / (len(val) - 1), rel=1e-5)
        assert metrics["bpb"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-5)
        assert ("bits_per_char" in metrics) == (spec == "char")


# ----------------------------------------------------------------------------- lmn train / generate / resume
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny `lmn train` runs with each tokenizer on a non-ASCII corpus (a second each)."""
    root = tmp_path_factory.mktemp("tok-runs")
    corpus = write_corpus(root)
    out = {}
    for spec in ("char", "bytes", "bpe:300"):
        run = root / spec.replace(":", "-")
        status = main([*map(str, ["train", *TINY_TRAIN_ARGS, "--data", corpus, "--out", run, "--max-iters", "4",
                                  "--eval-interval", "2", "--whole-val", "--task-opt", f"tokenizer={spec}"])])
        assert status == 0
        out[spec] = run
    out["corpus"] = corpus
    return out


@pytest.mark.parametrize("spec", ["bytes", "bpe:300"])
def test_train_saves_the_tokenizer_and_reports_bits_per_byte(runs, spec):
    run = runs[spec]
    text = runs["corpus"].read_text(encoding="utf-8")
    tok = load_tokenizer(run / "tokenizer.json")
    assert tok == fit_tokenizer(spec, text, 0.9) and tok.spec == spec
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["task_options"] == {"tokenizer": spec}
    assert config["train"]["model_config"]["vocab_size"] == tok.vocab_size
    corpus = config["corpus"]
    assert corpus["tokenizer"] == spec and corpus["n_val_bytes"] == len(split_text(text, 0.9)[1].encode("utf-8"))
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] * corpus["n_val"] / corpus["n_val_bytes"] / math.log(2))
    final = json.loads((run / "final.json").read_text())
    assert final["final_val_bpb"] == evals[-1]["val_bpb"] and final["final_val_loss"] == evals[-1]["val_loss"]
    assert "whole_val_bpb" in final and "whole_val_bits_per_char" not in final


def test_char_runs_keep_their_files_and_fields(runs):
    run = runs["char"]
    assert set(json.loads((run / "tokenizer.json").read_text())) == {"format", "chars"}
    final = json.loads((run / "final.json").read_text())
    assert final["whole_val_bits_per_char"] == pytest.approx(final["whole_val_loss"] / math.log(2))
    assert {"final_val_bpb", "whole_val_bpb", "whole_val_loss", "final_val_loss"} <= set(final)


@pytest.mark.parametrize("spec", ["bytes", "bpe:300"])
def test_generate_from_a_bytes_or_bpe_run(runs, spec, capsys):
    from lmn.kinds import get_kind
    from lmn.trainer import load_run

    prompt = "héllo 日本 😀"
    status, out, err = run_cli(capsys, "generate", "--checkpoint", runs[spec], "--prompt", prompt, "--tokens", "12",
                               "--temperature", "0")
    assert status == 0, err
    model, tok, doc = load_run(runs[spec])
    ids = tok.encode(prompt)[None]
    new = list(get_kind(doc["train"]["model"]).stream(model, ids, 12, 0.0, None, None, False))
    assert len(new) == 12
    assert out == prompt + tok.decode(torch.cat([torch.as_tensor(t).reshape(-1) for t in new])) + "\n"


@pytest.mark.parametrize("spec,other", [("bytes", "bpe:300"), ("bpe:300", "char"), ("char", "bytes"),
                                        ("bpe:300", "bpe:320")])
def test_resume_refuses_another_tokenizer(runs, spec, other, capsys):
    status, _, err = run_cli(capsys, "train", "--out", runs[spec], "--resume", "--max-iters", "6",
                             "--task-opt", f"tokenizer={other}")
    assert status == 2 and f"trained with tokenizer {spec}, not {other}" in err, err


def test_resume_keeps_a_bpe_run_and_refuses_an_edited_tokenizer(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["bpe:300"], run)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", "5")
    assert status == 0, err  # refitting on the training split gives the same tokenizer
    data = json.loads((run / "tokenizer.json").read_text())
    merges = data["tokenizer"]["model"]["merges"]
    merges[-1], merges[-2] = merges[-2], merges[-1]
    (run / "tokenizer.json").write_text(json.dumps(data))
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", "6")
    assert status == 2 and "its bpe:300 tokenizer differs from the one fitted now on the training split" in err, err


def test_bad_tokenizer_option_is_one_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path)
    for opt, match in (("tokenizer=bpe:100", "more than 256"), ("tokenizer=words", "unknown tokenizer 'words'"),
                       ("vocab=3", "unknown option(s) of the text task: vocab")):
        status, _, err = run_cli(capsys, "train", *TINY_TRAIN_ARGS, "--data", corpus, "--out", tmp_path / "r",
                                 "--max-iters", "1", "--task-opt", opt)
        assert status == 2 and err.count("\n") == 1 and match in err, err
        assert not (tmp_path / "r").exists()


def test_a_corpus_too_short_counts_tokens(tmp_path, capsys):
    corpus = write_corpus(tmp_path, "ab" * 300)  # 600 bytes, a handful of BPE tokens
    status, _, err = run_cli(capsys, "train", *TINY_TRAIN_ARGS, "--data", corpus, "--out", tmp_path / "r",
                             "--max-iters", "1", "--block-size", "64", "--task-opt", "tokenizer=bpe:300")
    assert status == 2 and "bpe:300 tokens give a train split of" in err and "characters" not in err, err


def test_help_documents_the_tokenizer_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "tokenizer=SPEC" in text and "bpe:N" in text and "bytes" in text and "torch-lmn[bpe]" in text


# ----------------------------------------------------------------------------- convert, export, results
@pytest.mark.parametrize("spec", ["bytes", "bpe:300"])
def test_convert_writes_the_runs_tokenizer(runs, spec, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from lmn.hf import convert_run

    out = convert_run(runs[spec], tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(out)
    tok = load_tokenizer(runs[spec] / "tokenizer.json")
    assert hf(ODD)["input_ids"] == tok.encode(ODD).tolist()
    assert hf.decode(tok.encode(ODD).tolist()) == ODD
    assert hf.pad_token_id == tok.vocab_size and hf.padding_side == "left"


def test_export_describes_the_runs_tokenizer(runs, monkeypatch):
    import lmn.export
    from lmn.cli import export_run

    seen = {}
    monkeypatch.setattr(lmn.export, "export_model", lambda *a, extra=None, **k: seen.update(extra) or ("f", "m"))
    export_run(runs["bpe:300"], "pt2")
    assert "chars" not in seen and tokenizer_from_dict(seen["tokenizer"]) == load_tokenizer(
        runs["bpe:300"] / "tokenizer.json")
    export_run(runs["char"], "pt2")
    assert seen["chars"] == list(load_tokenizer(runs["char"] / "tokenizer.json").chars)


def test_results_read_the_tokenizer(runs):
    from lmn.results import collect_run, protocol_label

    row = collect_run(runs["bpe:300"])
    assert "--task-opt tokenizer=bpe:300" in row["command"] and "tokenizer=bpe:300" in row["protocol"]
    assert row["final_val_bpb"] is not None and row["whole_val_bpb"] is not None
    assert "tokenizer" not in protocol_label({"task_options": {}}) and protocol_label({}) == "paper"
