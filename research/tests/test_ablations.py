"""The ablation runner (issue 11): every arm trains through the shared trainer with the
same budget, the JSON records each run's budget from its own config.json, and the
markdown/plot render from it; finished arms are skipped on a rerun."""

import json

from lmn.trainer import TrainConfig
from research.ablations import ARMS, main
from research.arms import command_line
from tests.lmn_testdata import small_corpus


def test_runner_trains_arms_with_one_budget_and_reports(tmp_path, capsys):
    data = small_corpus(tmp_path)
    out = tmp_path / "docs" / "ablations"
    argv = ["--steps", "2", "--batch-size", "2", "--block-size", "16", "--eval-interval", "2", "--eval-iters", "1",
            "--seeds", "1,2", "--arms", "baseline,stride3-digits", "--data", str(data),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["equal_budgets"] is True and [r["arm"] for r in doc["arms"]] == ["baseline", "stride3-digits"]
    runs = [run for r in doc["arms"] for run in r["runs"]]
    assert len(runs) == 4 and all(run["finished"] for run in runs)
    assert {json.dumps(run["budget"], sort_keys=True) for run in runs} == {json.dumps(runs[0]["budget"], sort_keys=True)}
    assert runs[0]["budget"]["max_iters"] == 2 and runs[0]["budget"]["block_size"] == 16
    arm = doc["arms"][1]
    assert arm["runs"][0]["model_config"]["stride"] == 3 and arm["runs"][0]["model_config"]["read"] == "digits"
    assert arm["n_seeds"] == 2 and arm["whole_val_loss"] > 0 and "delta_vs_baseline" in arm
    md = out.with_suffix(".md").read_text()
    assert "| stride3-digits |" in md and out.with_suffix(".png").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # a rerun trains nothing
    assert capsys.readouterr().err.count("[skip]") == 4


def test_arms_change_one_thing_each_and_commands_replay():
    names = [a[0] for a in ARMS]
    assert len(set(names)) == len(names) and ARMS[0][3] == {}
    assert all(len(o) <= 2 for _, _, _, o in ARMS)
    cfg = TrainConfig(model="lmn", model_config={"stride": 3, "read": "digits"}, max_iters=300, block_size=256,
                      out_dir="runs/x")
    cmd = command_line(cfg)
    assert "--max-iters 300" in cmd and "--model-opt stride=3" in cmd and "--model-opt read=digits" in cmd
