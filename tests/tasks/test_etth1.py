"""ETTh1 (issue 11): the split and scaling recomputed from the CSV by hand, the metrics,
the forecasting kinds' contract, and 2-step runs through the shared trainer."""

import csv
import json
import math
import os
import statistics
import warnings
from pathlib import Path

import pytest
import torch

from lmn.kinds import get_kind
from lmn.tasks import make_task
from lmn.tasks.etth1 import ETTh1Task
from lmn.timeseries import TS_KINDS
from lmn.timeseries.dlinear import moving_average
from lmn.trainer import TrainConfig, train

HEADER = ["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
REAL = Path(os.environ.get("LMN_DATA_DIR", "/nonexistent")) / "ETTh1.csv"


def fake_csv(path: Path, rows: int = 14_500) -> Path:
    """A deterministic stand-in with ETTh1's columns: channel c at row r = sin(r / (c + 3)) * (c + 1) + c + r / 1000."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for r in range(rows):
            w.writerow([f"row{r}", *(repr(math.sin(r / (c + 3)) * (c + 1) + c + r / 1000) for c in range(7))])
    return path


def raw_rows(path: Path) -> list[list[float]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == HEADER
        return [[float(v) for v in row[1:]] for row in reader]


def check_against_csv(task: ETTh1Task, path: Path, window: int, horizon: int) -> None:
    """Independently of lmn.tasks.etth1: the scaler from the first 8,640 rows (population
    std), and a few windows of each split against the raw rows."""
    rows = raw_rows(path)
    cols = list(zip(*rows[:8640]))
    mean = [statistics.fmean(c) for c in cols]
    std = [statistics.pstdev(c) for c in cols]
    assert torch.allclose(task.mean, torch.tensor(mean, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.allclose(task.std, torch.tensor(std, dtype=torch.float64), rtol=1e-10)

    def scaled(r):
        return torch.tensor([(rows[r][c] - mean[c]) / std[c] for c in range(7)], dtype=torch.float32)

    # first input row of each split's first window, first target row, last target row of the last window
    expect = {"train": (0, 12 * 720, 8640), "val": (8640 - window, 8640, 11520), "test": (11520 - window, 11520, 14400)}
    for split, (first_in, first_target, end) in expect.items():
        n = end - first_in - window - horizon + 1
        assert task.n_windows(split) == n
        first = task.examples(split, torch.tensor([0]))
        last = task.examples(split, torch.tensor([n - 1]))
        assert first.x.shape == (1, window, 7) and first.y.shape == (1, horizon, 7)
        assert torch.allclose(first.x[0, 0], scaled(first_in), atol=1e-6)
        assert torch.allclose(first.x[0, -1], scaled(first_in + window - 1), atol=1e-6)
        if split != "train":
            assert torch.allclose(first.y[0, 0], scaled(first_target), atol=1e-6)
        assert torch.allclose(last.y[0, -1], scaled(end - 1), atol=1e-6)
        mid = n // 2  # a window in the middle: input rows and target rows
        b = task.examples(split, torch.tensor([mid]))
        assert torch.allclose(b.x[0, 5], scaled(first_in + mid + 5), atol=1e-6)
        assert torch.allclose(b.y[0, 3], scaled(first_in + mid + window + 3), atol=1e-6)


def test_split_and_scaling_on_a_fake_csv(tmp_path):
    path = fake_csv(tmp_path / "ETTh1.csv")
    task = ETTh1Task(str(path), window=48, horizon=24)
    check_against_csv(task, path, 48, 24)
    assert task.vocab_size == 24 * 7 and task.seq_len == 48 and task.n_outputs == 7


@pytest.mark.skipif(not REAL.is_file(), reason="ETTh1.csv not in $LMN_DATA_DIR")
def test_split_and_scaling_of_the_real_etth1():
    task = ETTh1Task(str(REAL), window=336, horizon=96)
    check_against_csv(task, REAL, 336, 96)
    assert task.info["windows"] == {"train": 8209, "val": 2785, "test": 2785}  # DLinear's loader: 8209/2785/2785
    assert [len(task.series[s]) for s in ("train", "val", "test")] == [8640, 3216, 3216]


def test_metrics_are_mse_and_mae_over_every_test_window(tmp_path):
    task = ETTh1Task(str(fake_csv(tmp_path / "e.csv")), window=40, horizon=8)
    gen = torch.Generator().manual_seed(0)
    sq = ab = n = 0.0
    sums = {k: 0.0 for k in task.score_keys()}
    for batch in task.whole(100):
        pred = torch.randn(batch.y.shape, generator=gen)
        for k, v in task.score(pred, batch).items():
            sums[k] += v
        d = (pred - batch.y).double()
        sq, ab, n = sq + float((d * d).sum()), ab + float(d.abs().sum()), n + d.numel()
    m = task.summarize(sums)
    assert m["windows"] == task.n_windows("test") == 2880 + 40 - 40 - 8 + 1
    assert m["mse"] == m["loss"] and math.isclose(m["mse"], sq / n, rel_tol=1e-6)
    assert math.isclose(m["mae"], ab / n, rel_tol=1e-6)
    # the training loss is the same MSE
    batch = task.batch("train", 4, gen)
    pred = torch.randn(batch.y.shape, generator=gen)
    assert torch.isclose(task.loss(pred, batch), ((pred - batch.y) ** 2).mean())


def _build(name, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kind = get_kind(name)
        return kind.build({**kind.size_config("tiny"), "vocab_size": 12 * 7, **config})


@pytest.mark.parametrize("name", TS_KINDS)
def test_forecasting_kinds_contract(name):
    torch.manual_seed(0)
    extra = {"input_len": 40} if name == "dlinear" else {}
    model = _build(name, **extra)
    x = torch.randn(3, 40, 7)
    y = model(x)
    assert y.shape == (3, 12, 7)
    with pytest.raises(ValueError, match="float"):
        model(torch.randint(5, (3, 40)))
    # with instance normalisation, the forecast follows an affine change of each window
    model = _build(name, revin=True, **extra)
    a, b = 3.0, -2.0
    assert torch.allclose(model(a * x + b), a * model(x) + b, atol=1e-3)
    with pytest.raises(ValueError, match="horizon"):
        _build(name, vocab_size=13, **extra)


def test_lmn_ts_uses_lmns_blocks_and_sizes():
    kind = get_kind("lmn-ts")
    model = kind.build(kind.size_config("paper"))
    n = sum(p.numel() for p in model.backbone.parameters())
    assert n == 71_489 - (65 * 32) - (32 * 65 + 65)  # the Table 1 LMN without its token table and head
    assert sum(p.numel() for p in model.parameters()) == 89_696
    dl = get_kind("dlinear").build(get_kind("dlinear").size_config("paper"))
    assert sum(p.numel() for p in dl.parameters()) == 2 * (336 * 96 + 96)


def test_dlinear_moving_average_matches_the_reference_padding():
    x = torch.randn(2, 30, 3)
    k, pad = 5, 2
    padded = torch.cat([x[:, :1].repeat(1, pad, 1), x, x[:, -1:].repeat(1, pad, 1)], dim=1)
    naive = torch.stack([padded[:, t : t + k].mean(1) for t in range(30)], dim=1)
    assert torch.allclose(moving_average(x, k), naive, atol=1e-6)


@pytest.mark.parametrize("name", TS_KINDS)
def test_two_steps_through_the_trainer(tmp_path, name):
    path = fake_csv(tmp_path / "ETTh1.csv")
    opts = {"input_len": 48} if name == "dlinear" else {}
    cfg = TrainConfig(model=name, model_size="tiny", model_config=opts, task="etth1",
                      task_options={"csv": str(path), "window": 48, "horizon": 24}, out_dir=str(tmp_path / "run"),
                      batch_size=4, max_iters=2, eval_interval=2, eval_iters=1, ckpt_interval=2, log_interval=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(cfg, stream=open(os.devnull, "w"))
    assert summary["step"] == 2 and summary["whole_test_windows"] == 2880 + 48 - 48 - 24 + 1
    assert summary["whole_test_mse"] == summary["whole_test_loss"] and summary["whole_test_mae"] > 0
    record = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert record["window"] == 48 and record["horizon"] == 24 and record["splits"]["test"] == [11520 - 48, 14400]
    assert make_task(cfg).vocab_size == 24 * 7


def test_bad_options_are_clear():
    cfg = TrainConfig(model="dlinear", task="etth1", task_options={"horizn": 96})
    with pytest.raises(ValueError, match="unknown option"):
        make_task(cfg)
    cfg = TrainConfig(model="dlinear", task="etth1", block_size=100, task_options={"window": 336})
    with pytest.raises(ValueError, match="disagrees"):
        make_task(cfg)

