"""ETTh1 multivariate forecasting as a regression task (issue 11), the standard protocol of
Informer (Zhou et al. 2021), DLinear (Zeng et al. 2023) and PatchTST (Nie et al. 2023).

* data: ``ETTh1.csv`` (``date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT``, 17,420 hourly rows), the
  7 value columns (multivariate, "M");
* split (months of 30 days, 24 rows a day): train rows ``[0, 8640)`` (12 months),
  validation ``[8640 - L, 11520)`` and test ``[11520 - L, 14400)`` (4 months each, each
  starting L rows early so that its first target is the split's first row); rows 14400 on
  are unused, as in the reference code;
* scaling: per-channel mean and standard deviation (population, ddof 0, as sklearn's
  ``StandardScaler``) of the *training rows only*, applied to every split; inputs and
  targets are standardised, and the metrics are on that scale;
* examples: an input window of L = 336 rows (``--task-opt window=``) and the next H rows
  (``--task-opt horizon=``: 96, 192, 336 or 720) of all 7 channels; a split of n rows has
  ``n - L - H + 1`` windows, one per start row;
* batches: ``x (B, L, 7)`` float, ``y (B, H, 7)``; training and the periodic estimate draw
  windows uniformly at random (seeded); the whole-split evaluation covers every **test**
  window once, in order (nothing dropped: the reference code's ``drop_last=True`` test
  loader omits the last partial batch);
* metrics: MSE (the loss) and MAE over every test window, step and channel.

The models are the forecasting kinds of :mod:`lmn.timeseries` (``--model lmn-ts``,
``transformer-ts``, ``mamba2-ts``, ``dlinear``): the task's ``vocab_size`` is their output
table, ``H * 7`` values per window.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from ..data.corpus import DATA_DIR_ENV, CorpusError, NamedCorpus, _download, _verify, cache_dir, sha256_file
from ..validation import check_int
from .base import Batch, Task

ETTH1 = NamedCorpus(
    name="ETTh1",
    filename="ETTh1.csv",
    url="https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv",
    sha256="f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
)
COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
MONTH = 30 * 24  # rows
BORDERS = {"train": (0, 12 * MONTH), "val": (12 * MONTH, 16 * MONTH), "test": (16 * MONTH, 20 * MONTH)}
DEFAULT_BLOCK_SIZE = 512  # TrainConfig's default: taken to mean "not given"


def resolve_csv(spec: str | None) -> Path:
    """The ETTh1 file: an existing path ``spec``; else ``$LMN_DATA_DIR/ETTh1.csv``, the user
    cache, or a download, each checked by sha256 (as :func:`lmn.data.resolve_corpus`)."""
    if spec:
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        raise CorpusError(f"no such file {spec!r} (give the path of ETTh1.csv)")
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]).expanduser() / ETTH1.filename)
    candidates.append(cache_dir() / ETTH1.filename)
    for candidate in candidates:
        if candidate.is_file():
            _verify(candidate, ETTH1)
            return candidate
    try:
        _download(ETTH1, candidates[-1], 30.0)
    except OSError as err:
        raise CorpusError(f"ETTh1.csv not found (looked in {', '.join(map(str, candidates))}) and the download "
                          f"from {ETTH1.url} failed ({err}); pass --task-opt csv=PATH") from None
    return candidates[-1]


def read_values(path: Path) -> Tensor:
    """The 7 value columns of an ETT csv, ``(rows, 7)`` float64, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        if tuple(header[1:]) != COLUMNS:
            raise CorpusError(f"{path}: expected columns date,{','.join(COLUMNS)}, got {','.join(header)}")
        rows = [[float(v) for v in row[1:]] for row in reader if row]
    return torch.tensor(rows, dtype=torch.float64)


def split_rows(split: str, window: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``split``'s windows: inputs start at ``lo``, targets end by ``hi``."""
    lo, hi = BORDERS[split]
    return (lo if split == "train" else lo - window), hi


class ETTh1Task(Task):
    """Multivariate ETTh1 forecasting (see the module docstring)."""

    name = "etth1"
    loss_kind = "regression"
    splits = ("train", "val")
    whole_split = "test"
    record_key = "dataset"

    def __init__(self, csv_path: str | None = None, window: int = 336, horizon: int = 96):
        for what, value in (("window", window), ("horizon", horizon)):
            check_int(f"etth1 task: {what}", value, min=1)
        path = resolve_csv(csv_path)
        values = read_values(path)
        if values.shape[0] < BORDERS["test"][1]:
            raise CorpusError(f"{path}: {values.shape[0]} rows, the protocol needs {BORDERS['test'][1]}")
        train = values[slice(*BORDERS["train"])]
        self.mean = train.mean(0)
        self.std = train.std(0, unbiased=False)
        scaled = ((values - self.mean) / self.std).to(torch.float32)
        self.window, self.horizon, self.n_channels = window, horizon, len(COLUMNS)
        self.series = {}
        for split in BORDERS:
            lo, hi = split_rows(split, window)
            if hi - lo < window + horizon:
                raise ValueError(f"etth1 task: the {split} split ({hi - lo} rows) is shorter than window + horizon")
            self.series[split] = scaled[lo:hi]
        self.seq_len = window
        self.n_outputs = self.n_channels
        self.vocab_size = horizon * self.n_channels  # the forecasting kinds' output table
        self.info = {"name": self.name, "path": str(path), "sha256": sha256_file(path), "rows": values.shape[0],
                     "window": window, "horizon": horizon, "channels": list(COLUMNS),
                     "splits": {s: list(split_rows(s, window)) for s in BORDERS},
                     "windows": {s: self.n_windows(s) for s in BORDERS},
                     "scaler": {"mean": self.mean.tolist(), "std": self.std.tolist()}}

    @classmethod
    def from_config(cls, cfg) -> "ETTh1Task":
        """Options: ``csv`` (path), ``window`` (L, default 336; ``--block-size`` may give it
        too, and must then agree), ``horizon`` (H, default 96)."""
        opts = dict(cfg.task_options)
        unknown = sorted(set(opts) - {"csv", "window", "horizon"})
        if unknown:
            raise ValueError(f"etth1 task: unknown option(s) {', '.join(unknown)} (known: csv, window, horizon)")
        window = int(opts.get("window", cfg.block_size if cfg.block_size != DEFAULT_BLOCK_SIZE else 336))
        if cfg.block_size not in (DEFAULT_BLOCK_SIZE, window):
            raise ValueError(f"etth1 task: --block-size {cfg.block_size} disagrees with window {window}")
        return cls(opts.get("csv"), window, int(opts.get("horizon", 96)))

    def n_windows(self, split: str) -> int:
        return self.series[split].shape[0] - self.window - self.horizon + 1

    def examples(self, split: str, starts: Tensor) -> Batch:
        """The windows starting at ``starts`` (row offsets into ``split``)."""
        series = self.series[split]
        L, H = self.window, self.horizon
        idx = starts[:, None] + torch.arange(L + H)  # (B, L + H)
        seq = series[idx]  # (B, L + H, C)
        return Batch(seq[:, :L], seq[:, L:])

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> Batch:
        starts = torch.randint(self.n_windows(split), (batch_size,), generator=generator)
        return self.examples(split, starts)

    def whole(self, batch_size: int) -> Iterator[Batch]:
        n = self.n_windows(self.whole_split)
        for s in range(0, n, batch_size):
            yield self.examples(self.whole_split, torch.arange(s, min(s + batch_size, n)))

    # ---- metrics: MSE (the loss) and MAE
    def score(self, outputs: Tensor, batch: Batch) -> dict[str, float]:
        diff = outputs[..., : self.n_channels].float() - batch.y.float()
        return {"loss_sum": diff.square().sum().item(), "abs_sum": diff.abs().sum().item(),
                "count": float(diff.numel())}

    def score_keys(self) -> tuple[str, ...]:
        return ("loss_sum", "abs_sum", "count")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        mse, mae = sums["loss_sum"] / sums["count"], sums["abs_sum"] / sums["count"]
        windows = int(round(sums["count"])) // (self.horizon * self.n_channels)
        return {"loss": mse, "mse": mse, "mae": mae, "windows": windows}

    def record(self) -> dict:
        return dict(self.info)

    def check_resume(self, run_dir: Path, saved_record: dict) -> None:
        if saved_record != self.record():
            raise ValueError(f"cannot resume {run_dir}: it was trained on other ETTh1 data or settings")

    def describe(self) -> str:
        return (f"ETTh1 {self.info['path']} (window {self.window}, horizon {self.horizon}, 7 channels, "
                f"{self.n_windows('train'):,} train / {self.n_windows('test'):,} test windows)")
