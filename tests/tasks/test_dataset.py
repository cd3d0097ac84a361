"""Token datasets on disk (lmn data prepare, lmn train --dataset): sources (file, folder,
JSONL), the manifest, dtypes, document offsets, the split, atomic writes, training, resume,
refusals, and training's peak RSS against the corpus size."""

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmn.data import encode_splits, fit_tokenizer
from lmn.data import dataset as D
from lmn.data.batches import gather_windows, sequential_windows, window_starts
from lmn.data.dataset import TokenDataset, is_val_document, prepare, token_dtype, val_document_count
from tests.lmn_testdata import TINY_TRAIN_ARGS, kill_while_writing, one_line_error, run_cli, run_records
from tests.tasks.test_tokenizers import ODD, corpus_text

TINY = [*TINY_TRAIN_ARGS, "--log-interval", 1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def split_ids(ds: TokenDataset, split: str) -> np.ndarray:
    """A split's tokens read from its shard files directly (np.memmap, the documented way)."""
    rec = ds.manifest["splits"][split]
    parts = [np.memmap(ds.path / s["file"], dtype=ds.dtype, mode="r") for s in rec["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, ds.dtype)


def documents(ds: TokenDataset, split: str) -> list[str]:
    """The split's documents, decoded, cut at its document offsets."""
    ids, starts = split_ids(ds, split), [*ds.split(split).doc_starts.tolist(), None]
    tok = ds.tokenizer()
    return [tok.decode(torch.from_numpy(ids[a:b].astype(np.int64))) for a, b in zip(starts, starts[1:])]


# ----------------------------------------------------------------------------- sources, manifest
def test_token_dtype_is_the_smallest_that_holds_every_id():
    assert [token_dtype(v) for v in (2, 256, 257, 65536, 65537, 2**20)] == \
        ["uint8", "uint8", "uint16", "uint16", "uint32", "uint32"]


@pytest.mark.parametrize("spec", ["char", "bytes", "bpe:300"])
def test_a_file_gives_the_text_tasks_split_and_ids(tmp_path, spec):
    """One document is split by position as the text task splits it (train_frac = 1 - val_frac),
    each part encoded on its own: the same ids, for every tokenizer."""
    if spec.startswith("bpe"):
        pytest.importorskip("tokenizers")
    text = corpus_text(800) + ODD
    src = write(tmp_path / "corpus.txt", text)
    manifest = prepare([src], tmp_path / "ds", spec, val_frac=0.1, shard_tokens=500)
    ds = TokenDataset(tmp_path / "ds")
    tok = fit_tokenizer(spec, text, 0.9)
    assert ds.tokenizer() == tok
    train, val = encode_splits(tok, text, 0.9)
    assert np.array_equal(split_ids(ds, "train"), train.numpy()) and np.array_equal(split_ids(ds, "val"), val.numpy())
    # the manifest
    assert manifest == json.loads((tmp_path / "ds" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "lmn-token-dataset" and manifest["version"] == 1
    assert manifest["sources"] == [{"path": str(src), "kind": "text", "bytes": src.stat().st_size,
                                    "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]
    assert manifest["tokenizer"]["spec"] == spec and manifest["tokenizer"]["vocab_size"] == tok.vocab_size
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256((tmp_path / "ds" / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["dtype"] == token_dtype(tok.vocab_size) == ("uint16" if spec.startswith("bpe") else "uint8")
    assert manifest["split"]["by"] == "position" and manifest["split"]["train_chars"] == int(0.9 * len(text))
    assert manifest["documents"] == {**manifest["documents"], "total": 1, "skipped_empty": 0, "train": 1, "val": 1}
    train_b, val_b = text[: int(0.9 * len(text))].encode(), text[int(0.9 * len(text)):].encode()
    for split, ids, n_bytes in (("train", train, len(train_b)), ("val", val, len(val_b))):
        rec = manifest["splits"][split]
        assert rec["tokens"] == len(ids) == sum(s["tokens"] for s in rec["shards"]) and rec["bytes"] == n_bytes
        assert all(s["tokens"] == 500 for s in rec["shards"][:-1]) and len(rec["shards"]) == -(-len(ids) // 500)
        for s in rec["shards"]:
            blob = (tmp_path / "ds" / s["file"]).read_bytes()
            assert len(blob) == s["tokens"] * ds.dtype.itemsize and hashlib.sha256(blob).hexdigest() == s["sha256"]
        assert ds.split(split).doc_starts.tolist() == [0]
    assert (manifest["splits"]["train"]["bytes"] + manifest["splits"]["val"]["bytes"]) == len(text.encode())


def test_a_folder_is_one_document_per_file_in_sorted_order(tmp_path):
    texts = {"b.txt": "second file\n" * 30, "a.txt": "first — ü\n" * 40, "sub/c.md": "third 😀 in a folder\n" * 20,
             "sub/d.rst": "fourth\n" * 25, "e.txt": ""}
    for name, text in texts.items():
        write(tmp_path / "src" / name, text)
    write(tmp_path / "src" / ".hidden.txt", "not read")
    write(tmp_path / "src" / ".git" / "HEAD", "not read")
    manifest = prepare([tmp_path / "src"], tmp_path / "ds", "bytes", val_frac=0.25)
    order = ["a.txt", "b.txt", "sub/c.md", "sub/d.rst"]  # sorted by relative path; e.txt is empty
    assert [f["path"] for f in manifest["sources"][0]["files"]] == ["a.txt", "b.txt", "e.txt", "sub/c.md", "sub/d.rst"]
    assert manifest["documents"]["total"] == 4 and manifest["documents"]["skipped_empty"] == 1
    n_val = val_document_count(4, 0.25)
    assert n_val == 1 and manifest["split"] == {**manifest["split"], "by": "documents", "val_documents": 1}
    ds = TokenDataset(tmp_path / "ds")
    val = [texts[name] for i, name in enumerate(order) if is_val_document(i, 4, n_val)]
    assert documents(ds, "val") == val == [texts["sub/d.rst"]]  # the last document always validates
    assert documents(ds, "train") == [texts[n] for n in order[:3]]
    assert manifest["dtype"] == "uint8"
    # --glob reads only what matches
    manifest = prepare([tmp_path / "src"], tmp_path / "ds2", "bytes", glob="**/*.txt")
    assert [f["path"] for f in manifest["sources"][0]["files"]] == ["a.txt", "b.txt", "e.txt"]
    assert "glob '**/*.txt'" in manifest["read"]["folders"]


def test_jsonl_is_one_document_per_line(tmp_path):
    docs = [ODD, "naïve façade crème brûlée\n" * 5, "日本語のテキスト", "", "Ελλάδα " * 9, "😀" * 30]
    lines = [json.dumps({"id": i, "body": d}, ensure_ascii=i % 2 == 0) for i, d in enumerate(docs)]
    src = write(tmp_path / "d.jsonl", "\n".join(lines[:3]) + "\n\n   \n" + "\n".join(lines[3:]) + "\n")
    manifest = prepare([src], tmp_path / "ds", "char", text_field="body", val_frac=0.4, shard_tokens=7)
    kept = [d for d in docs if d]
    n_val = val_document_count(5, 0.4)
    assert n_val == 2 and manifest["documents"]["total"] == 5 and manifest["documents"]["skipped_empty"] == 1
    ds = TokenDataset(tmp_path / "ds")
    assert documents(ds, "train") == [d for i, d in enumerate(kept) if not is_val_document(i, 5, 2)]
    assert documents(ds, "val") == [d for i, d in enumerate(kept) if is_val_document(i, 5, 2)]
    assert manifest["sources"][0]["text_field"] == "body" and manifest["sources"][0]["kind"] == "jsonl"
    assert sorted(ds.tokenizer().chars) == sorted(set("".join(docs)))  # char: every character, both splits


def test_several_sources_in_order_and_document_offsets(tmp_path):
    rng = random.Random(3)
    file_docs = [corpus_text(rng.randint(5, 60), seed=i) for i in range(9)]
    for i, text in enumerate(file_docs):
        write(tmp_path / "folder" / f"{i:02d}.txt", text)
    jsonl_docs = [corpus_text(rng.randint(1, 20), seed=100 + i) for i in range(5)]
    src = write(tmp_path / "more.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in jsonl_docs))
    single = write(tmp_path / "one.txt", corpus_text(30, seed=7))
    prepare([tmp_path / "folder", src, single], tmp_path / "ds", "bytes", val_frac=0.2, shard_tokens=97)
    everything = [*file_docs, *jsonl_docs, single.read_text(encoding="utf-8")]
    n, n_val = len(everything), val_document_count(len(everything), 0.2)
    ds = TokenDataset(tmp_path / "ds")
    for split in ("train", "val"):
        want = [d for i, d in enumerate(everything) if is_val_document(i, n, n_val) == (split == "val")]
        assert documents(ds, split) == want
        starts = ds.split(split).doc_starts.tolist()
        assert starts == np.cumsum([0, *[len(d.encode()) for d in want[:-1]]]).tolist()
    # document_starts marks each document's first token inside a window
    sp = ds.split("train")
    window_at = torch.tensor([0, 5, sp.doc_starts[2] - 3])
    mask = sp.document_starts(window_at, 40)
    for row, s in enumerate(window_at.tolist()):
        want = [d - s for d in sp.doc_starts.tolist() if s <= d < s + 40]
        assert torch.nonzero(mask[row]).flatten().tolist() == want


def test_the_split_is_evenly_spaced_and_exact():
    for n in range(2, 60):
        for frac in (0.01, 0.1, 0.25, 0.5, 0.9, 0.99):
            n_val = val_document_count(n, frac)
            chosen = [i for i in range(n) if is_val_document(i, n, n_val)]
            assert len(chosen) == n_val and 1 <= n_val <= n - 1 and chosen[-1] == n - 1
            assert n_val == min(n - 1, max(1, round(frac * n)))


def test_prepare_is_deterministic_and_windows_read_across_shards(tmp_path):
    pytest.importorskip("tokenizers")
    for i in range(6):
        write(tmp_path / "src" / f"{i}.txt", corpus_text(200, seed=i))
    a = prepare([tmp_path / "src"], tmp_path / "a", "bpe:300", shard_tokens=64)
    b = prepare([tmp_path / "src"], tmp_path / "b", "bpe:300", shard_tokens=64)
    assert a == b
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in os.listdir(tmp_path / "a"))
    ds = TokenDataset(tmp_path / "a")
    for split in ("train", "val"):
        ids = torch.from_numpy(split_ids(ds, split).astype(np.int64))
        sp = ds.split(split)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for _ in range(20):  # windows of 50 tokens cross the 64-token shards often
            got = sp.windows(window_starts(len(sp), 50, 7, g1), 50)
            want = gather_windows(ids, window_starts(len(ids), 50, 7, g2), 50)
            assert all(torch.equal(x, y) and x.dtype == torch.int64 for x, y in zip(got, want))
        whole = [tuple(b.x.tolist()) for b in ds_task_whole(tmp_path / "a", split, 16)]
        assert whole == [tuple(x.tolist()) for x, _ in sequential_windows(ids, 16, 4)]


def ds_task_whole(path, split, block):
    from lmn.tasks.dataset import DatasetTask

    task = DatasetTask(str(path), block)
    task.whole_split = split
    return list(task.whole(4))


def test_bpe_chunks_give_the_ids_of_the_whole_document(tmp_path, monkeypatch):
    """A document is encoded chunk by chunk, cut only where the pre-tokenizer splits: the ids
    of the whole text, and of the text task's fit (the same training text)."""
    pytest.importorskip("tokenizers")
    text = corpus_text(3000) + ODD * 3
    src = write(tmp_path / "c.txt", text)
    monkeypatch.setattr(D, "CHUNK_CHARS", 64)
    monkeypatch.setattr(D, "READ_BYTES", 100)
    manifest = prepare([src], tmp_path / "ds", "bpe:320")
    tok = fit_tokenizer("bpe:320", text, 0.9)
    ds = TokenDataset(tmp_path / "ds")
    assert ds.tokenizer() == tok and manifest["forced_cuts"] == 0
    train, val = encode_splits(tok, text, 0.9)
    assert np.array_equal(split_ids(ds, "train"), train.numpy()) and np.array_equal(split_ids(ds, "val"), val.numpy())
    # a document without a place to cut is cut anyway, and counted
    write(tmp_path / "long.txt", "x" * 1000 + "y" * 1000)
    assert prepare([tmp_path / "long.txt"], tmp_path / "ds2", "bytes")["forced_cuts"] == 0  # bytes: any cut is exact
    assert prepare([tmp_path / "long.txt"], tmp_path / "ds3", "bpe:300")["forced_cuts"] > 0


# ----------------------------------------------------------------------------- atomic writes
def test_a_failure_mid_way_leaves_nothing_or_the_previous_dataset(tmp_path, monkeypatch):
    src = write(tmp_path / "c.txt", corpus_text(400))
    calls = {"n": 0}
    real = D._SplitWriter.write

    def failing(self, ids, n_bytes):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, ids, n_bytes)

    monkeypatch.setattr(D, "CHUNK_CHARS", 500)
    monkeypatch.setattr(D._SplitWriter, "write", failing)
    with pytest.raises(OSError, match="No space"):
        prepare([src], tmp_path / "ds", "bytes")
    assert calls["n"] == 3 and sorted(os.listdir(tmp_path)) == ["c.txt"]  # no dataset, no temporary
    monkeypatch.setattr(D._SplitWriter, "write", real)
    prepare([src], tmp_path / "ds", "bytes")
    before = {f: (tmp_path / "ds" / f).read_bytes() for f in os.listdir(tmp_path / "ds")}
    calls["n"] = 0
    monkeypatch.setattr(D._SplitWriter, "write", failing)
    with pytest.raises(OSError):
        prepare([src], tmp_path / "ds", "char", force=True)
    assert {f: (tmp_path / "ds" / f).read_bytes() for f in os.listdir(tmp_path / "ds")} == before
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "ds"]


def test_a_killed_prepare_leaves_no_dataset(tmp_path, capsys):
    src = write(tmp_path / "c.txt", corpus_text(300))
    out = tmp_path / "ds"

    def writing(pid):  # every file is in the temporary directory, being fsynced before the rename
        return (tmp_path / f".ds.tmp{pid}" / "manifest.json").exists()

    pid = kill_while_writing(["data", "prepare", src, "--tokenizer", "bytes", "--out", out], writing, "prepare")
    assert not out.exists() and (tmp_path / f".ds.tmp{pid}").is_dir()
    status, _, err = run_cli(capsys, "train", "--dataset", out, "--out", tmp_path / "run", *TINY)
    one_line_error(status, err, "not a directory")
    status, _, err = run_cli(capsys, "data", "prepare", src, "--tokenizer", "bytes", "--out", out)
    assert status == 0 and "removed" in err and not (tmp_path / f".ds.tmp{pid}").exists()
    assert TokenDataset(out).manifest["splits"]["train"]["tokens"] > 0


# ----------------------------------------------------------------------------- training
@pytest.fixture
def shakespeare_like(tmp_path):
    """A single-document corpus and its bytes dataset."""
    src = write(tmp_path / "corpus.txt", corpus_text(1500))
    status = run_cli_plain("data", "prepare", src, "--tokenizer", "bytes", "--out", tmp_path / "ds", "--quiet",
                           "--shard-tokens", 1000)
    assert status == 0
    return src, tmp_path / "ds"


def run_cli_plain(*argv) -> int:
    from lmn.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def test_training_from_a_dataset_is_the_text_task_on_its_text(tmp_path, shakespeare_like, capsys):
    """The same batches, estimates and whole-split evaluation as --data on the same file: the
    sampler, its generator and the split are the text task's."""
    src, ds = shakespeare_like
    common = ["train", *TINY, "--max-iters", 5, "--eval-interval", 2, "--whole-val", "--task-opt"]
    assert run_cli(capsys, *common, "tokenizer=bytes", "--data", src, "--out", tmp_path / "text")[0] == 0
    status, out, err = run_cli(capsys, "train", *TINY, "--max-iters", 5, "--eval-interval", 2, "--whole-val",
                               "--dataset", ds, "--out", tmp_path / "run")
    assert status == 0, err
    for kind in ("train", "eval", "final"):
        assert run_records(tmp_path / "run", kind) == run_records(tmp_path / "text", kind) != []
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["whole_val_bpb"] == json.loads((tmp_path / "text" / "final.json").read_text())["whole_val_bpb"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["task"] == "dataset" and config["train"]["data"] == str(ds)
    sha = hashlib.sha256((ds / "manifest.json").read_bytes()).hexdigest()
    assert config["dataset"]["manifest_sha256"] == sha == final["dataset"]["manifest_sha256"]
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (ds / "tokenizer.json").read_bytes()
    assert (tmp_path / "run" / "dataset.json").read_bytes() == (ds / "manifest.json").read_bytes()
    assert {"tokenizer.json", "dataset.json"} <= set(json.loads((tmp_path / "run" / "lmn-run.json").read_text())["files"])
    # generate reads the run's tokenizer
    status, out, err = run_cli(capsys, "generate", "--checkpoint", tmp_path / "run", "--prompt", "héllo",
                               "--tokens", 12, "--seed", 0)
    assert status == 0 and out.startswith("héllo"), err


def test_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    for i in range(5):
        write(tmp_path / "src" / f"{i}.txt", corpus_text(300, seed=i))
    assert run_cli(capsys, "data", "prepare", tmp_path / "src", "--tokenizer", "bpe:300", "--out", tmp_path / "ds",
                   "--shard-tokens", 300, "--val-frac", 0.3)[0] == 0
    common = ["train", "--dataset", tmp_path / "ds", "--eval-interval", 3, "--ckpt-interval", 3, *TINY]
    assert run_cli(capsys, *common, "--out", tmp_path / "full", "--max-iters", 7)[0] == 0
    assert run_cli(capsys, *common, "--out", tmp_path / "cut", "--max-iters", 4)[0] == 0
    status, _, err = run_cli(capsys, "train", "--out", tmp_path / "cut", "--resume", "--max-iters", 7)
    assert status == 0, err
    assert run_records(tmp_path / "cut", "train") == run_records(tmp_path / "full", "train")
    full = {r["step"]: r for r in run_records(tmp_path / "full", "eval")}
    cut = {r["step"]: r for r in run_records(tmp_path / "cut", "eval")}
    assert sorted(full) == [0, 3, 6, 7] and all(cut[s] == full[s] for s in full)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "checkpoints" / "step-00000007" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-00000007" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_dataset_and_accepts_a_moved_one(tmp_path, shakespeare_like, capsys):
    src, ds = shakespeare_like
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--dataset", ds, "--out", run, "--max-iters", 2, *TINY)[0] == 0
    # the same dataset elsewhere: resumes
    shutil.copytree(ds, tmp_path / "moved")
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--dataset", tmp_path / "moved",
                             "--max-iters", 3)
    assert status == 0, err
    # other contents of the source
    write(tmp_path / "other" / "corpus.txt", corpus_text(1500, seed=9))
    prepare([tmp_path / "other" / "corpus.txt"], tmp_path / "ds-other", "bytes")
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--dataset", tmp_path / "ds-other",
                             "--max-iters", 4)
    one_line_error(status, err, "not the one it was trained on", "sources")
    # the same source, another tokenizer
    prepare([src], tmp_path / "ds-char", "char")
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--dataset", tmp_path / "ds-char",
                             "--max-iters", 4)
    one_line_error(status, err, "tokenizer bytes", "vs char")
    # the same source, another split
    prepare([src], tmp_path / "ds-split", "bytes", val_frac=0.2)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--dataset", tmp_path / "ds-split",
                             "--max-iters", 4)
    one_line_error(status, err, "split")
    # the run's dataset (its config names the moved one now) prepared again from changed contents
    src.write_text(corpus_text(1500, seed=4), encoding="utf-8")
    prepare([src], tmp_path / "moved", "bytes", force=True)
    status, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--max-iters", 4)
    one_line_error(status, err, "contents of source")


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    good = write(tmp_path / "good.txt", corpus_text(200))

    def prep(*argv):
        return run_cli(capsys, "data", "prepare", *argv, "--quiet")

    out = ["--out", tmp_path / "ds"]
    one_line_error(*prep(tmp_path / "missing.txt", "--tokenizer", "bytes", *out)[::2], "does not exist")
    write(tmp_path / "empty" / "a.txt", "")
    write(tmp_path / "empty" / "b.txt", "")
    one_line_error(*prep(tmp_path / "empty", "--tokenizer", "bytes", *out)[::2], "no text", "2 empty")
    (tmp_path / "void").mkdir()
    one_line_error(*prep(tmp_path / "void", "--tokenizer", "bytes", *out)[::2], "holds no files")
    one_line_error(*prep(tmp_path / "void", "--tokenizer", "bytes", "--glob", "*.txt", *out)[::2], "matching --glob")
    write(tmp_path / "d.jsonl", '{"text": "fine"}\n{"body": "x", "id": 3}\n')
    one_line_error(*prep(tmp_path / "d.jsonl", "--tokenizer", "bytes", *out)[::2], "d.jsonl line 2", "no field 'text'",
                   "'body'", "--text-field")
    write(tmp_path / "e.jsonl", '{"text": "fine"}\n{"text": 3}\n')
    one_line_error(*prep(tmp_path / "e.jsonl", "--tokenizer", "bytes", *out)[::2], "line 2", "not a string")
    write(tmp_path / "f.jsonl", '{"text": "fine"}\nnot json\n')
    one_line_error(*prep(tmp_path / "f.jsonl", "--tokenizer", "bytes", *out)[::2], "line 2 is not JSON")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(b"ok text " * 20 + b"\xff\xfe")
    one_line_error(*prep(tmp_path / "bin", "--tokenizer", "bytes", *out)[::2], "x.dat is not valid UTF-8", "byte 160")
    one_line_error(*prep(good, "--tokenizer", "words", *out)[::2], "unknown tokenizer")
    one_line_error(*prep(good, "--tokenizer", "bytes", "--val-frac", 1.5, *out)[::2], "--val-frac")
    one_line_error(*prep(good, "--tokenizer", "bytes", "--shard-tokens", 0, *out)[::2], "--shard-tokens")
    one_line_error(*prep(write(tmp_path / "a.txt", "aaaa"), "--tokenizer", "char", *out)[::2], "1 distinct")
    one_line_error(*prep(write(tmp_path / "b.txt", "x"), "--tokenizer", "bytes", "--val-frac", 0.1, *out)[::2],
                   "too short to split")
    one_line_error(*prep(tmp_path / "empty", "--tokenizer", "bytes", "--out", tmp_path / "empty" / "ds")[::2],
                   "inside source folder")
    assert not (tmp_path / "ds").exists()
    # an existing --out
    assert prep(good, "--tokenizer", "bytes", *out)[0] == 0
    one_line_error(*prep(good, "--tokenizer", "bytes", *out)[::2], "--force")
    one_line_error(*prep(good, "--tokenizer", "bytes", "--out", tmp_path / "bin")[::2], "not an lmn dataset")
    assert prep(good, "--tokenizer", "char", *out, "--force")[0] == 0
    # training
    run = ["--out", tmp_path / "run", *TINY]
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "nope", *run)[::2], "not a directory")
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "bin", *run)[::2], "no manifest.json")
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "ds", "--data", good, *run)[::2], "drop --data")
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "ds", "--task", "mqar", *run)[::2], "drop --task")
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "ds", "--task-opt", "tokenizer=bytes",
                            *run)[::2], "no --task-opt")
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "ds", *run[:2], *TINY, "--block-size",
                            400)[::2], "too short")
    shard = tmp_path / "ds" / "val-000000.bin"
    shard.write_bytes(shard.read_bytes()[:-1])
    one_line_error(*run_cli(capsys, "train", "--dataset", tmp_path / "ds", *run)[::2], "val-000000.bin", "damaged")
    assert not (tmp_path / "run").exists()


def test_help(capsys):
    assert run_cli(capsys, "data", "--help")[0] == 0
    assert run_cli(capsys, "data", "prepare", "--help")[0] == 0
    status, _, err = run_cli(capsys, "data")
    one_line_error(status, err, "required")
    status, out, _ = run_cli(capsys, "train", "--help")
    assert status == 0 and "--dataset DIR" in out


# ----------------------------------------------------------------------------- peak RSS
@pytest.mark.slow
def test_training_peak_rss_does_not_grow_with_the_corpus(tmp_path):
    """Training's peak RSS from a 4 MB and a 200 MB dataset (research/dataset_rss.py): the
    same within a few MB, where holding the larger corpus would add 200 MB (uint8) or 1.6 GB
    (int64 ids)."""
    from research.dataset_rss import measure

    small = measure(tmp_path / "small", 4)
    large = measure(tmp_path / "large", 200)
    assert large["train_tokens"] > 40 * small["train_tokens"]
    assert large["train_peak_rss_mib"] - small["train_peak_rss_mib"] < 20, (small, large)
