"""UCR univariate time-series classification (issue 22, item 5): the UCR archive's sets that
the ``aeon`` and ``sktime`` wheels ship, with their standard TRAIN/TEST splits, as token
sequences classified at the last position (:mod:`lmn.tasks.classification`).

Data (Dau et al. 2019, "The UCR Time Series Archive", arXiv 1810.07758; files in the
``.ts`` format of timeseriesclassification.com). The longest equal-length univariate sets
inside ``aeon`` 1.6.0 (``aeon/datasets/data/NAME/NAME_{TRAIN,TEST}.ts``; ``sktime`` 1.2.0's
``sktime/datasets/data/`` holds byte-identical copies of these three):

==========  =======  =====  ======  =======
set         length   train  test    classes
==========  =======  =====  ======  =======
ACSF1       1,460    100    100     10
OSULeaf     427      200    242     6
ArrowHead   251      36     175     3
==========  =======  =====  ======  =======

(the others they ship are shorter -- GunPoint 150, ItalyPowerDemand 24 -- multivariate,
unequal-length or regression sets). ``--task-opt set=NAME`` picks one (default ACSF1); any
univariate, equal-length set in the folder works.

Where the files are found: ``--task-opt path=DIR`` (a folder holding ``NAME_TRAIN.ts`` or
``NAME/NAME_TRAIN.ts``), else ``$LMN_UCR_DIR`` (the same), else the data folder of an
installed ``aeon``, else of ``sktime`` -- located with ``importlib.util.find_spec``, so
neither package is imported (nor needed by ``import lmn``): ``pip install "torch-lmn[ucr]"``
installs aeon. The run records the sha256 of both files.

* **parsing** (:func:`read_ts`, no dependency): ``#`` comments, ``@`` header lines
  (``@classLabel true L1 L2 ...`` gives the class names, in order: class id i is the i-th
  name), then one series a line, ``v1,v2,...,vT:label``; refused with a one-line error:
  multivariate (several ``:``-separated dimensions), unequal lengths, missing values
  (``?`` / NaN), a label not in the header, a TEST length other than TRAIN's;
* **values to tokens** (the token kinds apply; the value-input kinds of
  :mod:`lmn.timeseries` are forecasters, regression heads with no class readout): each
  series is z-normalised on its own (mean and population std over its T values; a constant
  series becomes zeros), then cut into ``levels`` uniform bins over ``[-clip, clip]``:
  token = ``clamp(floor((z + clip) / (2 clip) * levels), 0, levels - 1)`` (values beyond
  ``clip`` standard deviations fall in the end bins). Defaults: ``levels=64``, ``clip=3``
  (a bin is 0.094 std wide; fewer levels than Fashion-MNIST's 256 because each level's
  embedding is learned from 36-200 training series); ``vocab_size = max(levels, classes)``;
* **splits**: ``test`` is the shipped TEST file; ``val`` is carved from TRAIN per class
  (:func:`lmn.tasks.classification.stratified_split`, ``val_frac`` default 0.1, at least one
  training example kept per class, seeded by ``split_seed``, default 0). ``val_frac=0``
  trains on all of TRAIN, as the published numbers do (the ``val`` estimate is then on
  training examples).

Published 1-NN accuracies for the same splits (the archive's DataSummary.csv) are in
``docs/results/real_data.md`` ("Long-range classification: the data"): ACSF1 0.54 (ED),
0.62 (DTW, learned window), 0.64 (full DTW); OSULeaf 0.52, 0.61, 0.59; ArrowHead 0.80, 0.80,
0.70. Settings that differ: 1-NN uses the real values and all of TRAIN.

Options: ``set``, ``path``, ``levels`` (2-256), ``clip`` (> 0), ``val_frac``, ``split_seed``.
``--block-size`` may be left out (or must equal the set's length).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import torch

from ..data.corpus import CorpusError, sha256_file
from ..validation import check_int
from .classification import FixedClassificationTask, block_size_for, check_val_frac

ENV = "LMN_UCR_DIR"
PACKAGES = ("aeon", "sktime")  # whose wheels ship <package>/datasets/data/NAME/NAME_{TRAIN,TEST}.ts
SETS = {"ACSF1": (1460, 100, 100, 10), "OSULeaf": (427, 200, 242, 6), "ArrowHead": (251, 36, 175, 3)}
MISSING_HINT = (f'pip install "torch-lmn[ucr]" (aeon ships ACSF1, OSULeaf, ArrowHead), set {ENV} to a folder of '
                "NAME_TRAIN.ts / NAME_TEST.ts files, or pass --task-opt path=DIR")


def read_ts(path: Path) -> tuple[list[list[float]], list[str], list[str]]:
    """``(series, labels, class_names)`` of a univariate ``.ts`` classification file.

    Raises:
        CorpusError: one line naming the file, the line and what is wrong.
    """
    class_names: list[str] | None = None
    series, labels = [], []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if not in_data:
                if not text.startswith("@"):
                    raise CorpusError(f"{path}:{number}: expected an @ header line before @data, got {text[:40]!r}")
                key, _, rest = text[1:].partition(" ")
                key, words = key.lower(), rest.split()
                if key == "data":
                    in_data = True
                elif key == "classlabel":
                    if not words or words[0].lower() != "true" or len(words) < 2:
                        raise CorpusError(f"{path}:{number}: not a classification file (@classLabel {rest})")
                    class_names = words[1:]
                elif key == "univariate" and words and words[0].lower() == "false":
                    raise CorpusError(f"{path}: a multivariate set; the ucr task reads univariate ones")
                continue
            values, sep, label = text.rpartition(":")
            if not sep:
                raise CorpusError(f"{path}:{number}: expected v1,v2,...:label")
            if ":" in values:
                raise CorpusError(f"{path}:{number}: several dimensions; the ucr task reads univariate sets")
            try:
                row = [float(v) for v in values.split(",")]
            except ValueError:
                raise CorpusError(f"{path}:{number}: a value that is not a number (missing values '?' are not "
                                  "supported)") from None
            if not all(math.isfinite(v) for v in row):
                raise CorpusError(f"{path}:{number}: a missing or infinite value")
            series.append(row)
            labels.append(label.strip())
    if class_names is None:
        raise CorpusError(f"{path}: no @classLabel true ... header line (not a classification .ts file)")
    if not series:
        raise CorpusError(f"{path}: no series after @data")
    lengths = {len(s) for s in series}
    if len(lengths) != 1:
        raise CorpusError(f"{path}: series of unequal lengths ({min(lengths)}-{max(lengths)}); the ucr task reads "
                          "equal-length sets")
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise CorpusError(f"{path}: label(s) {', '.join(unknown[:3])} not in its @classLabel list {class_names}")
    return series, labels, class_names


def quantize(values: torch.Tensor, levels: int, clip: float) -> torch.Tensor:
    """``(N, T)`` float64 series -> uint8 tokens: per-series z-normalisation, then ``levels``
    uniform bins over ``[-clip, clip]`` (the module docstring)."""
    mean = values.mean(1, keepdim=True)
    std = values.std(1, unbiased=False, keepdim=True)
    z = torch.where(std > 0, (values - mean) / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(values))
    bins = torch.floor((z + clip) / (2 * clip) * levels)
    return bins.clamp(0, levels - 1).to(torch.uint8)


def package_data_dirs() -> list[Path]:
    """The ``datasets/data`` folders of the installed packages in :data:`PACKAGES` (not imported)."""
    out = []
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            out.append(Path(location) / "datasets" / "data")
    return out


def find_set(folder: Path, name: str) -> tuple[Path, Path] | None:
    for base in (folder / name, folder):
        train, test = base / f"{name}_TRAIN.ts", base / f"{name}_TEST.ts"
        if train.is_file() and test.is_file():
            return train, test
    return None


def resolve_set(name: str, spec: str | None) -> tuple[Path, Path]:
    """``(TRAIN file, TEST file)`` of set ``name`` (see the module docstring for where).

    Raises:
        CorpusError: one line naming where it looked and the install command.
    """
    if spec:
        candidates = [Path(str(spec)).expanduser()]
    else:
        candidates = [Path(os.environ[ENV]).expanduser()] if os.environ.get(ENV) else []
        candidates += package_data_dirs()
    for folder in candidates:
        found = find_set(folder, name)
        if found:
            return found
    looked = ", ".join(map(str, candidates)) or f"no {ENV}, no aeon or sktime installed"
    raise CorpusError(f"UCR set {name!r} not found ({name}_TRAIN.ts and {name}_TEST.ts; looked in {looked}): "
                      f"{MISSING_HINT}")


class UCRTask(FixedClassificationTask):
    """A UCR univariate classification set as token sequences (see the module docstring)."""

    name = "ucr"
    bucket_name = "class"

    def __init__(self, set_name: str = "ACSF1", path: str | None = None, levels: int = 64, clip: float = 3.0,
                 val_frac: float = 0.1, split_seed: int = 0, block_size: int | None = None):
        check_int("ucr task: levels", levels, min=2, max=256)
        check_int("ucr task: split_seed", split_seed, min=0)
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"ucr task: clip must be a number > 0 (standard deviations), got {clip!r}")
        val_frac = check_val_frac(self.name, val_frac)
        set_name = str(set_name)
        train_path, test_path = resolve_set(set_name, path)
        train_series, train_labels, class_names = read_ts(train_path)
        test_series, test_labels, test_classes = read_ts(test_path)
        if test_classes != class_names:
            raise CorpusError(f"{test_path}: classes {test_classes} differ from {train_path.name}'s {class_names}")
        if len(test_series[0]) != len(train_series[0]):
            raise CorpusError(f"{test_path}: series of length {len(test_series[0])}, TRAIN's are {len(train_series[0])}")
        length = len(train_series[0])
        if block_size is not None:
            block_size_for(self.name, block_size, length)
        self.set_name, self.levels, self.clip = set_name, int(levels), float(clip)
        self.class_names = tuple(class_names)
        self.n_classes = len(class_names)
        self.vocab_size = max(self.levels, self.n_classes)
        ids = {c: i for i, c in enumerate(class_names)}

        def tokens(series):
            return quantize(torch.tensor(series, dtype=torch.float64), self.levels, self.clip)

        def label_ids(labels):
            return torch.tensor([ids[c] for c in labels], dtype=torch.int64)

        self.set_data(tokens(train_series), label_ids(train_labels), tokens(test_series), label_ids(test_labels),
                      val_frac, split_seed)
        self.info = {"name": self.name, "set": set_name, "files": [str(train_path), str(test_path)],
                     "sha256": {train_path.name: sha256_file(train_path), test_path.name: sha256_file(test_path)},
                     "seq_len": length, "levels": self.levels, "clip": self.clip, "vocab_size": self.vocab_size,
                     "quantisation": "per-series z-normalisation, uniform bins over [-clip, clip]",
                     "classes": list(class_names),
                     "shipped": {"train": len(train_series), "test": len(test_series)}, "splits": self.split_info()}

    @classmethod
    def from_config(cls, cfg) -> "UCRTask":
        opts = dict(cfg.task_options)
        known = {"set", "path", "levels", "clip", "val_frac", "split_seed"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"ucr task: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(opts.get("set", "ACSF1"), opts.get("path"), opts.get("levels", 64), opts.get("clip", 3.0),
                   opts.get("val_frac", 0.1), opts.get("split_seed", 0), block_size=cfg.block_size)

    def describe(self) -> str:
        s = self.info["splits"]
        return (f"UCR {self.set_name} (T {self.seq_len}, {self.n_classes} classes, {self.levels} levels; "
                f"{s['train']:,} train / {s['val']:,} val / {s['test']:,} test)")


__all__ = ["ENV", "SETS", "UCRTask", "package_data_dirs", "quantize", "read_ts", "resolve_set"]
