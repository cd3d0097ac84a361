"""The ETTh1 forecasting study (research/forecast.py) on a fake CSV: equal budgets, the
published figures and replayable commands."""

import json

from research.forecast import main
from tests.tasks.test_etth1 import fake_csv


def test_forecast_runner_reports_equal_budgets(tmp_path):
    path = fake_csv(tmp_path / "ETTh1.csv")
    out = tmp_path / "domains"
    argv = ["--horizons", "24", "--models", "dlinear,dlinear-revin", "--steps", "3", "--batch-size", "4",
            "--eval-interval", "3", "--eval-iters", "1", "--window", "48", "--csv", str(path),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["equal_budgets"] and len(doc["runs"]) == 2 and all(r["finished"] for r in doc["runs"])
    assert doc["runs"][1]["model_config"]["revin"] is True and doc["runs"][0]["model_config"]["input_len"] == 48
    assert doc["published"]["DLinear (Zeng et al. 2023), L 336"]["96"] == {"mse": 0.375, "mae": 0.399}
    assert "--task-opt horizon=24" in out.with_suffix(".md").read_text()
