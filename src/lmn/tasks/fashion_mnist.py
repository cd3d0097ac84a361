"""Sequential Fashion-MNIST: each image read pixel by pixel as one sequence, classified at
the last position (issue 22, item 5), as the Long Range Arena's Image task reads CIFAR-10
(Tay et al. 2020, arXiv 2011.04006, Sec. 2.2.4: greyscale, 1,024 tokens of 256 levels).

Data: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv 1708.07747): 28 x 28 greyscale
images of 10 clothing classes, 60,000 training and 10,000 test images, 6,000 / 1,000 per
class, in the four IDX files that Debian's ``dataset-fashion-mnist`` installs in
``/usr/share/datasets/fashion-mnist/`` (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``).
The folder is ``--task-opt path=DIR``, else ``$LMN_FASHION_MNIST_DIR``, else Debian's; a
file may be gzipped (``NAME.gz``) or not (``NAME``). Debian recompressed the files (their
gzip bytes differ from upstream's, whose md5 the upstream README lists); the label files'
contents equal upstream's, and the run records the sha256 of every file it read.

* **parsing** (:func:`read_idx`, numpy only): big-endian magic ``0x00000803`` (unsigned
  bytes, 3 dimensions: N, rows, cols) for images and ``0x00000801`` (1 dimension: N) for
  labels, the file size checked against the header (16 + N*rows*cols and 8 + N bytes), the
  image and label counts equal, labels in ``[0, 10)``;
* **sequence**: the image in row-major order (row 0 left to right, then row 1, ...), T =
  rows * cols = **784** tokens; pixel intensity p in 0-255 is token ``p * levels // 256``
  (``--task-opt levels=``, default 256: the raw intensity, no quantisation, as LRA);
  ``vocab_size = max(levels, 10)``; the class (0-9, the label ids of the upstream README:
  T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot) is
  predicted at position 783 over the same table (as :mod:`lmn.tasks.listops`);
* **splits**: ``test`` is the shipped 10,000; ``val`` is carved from the shipped 60,000 by
  :func:`lmn.tasks.classification.stratified_split`: ``val_frac`` (default 1/12: 500 per
  class, 5,000 images) of each class, chosen by a permutation seeded with ``split_seed``
  (default 0); the remaining 55,000 are ``train``.

Published accuracies (test split) of models reading the same 784-pixel sequences are in
``docs/results/real_data.md`` ("Long-range classification: the data"); the benchmark of
Xiao et al. is on images (not sequences), and a sequential number we could not check
against its paper is marked "not verified" there.

Options: ``path``, ``levels`` (2-256, default 256), ``val_frac`` (default 1/12),
``split_seed`` (default 0). ``--block-size`` may be left out (or must be 784).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..data.corpus import CorpusError, sha256_file
from ..validation import check_int
from .classification import FixedClassificationTask, block_size_for, check_val_frac

ENV = "LMN_FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MISSING_HINT = (f"install Debian's package (apt-get install dataset-fashion-mnist), set {ENV} to a folder "
                "holding the four IDX files, or pass --task-opt path=DIR")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array of an IDX file of unsigned bytes (gzipped or not), header checked.

    Raises:
        CorpusError: wrong magic number, or a size that disagrees with the header.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise CorpusError(f"{path}: cannot read it as {'gzip' if opener is gzip.open else 'an IDX file'} ({err})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise CorpusError(f"{path}: not an IDX file of the expected kind (magic {got}, expected {magic:08x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorpusError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise CorpusError(f"{path}: {len(raw)} bytes, but its header {dims} says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def resolve_dir(spec: str | None) -> Path:
    """The folder of the four IDX files: ``spec``, else ``$LMN_FASHION_MNIST_DIR``, else Debian's.

    Raises:
        CorpusError: one line naming where it looked and how to install the data.
    """
    names = [n for pair in FILES.values() for n in pair]
    if spec:
        candidates = [Path(spec).expanduser()]
    else:
        candidates = [Path(os.environ[ENV]).expanduser()] if os.environ.get(ENV) else []
        candidates.append(DEBIAN_DIR)
    for folder in candidates:
        if all(find_file(folder, n) for n in names):
            return folder
    looked = ", ".join(map(str, candidates))
    raise CorpusError(f"Fashion-MNIST not found (looked for {names[0]}[.gz] and the other three IDX files in "
                      f"{looked}): {MISSING_HINT}")


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images (N, rows, cols) uint8, labels (N,) uint8, {file: sha256})`` of ``split``."""
    image_path, label_path = (find_file(folder, n) for n in FILES[split])
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise CorpusError(f"{folder}: {split} images must be (N, rows, cols) and labels (N,), got {images.shape} "
                          f"and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise CorpusError(f"{folder}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise CorpusError(f"{label_path}: label {int(labels.max())} out of range [0, {len(CLASSES)})")
    return images, labels, {p.name: sha256_file(p) for p in (image_path, label_path)}


class FashionMNISTTask(FixedClassificationTask):
    """Sequential Fashion-MNIST (see the module docstring)."""

    name = "sfashion-mnist"
    bucket_name = "class"
    n_classes = len(CLASSES)
    class_names = CLASSES

    def __init__(self, path: str | None = None, levels: int = 256, val_frac: float = 1 / 12, split_seed: int = 0,
                 block_size: int | None = None):
        check_int("sfashion-mnist task: levels", levels, min=2, max=256)
        check_int("sfashion-mnist task: split_seed", split_seed, min=0)
        val_frac = check_val_frac(self.name, val_frac)
        folder = resolve_dir(path)
        train_images, train_labels, train_sha = load_split(folder, "train")
        test_images, test_labels, test_sha = load_split(folder, "test")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise CorpusError(f"{folder}: train images are {train_images.shape[1:]} but test images {test_images.shape[1:]}")
        rows, cols = train_images.shape[1:]
        if block_size is not None:
            block_size_for(self.name, block_size, rows * cols)
        self.levels = int(levels)
        self.vocab_size = max(self.levels, self.n_classes)

        def tokens(images: np.ndarray) -> torch.Tensor:
            flat = torch.from_numpy(images.reshape(images.shape[0], rows * cols).copy())
            if self.levels == 256:
                return flat
            return (flat.to(torch.int32) * self.levels // 256).to(torch.uint8)

        self.set_data(tokens(train_images), torch.from_numpy(train_labels.astype(np.int64)),
                      tokens(test_images), torch.from_numpy(test_labels.astype(np.int64)), val_frac, split_seed)
        self.info = {"name": self.name, "path": str(folder), "sha256": {**train_sha, **test_sha},
                     "image_shape": [int(rows), int(cols)], "seq_len": self.seq_len, "levels": self.levels,
                     "vocab_size": self.vocab_size, "order": "row-major", "classes": list(CLASSES),
                     "shipped": {"train": int(train_labels.shape[0]), "test": int(test_labels.shape[0])},
                     "splits": self.split_info()}

    @classmethod
    def from_config(cls, cfg) -> "FashionMNISTTask":
        opts = dict(cfg.task_options)
        known = {"path", "levels", "val_frac", "split_seed"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"sfashion-mnist task: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(opts.get("path"), opts.get("levels", 256), opts.get("val_frac", 1 / 12), opts.get("split_seed", 0),
                   block_size=cfg.block_size)

    def describe(self) -> str:
        s = self.info["splits"]
        return (f"sequential Fashion-MNIST {self.info['path']} (T {self.seq_len}, {self.levels} levels, "
                f"{s['train']:,} train / {s['val']:,} val / {s['test']:,} test)")


__all__ = ["CLASSES", "DEBIAN_DIR", "ENV", "FashionMNISTTask", "read_idx", "resolve_dir"]
