"""FSDP2: one step with 2 CPU processes (torchrun, gloo, `lmn train --fsdp`) equals the
one-process step on the same global batch; its checkpoint is in the single-process format
(a one-process --resume continues it exactly like the one-process run)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.lmn_testdata import small_corpus

ARGS = ["--preset", "smoke", "--eval-interval", "1", "--eval-iters", "2", "--log-interval", "1",
        "--block-size", "16", "--batch-size", "4", "--threads", "1",
        "--model-opt", "d_model=8", "--model-opt", "n_layers=2", "--model-opt", "n_heads=2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _train(launcher, data, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "lmn.cli", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_records(a_records, b_records):
    for a, b in zip(a_records, b_records, strict=True):
        assert a["type"] == b["type"] and a["step"] == b["step"]
        for key in a:
            if key.endswith("loss") or key.startswith("whole_"):  # only the order of the sums differs
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), (key, a, b)


def _same_weights(run_a, run_b, lr):
    from lmn.trainer import load_run

    w1, w2 = load_run(run_a)[0].state_dict(), load_run(run_b)[0].state_dict()
    assert w1.keys() == w2.keys()
    for name in w1:  # Adam amplifies rounding-level gradients to at most lr per step (see test_ddp)
        assert (w2[name] - w1[name]).abs().max() <= 4 * lr, name


# nanoGPT's optimizer knobs: two parameter groups (re-made over the shards), a global-norm
# clip across shards, a scheduled learning rate (no dropout: its masks follow the process split)
NANO = ["--decay", "matrices", "--weight-decay", "0.1", "--grad-clip", "0.05", "--lr-schedule", "cosine",
        "--warmup-iters", "1", "--lr-decay-iters", "2", "--min-lr", "1e-4"]


@pytest.mark.slow
@pytest.mark.parametrize("opts", [[], NANO], ids=["adamw", "nanogpt-knobs"])
def test_fsdp_step_equals_single_process_step_and_resumes(tmp_path, opts):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (fully_shard) needs torch >= 2.6")
    data = small_corpus(tmp_path)
    single = _train([sys.executable], data, tmp_path / "single", "--max-iters", "2", *opts)
    fsdp = _train(TORCHRUN, data, tmp_path / "fsdp", "--max-iters", "1", "--fsdp", *opts)
    assert json.loads((tmp_path / "fsdp" / "final.json").read_text())["world_size"] == 2
    one = [r for r in single if r["step"] <= 1 and r["type"] != "final"]
    _same_records(one, [r for r in fsdp if r["type"] != "final"])
    if opts:  # the clip was active, and the global norm is the one-process norm
        norms = [(a["grad_norm"], b["grad_norm"]) for a, b in zip(one, fsdp) if a["type"] == "train"]
        assert norms and all(a > 0.05 and b == pytest.approx(a, rel=1e-5) for a, b in norms), norms
    final = [r for r in fsdp if r["type"] == "final"]  # the whole validation split, sharded model in lockstep
    assert final and set(final[0]) > {"type", "step"}

    # the FSDP checkpoint resumes in one process exactly where the one-process run went
    resumed = _train([sys.executable], data, tmp_path / "fsdp", "--max-iters", "2", "--resume", *opts)
    _same_records([r for r in single if r["type"] != "final"], [r for r in resumed if r["type"] != "final"])
    lr = json.loads((tmp_path / "single" / "config.json").read_text())["train"]["lr"]
    _same_weights(tmp_path / "single", tmp_path / "fsdp", lr)


def test_fsdp_needs_several_processes(tmp_path, capsys):
    from lmn.cli import main

    argv = ["train", "--data", str(small_corpus(tmp_path)), "--out", str(tmp_path / "r"), *ARGS, "--fsdp"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "--fsdp shards across processes" in capsys.readouterr().err


def _odd_corpus(tmp_path, n_distinct=59):
    """The small corpus with characters added until it has ``n_distinct`` (odd): the
    embedding and the head then do not split evenly over two processes (Tiny Shakespeare's
    65 do not either; the first 20,000 characters have 58)."""
    text = small_corpus(tmp_path).read_text(encoding="utf-8")
    extra = [c for c in "#%&*+/<>@[]^_{|}~0123456789" if c not in text][: n_distinct - len(set(text))]
    path = tmp_path / "odd.txt"
    path.write_text(text + "".join(extra) * 50, encoding="utf-8")
    assert len(set(path.read_text(encoding="utf-8"))) == n_distinct
    return path


def _tensors(run_dir, step):
    from safetensors.torch import load_file

    from lmn.trainer.rundir import STATE_FILE, list_checkpoints

    (ckpt,) = [c for c in list_checkpoints(run_dir) if c.step == step]
    weights = load_file(str(ckpt.path / "model.safetensors"))
    state = torch.load(ckpt.path / STATE_FILE, weights_only=False)["optimizer"]["state"]
    return weights, state


@pytest.mark.slow
def test_fsdp_odd_vocabulary_checkpoints_in_the_single_process_format_and_resumes(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (fully_shard) needs torch >= 2.6")
    from lmn.trainer import load_run

    data = _odd_corpus(tmp_path)
    single = _train([sys.executable], data, tmp_path / "single", "--max-iters", "2")
    fsdp = _train(TORCHRUN, data, tmp_path / "fsdp", "--max-iters", "1", "--fsdp")
    _same_records([r for r in single if r["step"] <= 1 and r["type"] != "final"],
                  [r for r in fsdp if r["type"] != "final"])
    # the gathered checkpoint: the single-process names, shapes and dtypes, weights and
    # optimizer state alike (59 rows, not the 60 of the padded shards), at step 0 (before
    # any optimizer state) and step 1, against the one-process run's last (step 2)
    w1, s1 = _tensors(tmp_path / "single", 2)
    for step in (0, 1):
        w2, s2 = _tensors(tmp_path / "fsdp", step)
        assert {k: (v.shape, v.dtype) for k, v in w1.items()} == {k: (v.shape, v.dtype) for k, v in w2.items()}
        assert w2["tok_emb.weight"].shape[0] == w2["head.bias"].shape[0] == 59
    assert s1.keys() == s2.keys()
    for i in s1:
        assert {k: (v.shape, v.dtype) for k, v in s1[i].items()} == {k: (v.shape, v.dtype) for k, v in s2[i].items()}
    model, tokenizer, _ = load_run(tmp_path / "fsdp")
    assert tokenizer.vocab_size == 59 and model.tok_emb.weight.shape == (59, 8)

    # resumed under FSDP on two processes: the padded shards are rebuilt from the full state
    resumed = _train(TORCHRUN, data, tmp_path / "fsdp", "--max-iters", "2", "--resume", "--fsdp")
    _same_records([r for r in single if r["type"] != "final"], [r for r in resumed if r["type"] != "final"])
    lr = json.loads((tmp_path / "single" / "config.json").read_text())["train"]["lr"]
    _same_weights(tmp_path / "single", tmp_path / "fsdp", lr)
