"""``lmn train --packing`` (issue 22, item 3): with the dataset task every window carries the
dataset's document starts (``Batch.doc_starts``), so the model reads nothing across a
document boundary; off, windows read across documents as before. Checked here: the batches'
``doc_starts`` against the document offsets read from disk; the loss of a packed batch
against the model run on each document piece alone; training with and without the flag;
``--resume`` keeping it and refusing a change; the refusals (the text task, a kind that
cannot reset)."""

import json
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmn.data.batches import sequential_starts, window_starts
from lmn.tasks.dataset import DatasetTask
from lmn.trainer.evaluation import batch_loss
from lmn.trainer.models import build_model, resolve_model_config
from tests.lmn_testdata import TINY_TRAIN_ARGS, one_line_error, run_cli, run_records

T = 16  # TINY_TRAIN_ARGS' --block-size
TINY = [*TINY_TRAIN_ARGS, "--log-interval", 1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A bytes dataset of 90 short documents (2..11 characters: several per window of 16)."""
    from lmn.cli import main

    root = tmp_path_factory.mktemp("packing")
    rng = random.Random(7)
    for i in range(90):
        text = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(2, 11)))
        (root / "src").mkdir(exist_ok=True)
        (root / "src" / f"{i:03d}.txt").write_text(text.strip() or "x", encoding="utf-8")
    assert main(["data", "prepare", str(root / "src"), "--tokenizer", "bytes", "--out", str(root / "ds"),
                 "--val-frac", "0.3", "--shard-tokens", "100", "--quiet"]) == 0
    return root / "ds"


def on_disk(ds: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's tokens and document offsets read from its files directly (the documented layout)."""
    manifest = json.loads((ds / "manifest.json").read_text())
    rec = manifest["splits"][split]
    tokens = np.concatenate([np.fromfile(ds / s["file"], dtype=manifest["dtype"]) for s in rec["shards"]])
    return tokens.astype(np.int64), np.fromfile(ds / rec["doc_starts"]["file"], dtype="<i8")


def expected_starts(offsets: np.ndarray, starts, length: int) -> torch.Tensor:
    """``(B, length)`` bool: True where a document offset falls inside each window (a set
    lookup, independent of the task's binary search)."""
    marks = set(offsets.tolist())
    return torch.tensor([[s + c in marks for c in range(length)] for s in starts.tolist()], dtype=torch.bool)


# ----------------------------------------------------------------------------- batches
def test_packed_batches_carry_the_datasets_document_starts(dataset):
    packed, plain = DatasetTask(str(dataset), T, packing=True), DatasetTask(str(dataset), T)
    for split in ("train", "val"):
        tokens, offsets = on_disk(dataset, split)
        batch = packed.batch(split, 64, torch.Generator().manual_seed(3))
        starts = window_starts(len(tokens), T, 64, torch.Generator().manual_seed(3))
        assert torch.equal(batch.x, torch.from_numpy(tokens[starts[:, None] + torch.arange(T)]))
        assert torch.equal(batch.y, torch.from_numpy(tokens[starts[:, None] + torch.arange(T) + 1]))
        assert torch.equal(batch.doc_starts, expected_starts(offsets, starts, T))
        assert not set(starts.tolist()) <= set(offsets.tolist())  # windows that start mid-document
        assert batch.doc_starts.sum(1).max() >= 3  # several boundaries in a window
        same = plain.batch(split, 64, torch.Generator().manual_seed(3))  # off: the same windows, no starts
        assert same.doc_starts is None and torch.equal(same.x, batch.x) and torch.equal(same.y, batch.y)
    # the whole-split evaluation: every window, the shorter last one too
    tokens, offsets = on_disk(dataset, "val")
    got = list(packed.whole(5))
    want = list(sequential_starts(len(tokens), T, 5))
    assert len(got) == len(want) and want[-1][1] < T
    for batch, (starts, length) in zip(got, want):
        assert torch.equal(batch.x, torch.from_numpy(tokens[starts[:, None] + torch.arange(length)]))
        assert torch.equal(batch.doc_starts, expected_starts(offsets, starts, length))
    assert all(b.doc_starts is None for b in DatasetTask(str(dataset), T).whole(5))


@pytest.mark.parametrize("kind", ["lmn", "gpt2"])
def test_a_packed_batchs_loss_is_that_of_each_document_piece_alone(dataset, kind):
    if kind == "gpt2":
        pytest.importorskip("transformers")
    task = DatasetTask(str(dataset), T, packing=True)
    torch.manual_seed(0)
    model = build_model(kind, resolve_model_config(kind, {}, task.vocab_size, "tiny"))
    batch = task.batch("train", 6, torch.Generator().manual_seed(1))
    loss = batch_loss(model, task, batch, nullcontext())  # what the trainer computes
    # independently: each row cut at its document starts, each piece run alone (no doc_starts)
    total, count = 0.0, 0
    for r in range(batch.x.shape[0]):
        cuts = sorted({0, *torch.nonzero(batch.doc_starts[r]).flatten().tolist(), T})
        for a, b in zip(cuts, cuts[1:]):
            logits = model(batch.x[r:r + 1, a:b])
            total = total + F.cross_entropy(logits[0], batch.y[r, a:b], reduction="sum")
            count += b - a
    alone = total / count
    assert count == batch.x.numel() and len(cuts) > 3
    torch.testing.assert_close(loss, alone, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    want = torch.autograd.grad(alone, list(model.parameters()))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    unpacked = task.loss(model(batch.x), batch)  # the memory reading across documents: another loss
    assert abs(unpacked.item() - loss.item()) > 1e-4


# ----------------------------------------------------------------------------- training
def test_training_with_and_without_packing(tmp_path, dataset, capsys):
    common = ["train", "--dataset", dataset, *TINY, "--max-iters", 3, "--eval-interval", 3, "--whole-val"]
    status, _, err = run_cli(capsys, *common, "--packing", "--out", tmp_path / "packed")
    assert status == 0, err
    assert "packed: no memory across documents" in err
    status, _, err = run_cli(capsys, *common, "--out", tmp_path / "plain")
    assert status == 0, err
    assert "packed" not in err
    config = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in ("packed", "plain")}
    assert config["packed"]["train"]["packing"] is True and config["plain"]["train"]["packing"] is False
    # the same initial weights and batches; only what each prediction reads differs
    packed, plain = run_records(tmp_path / "packed", "train"), run_records(tmp_path / "plain", "train")
    assert [r["step"] for r in packed] == [r["step"] for r in plain] == [1, 2, 3]
    assert packed[0]["loss"] != plain[0]["loss"]
    finals = [json.loads((tmp_path / name / "final.json").read_text()) for name in ("packed", "plain")]
    assert all(f["whole_val_tokens"] == finals[0]["whole_val_tokens"] for f in finals)  # the same tokens scored
    assert finals[0]["whole_val_loss"] != finals[1]["whole_val_loss"]


def test_resume_keeps_packing_and_refuses_a_change(tmp_path, dataset, capsys):
    common = ["train", "--dataset", dataset, "--packing", "--eval-interval", 2, "--ckpt-interval", 2, *TINY]
    assert run_cli(capsys, *common, "--out", tmp_path / "full", "--max-iters", 4)[0] == 0
    assert run_cli(capsys, *common, "--out", tmp_path / "cut", "--max-iters", 2)[0] == 0
    one_line_error(*run_cli(capsys, "train", "--out", tmp_path / "cut", "--resume", "--no-packing",
                            "--max-iters", 4)[::2], "packing=True (run) vs False (now)")
    status, _, err = run_cli(capsys, "train", "--out", tmp_path / "cut", "--resume", "--max-iters", 4)
    assert status == 0, err
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["packing"] is True
    assert run_records(tmp_path / "cut", "train") == run_records(tmp_path / "full", "train")
    assert run_records(tmp_path / "cut", "eval") == run_records(tmp_path / "full", "eval")
    # an unpacked run cannot be resumed packed either
    plain = ["train", "--dataset", dataset, *TINY, "--max-iters", 2, "--out", tmp_path / "plain"]
    assert run_cli(capsys, *plain)[0] == 0
    one_line_error(*run_cli(capsys, "train", "--out", tmp_path / "plain", "--resume", "--packing",
                            "--max-iters", 4)[::2], "packing=False (run) vs True (now)")


def test_packing_is_refused_where_it_would_do_nothing_or_cannot_be_done(tmp_path, dataset, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    one_line_error(*run_cli(capsys, "train", "--data", corpus, "--packing", *TINY, "--out", tmp_path / "text")[::2],
                   "--packing", "task 'text'", "drop --packing", "--dataset DIR --packing")
    one_line_error(*run_cli(capsys, "train", "--task", "mqar", "--packing", *TINY, "--out",
                            tmp_path / "mqar")[::2], "task 'mqar'")
    assert not (tmp_path / "text").exists() and not (tmp_path / "mqar").exists()

    class NoDocuments(nn.Module):  # a kind whose forward takes no doc_starts
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            return self.inner(idx)

    import lmn.trainer.loop as loop

    real = loop.build_model
    monkeypatch.setattr(loop, "build_model", lambda kind, config: NoDocuments(real(kind, config)))
    one_line_error(*run_cli(capsys, "train", "--dataset", dataset, "--packing", *TINY, "--out",
                            tmp_path / "kind")[::2], "NoDocuments cannot reset", "train 'lmn' without --packing")
    assert not (tmp_path / "kind" / "config.json").exists()  # refused at startup, before the run was written
    status, _, err = run_cli(capsys, "train", "--dataset", dataset, *TINY, "--max-iters", 1, "--out",
                             tmp_path / "kind2")
    assert status == 0, err  # unpacked, the same kind trains


def test_help_says_what_packing_changes(capsys):
    status, out, _ = run_cli(capsys, "train", "--help")
    text = " ".join(out.split())
    assert status == 0 and "--packing, --no-packing" in text
    assert "restarts at each document boundary" in text and "windows read across documents" in text
