"""--early-stop and --keep-best: the run stops after the set number of evaluations without a
better validation estimate, the best weights are kept (RUN/best.safetensors) and used for the
final whole-split evaluation, and a run killed in between resumes to the same end."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from lmn.trainer import TrainConfig, preset_config, train
from tests.lmn_testdata import small_corpus
from tests.trainer.test_train import run_cli, weights

# the validation estimate by step: best at step 2, then no improvement (a tie at step 4)
SCRIPT = {0: 5.0, 1: 4.5, 2: 4.0, 3: 4.2, 4: 4.0, 5: 4.1, 6: 3.0, 7: 2.0}


@pytest.fixture
def scripted_val(monkeypatch):
    """The periodic estimate returns SCRIPT's validation loss (the training loss as computed)."""
    import lmn.trainer.loop as loop

    real = loop.estimate_loss

    def fake(model, task, cfg, step, *args, **kwargs):
        losses = real(model, task, cfg, step, *args, **kwargs)
        return {**losses, "val": SCRIPT[step]}

    monkeypatch.setattr(loop, "estimate_loss", fake)


def _cfg(tmp_path, name, **overrides):
    settings = dict(max_iters=7, eval_interval=1, eval_iters=1, block_size=16, batch_size=2, ckpt_interval=1,
                    model_config={"d_model": 8, "n_layers": 1}, data=str(small_corpus(tmp_path)),
                    out_dir=str(tmp_path / name))
    return preset_config("smoke", **{**settings, **overrides})


def _train(cfg, **kw):
    return train(cfg, stream=open(os.devnull, "w"), **kw)


def test_early_stop_after_patience_evaluations_without_improvement(tmp_path, scripted_val):
    summary = _train(_cfg(tmp_path, "run", early_stop=2))
    # best 4.0 at step 2; steps 3 (4.2) and 4 (4.0, a tie) do not improve: stop at step 4
    assert summary["step"] == 4 and summary["stopped_early"] is True
    assert (summary["best_step"], summary["best_val_loss"]) == (2, 4.0)
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["step"] == 4 and not (tmp_path / "run" / "best.safetensors").exists()
    # patience 4 reaches step 6, whose 3.0 is an improvement: the run goes on to max_iters
    summary = _train(_cfg(tmp_path, "patient", early_stop=4))
    assert summary["step"] == 7 and summary["stopped_early"] is False and summary["best_step"] == 7


def test_keep_best_saves_and_evaluates_the_best_weights(tmp_path, scripted_val):
    summary = _train(_cfg(tmp_path, "best", keep_best=True, max_iters=5))
    assert summary["best_step"] == 2 and summary["whole_split_weights"] == "best (step 2)"
    best = load_file(tmp_path / "best" / "best.safetensors")
    # the same run stopped at step 2 holds the same weights (training is deterministic)
    _train(_cfg(tmp_path, "upto2", max_iters=2))
    at2 = weights(tmp_path / "upto2")
    assert best.keys() == at2.keys() and all(torch.equal(best[k], at2[k]) for k in best)
    last = weights(tmp_path / "best")  # the last checkpoint keeps the last weights (for --resume)
    assert any(not torch.equal(last[k], best[k]) for k in best)
    # the whole-split loss is the best weights' loss: the same as the step-2 run's own
    plain = json.loads((tmp_path / "upto2" / "final.json").read_text())
    assert summary["whole_val_loss"] == pytest.approx(plain["whole_val_loss"], abs=1e-6)
    # lmn wrote it, so --force removes it
    assert run_cli("train", "--out", tmp_path / "best", "--force", "--preset", "smoke", "--max-iters", "0",
                   "--data", small_corpus(tmp_path))[0] == 0
    assert not (tmp_path / "best" / "best.safetensors").exists()


def test_a_killed_run_resumes_to_the_same_stop_and_best(tmp_path, scripted_val):
    full = _train(_cfg(tmp_path, "full", early_stop=3, keep_best=True, max_iters=6))
    _train(_cfg(tmp_path, "cut", early_stop=3, keep_best=True, max_iters=3))  # as if killed after step 3
    resumed = _train(_cfg(tmp_path, "cut", early_stop=3, keep_best=True, max_iters=6), resume=True)
    for key in ("step", "best_step", "best_val_loss", "stopped_early", "whole_val_loss"):
        assert resumed[key] == full[key], key
    assert full["step"] == 5 and full["stopped_early"]
    a, b = (load_file(tmp_path / name / "best.safetensors") for name in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_early_stop_settings_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="early_stop"):
        TrainConfig(early_stop=-1)
    status, _, err = run_cli("train", "--preset", "smoke", "--early-stop", "x", "--out", tmp_path / "r",
                             capsys=capsys)
    assert status == 2 and "--early-stop" in err and "Traceback" not in err
