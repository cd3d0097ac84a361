"""The task seam: a masked toy task (classification on chosen positions, three splits)
trains through the same trainer as the corpus, with any model kind; the losses score only
the masked positions."""

import json
import math
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lmn.tasks import Batch, Task, make_task, register_task, task_names
from lmn.tasks.losses import regression_loss, regression_sums, token_loss, token_sums
from lmn.trainer import TrainConfig, train


class EchoEveryK(Task):
    """Random ids; at every ``every``-th position the class is the id at that position
    (an echo any model learns in a few steps); the other positions are not scored."""

    name = "toy-echo"
    loss_kind = "classification"
    splits = ("train", "val", "test")
    whole_split = "test"

    def __init__(self, vocab: int, seq_len: int, every: int):
        self.vocab_size, self.seq_len, self.every = vocab, seq_len, every

    @classmethod
    def from_config(cls, cfg):
        opts = {"vocab": 8, "every": 4, **cfg.task_options}
        return cls(opts["vocab"], cfg.block_size, opts["every"])

    def batch(self, split, batch_size, generator):
        x = torch.randint(self.vocab_size, (batch_size, self.seq_len), generator=generator)
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, self.every - 1 :: self.every] = True
        return Batch(x, x.clone(), mask)

    def whole(self, batch_size):
        generator = torch.Generator().manual_seed(0)  # a fixed test set
        for _ in range(3):
            yield self.batch("test", batch_size, generator)

    def record(self):
        return {"name": self.name, "vocab": self.vocab_size, "every": self.every}


class ParityOfEven(Task):
    """Regression: at even positions, the value is 1 where the id is odd and -1 where it is
    even; odd positions are not scored."""

    name = "toy-parity"
    loss_kind = "regression"
    n_outputs = 1

    def __init__(self, seq_len: int):
        self.vocab_size, self.seq_len = 6, seq_len

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.block_size)

    def batch(self, split, batch_size, generator):
        x = torch.randint(self.vocab_size, (batch_size, self.seq_len), generator=generator)
        y = (x % 2 * 2 - 1).float()[..., None]  # (B, T, 1)
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, ::2] = True
        return Batch(x, y, mask)


register_task("toy-echo", EchoEveryK)
register_task("toy-parity", ParityOfEven)


def toy_config(out, **overrides):
    values = dict(task="toy-echo", out_dir=str(out), block_size=16, batch_size=8, max_iters=30, eval_interval=15,
                  eval_iters=2, log_interval=5, ckpt_interval=15, lr=1e-2)
    return TrainConfig(**{**values, **overrides})


def _run(tmp_path, model, model_config, name="run", **overrides):
    cfg = toy_config(tmp_path / name, model=model, model_config=model_config, **overrides)
    summary = train(cfg, stream=open(os.devnull, "w"))
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return summary, [json.loads(line) for line in lines]


@pytest.mark.parametrize("model, model_config", [
    ("lmn", {"d_model": 16, "n_layers": 1, "n_heads": 2}),
    ("gpt2", {"n_embd": 16, "n_layer": 1, "n_head": 2, "n_inner": 32, "n_positions": 16}),
])
def test_masked_toy_task_trains_through_the_trainer(tmp_path, model, model_config):
    summary, records = _run(tmp_path, model, model_config)
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert {"train_loss", "val_loss", "test_loss"} <= set(evals[0])
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # from ~ln 8 = 2.08
    # the whole-split pass covers the fixed test set: 3 batches x 8 rows x 4 scored positions
    assert summary["whole_test_count"] == 3 * 8 * 4 and 0 <= summary["whole_test_accuracy"] <= 1
    assert summary["final_test_loss"] == evals[-1]["test_loss"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == {"name": "toy-echo", "vocab": 8, "every": 4}
    assert config["train"]["model_config"]["vocab_size"] == 8
    assert not (tmp_path / "run" / "tokenizer.json").exists()


def test_regression_toy_task_trains(tmp_path):
    cfg = toy_config(tmp_path / "reg", task="toy-parity", model_config={"d_model": 16, "n_layers": 1, "n_heads": 2})
    summary = train(cfg, stream=open(os.devnull, "w"))
    evals = [json.loads(line) for line in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]  # mean squared error from ~1
    assert "whole_val_loss" not in summary  # this task has no whole-split evaluation


def test_toy_task_resumes_exactly(tmp_path):
    opts = {"d_model": 8, "n_layers": 1, "n_heads": 2}
    _, full = _run(tmp_path, "lmn", opts, "full")
    cfg = toy_config(tmp_path / "cut", model_config=opts, max_iters=15)
    train(cfg, stream=open(os.devnull, "w"))
    train(replace(cfg, max_iters=30), resume=True, stream=open(os.devnull, "w"))
    cut = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    def losses(records):
        return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]

    assert losses(cut) == losses(full) and len(losses(full)) == 6


def test_task_registry():
    assert task_names()[0] == "text" and "toy-echo" in task_names()
    with pytest.raises(ValueError, match="unknown task 'nope'.*text"):
        make_task(TrainConfig(task="nope"))
    with pytest.raises(ValueError, match="built in"):
        register_task("text", EchoEveryK)
    with pytest.raises(ValueError, match=r"unknown option\(s\) of the text task: x \(it takes tokenizer=SPEC\)"):
        make_task(TrainConfig(task_options={"x": 1}))


# ----------------------------------------------------------------------------- losses
def test_token_loss_scores_only_masked_positions():
    logits, y = torch.randn(2, 5, 7), torch.randint(7, (2, 5))
    mask = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    expected = F.cross_entropy(logits[mask], y[mask])
    assert torch.allclose(token_loss(logits, y, mask), expected)
    y2 = torch.where(mask, y, (y + 1) % 7)  # other targets at unscored positions: same loss
    assert token_loss(logits, y2, mask) == token_loss(logits, y, mask)
    # no mask: the paper's next-token loss, computed exactly as it always was
    assert torch.equal(token_loss(logits, y), F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1)))
    sums = token_sums(logits, y, mask)
    assert sums["count"] == 3 and math.isclose(sums["loss_sum"] / 3, expected.item(), rel_tol=1e-6)
    assert sums["correct"] == (logits[mask].argmax(-1) == y[mask]).sum().item()


def test_regression_loss_reads_the_first_outputs():
    outputs, y = torch.randn(2, 4, 6), torch.randn(2, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    expected = (outputs[..., :2][mask] - y[mask]).square().mean()
    assert torch.allclose(regression_loss(outputs, y, mask), expected)
    assert torch.allclose(regression_loss(outputs, y), (outputs[..., :2] - y).square().mean())
    sums = regression_sums(outputs, y, mask)
    assert sums["count"] == 3 * 2 and math.isclose(sums["loss_sum"] / 6, expected.item(), rel_tol=1e-6)
