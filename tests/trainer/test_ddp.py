"""Data parallel: one step with 2 CPU processes (torchrun, gloo) equals the one-process
step on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lmn.trainer import build_model
from tests.lmn_testdata import small_corpus

ARGS = ["--preset", "smoke", "--max-iters", "1", "--eval-interval", "1", "--eval-iters", "2", "--log-interval", "1",
        "--block-size", "16", "--batch-size", "4", "--no-whole-val", "--threads", "1",
        "--model-opt", "d_model=8", "--model-opt", "n_layers=2", "--model-opt", "n_heads=2"]


def _train(launcher, data, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "lmn.cli", "train", "--data", str(data), "--out", str(out), *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_step_equals_single_process_step(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from safetensors.torch import load_file

    data = small_corpus(tmp_path)
    single = _train([sys.executable], data, tmp_path / "single")
    ddp = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                 data, tmp_path / "ddp")
    assert json.loads((tmp_path / "ddp" / "final.json").read_text())["world_size"] == 2
    for a, b in zip(single, ddp, strict=True):
        assert a["type"] == b["type"] and a["step"] == b["step"]
        for key in ("loss", "train_loss", "val_loss"):
            if key in a:  # same global batch; only the order of the gradient/loss sums differs
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), (a, b)

    # Weights after the step. Adam's first update is lr * g / (|g| + eps): entries whose
    # gradient is at rounding-noise level (e.g. a query bias, to which softmax is nearly
    # blind) amplify the different summation order, so compare the entries the gradient
    # really drives -- those that moved by the full lr -- and require them to be most.
    config = json.loads((tmp_path / "single" / "config.json").read_text())["train"]
    torch.manual_seed(config["seed"])
    w0 = build_model("lmn", config["model_config"]).state_dict()
    from lmn.trainer import newest_checkpoint

    w1 = load_file(newest_checkpoint(tmp_path / "single", need_state=False).path / "model.safetensors")
    w2 = load_file(newest_checkpoint(tmp_path / "ddp", need_state=False).path / "model.safetensors")
    assert w1.keys() == w2.keys()
    lr, wd = config["lr"], config["weight_decay"]
    driven = total = 0
    for name in w1:
        step = w1[name] - w0[name] * (1 - lr * wd)  # -lr * m / (sqrt(v) + eps)
        mask = step.abs() > 0.99 * lr
        driven, total = driven + int(mask.sum()), total + mask.numel()
        torch.testing.assert_close(w2[name][mask], w1[name][mask], rtol=0, atol=1e-6, msg=name)
        assert (w2[name] - w1[name]).abs().max() <= 2 * lr
    assert driven > 0.9 * total
