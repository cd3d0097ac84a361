"""Long-range classification on real data (issue 22, item 5): sequential Fashion-MNIST
(lmn.tasks.fashion_mnist) and UCR sets (lmn.tasks.ucr), on tiny IDX / .ts files written here
(no Debian package or aeon needed); the checks against the real files skip without them."""

import gzip
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from lmn.data.corpus import CorpusError
from lmn.tasks import fashion_mnist, make_task, ucr
from lmn.tasks.classification import stratified_split
from lmn.tasks.fashion_mnist import FashionMNISTTask, read_idx
from lmn.tasks.ucr import UCRTask, quantize, read_ts
from lmn.trainer import TrainConfig
from tests.lmn_testdata import run_cli

TINY = ["--preset", "smoke", "--batch-size", "4", "--eval-iters", "1", "--model-opt", "d_model=8",
        "--model-opt", "n_layers=1", "--threads", "1", "--max-iters", "2"]


# ----------------------------------------------------------------------------- synthetic files
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fmnist(folder, n_train=40, n_test=20, rows=4, cols=4, seed=0, gz=True):
    """Random images and balanced labels (label i % 10) in the four IDX files; the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        image_name, label_name = fashion_mnist.FILES[split]
        for name, data in ((image_name, idx_bytes(images, 0x803)), (label_name, idx_bytes(labels, 0x801))):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[split] = (images, labels)
    return out


def write_ts(path, series, labels, classes, header_extra=""):
    lines = ["# a comment line", "#", f"@problemName {path.stem.split('_')[0]}", "@timeStamps false",
             "@missing false", "@univariate true", f"@classLabel true {' '.join(classes)}", header_extra, "@data"]
    lines += [",".join(repr(float(v)) for v in s) + f":{c}" for s, c in zip(series, labels)]
    path.write_text("\n".join(lines) + "\n\n")


def write_ucr(folder, name="Toy", n_train=12, n_test=9, length=16, classes=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        series = rng.normal(size=(n, length)) * 5 + 2
        labels = [classes[i % len(classes)] for i in range(n)]
        write_ts(folder / f"{name}_{split}.ts", series, labels, classes)
        out[split] = (series, labels)
    return out


def cfg(task, block_size=512, **opts):
    return TrainConfig(task=task, task_options=opts, block_size=block_size)


# ----------------------------------------------------------------------------- IDX parsing
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_returns_what_was_written(tmp_path, gz):
    data = write_fmnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", 0x803)
    labels = read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", 0x801)
    assert images.shape == (40, 4, 4) and np.array_equal(images, data["train"][0])
    assert labels.shape == (40,) and np.array_equal(labels, data["train"][1])


def test_read_idx_refuses_a_wrong_magic_or_size(tmp_path):
    labels = np.arange(5, dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(CorpusError, match="magic 00000801, expected 00000803"):
        read_idx(tmp_path / "a", 0x803)
    (tmp_path / "b").write_bytes(idx_bytes(labels, 0x801)[:-1])  # one byte short
    with pytest.raises(CorpusError, match="12 bytes, but its header"):
        read_idx(tmp_path / "b", 0x801)


# ----------------------------------------------------------------------------- sequential Fashion-MNIST
def test_fashion_mnist_sequences_labels_and_splits(tmp_path):
    data = write_fmnist(tmp_path)
    task = make_task(cfg("sfashion-mnist", path=str(tmp_path), val_frac=0.25))
    assert isinstance(task, FashionMNISTTask)
    assert task.seq_len == 16 and task.vocab_size == 256 and task.loss_kind == "classification"
    # val: round(0.25 * 4) = 1 per class (labels i % 10 over 40 images: 4 each); train the rest
    s = task.info["splits"]
    assert (s["train"], s["val"], s["test"]) == (30, 10, 20)
    assert torch.bincount(task.data["val"][1], minlength=10).tolist() == [1] * 10
    # every training image lands in exactly one of train / val, as its row-major pixel sequence
    train_images, train_labels = data["train"]
    seqs = {tuple(img.reshape(-1).tolist()): int(c) for img, c in zip(train_images, train_labels)}
    seen = [(tuple(x.tolist()), int(c)) for split in ("train", "val") for x, c in zip(*task.data[split])]
    assert sorted(seen) == sorted(seqs.items())
    # the whole test split once, in file order; the class only at the last position
    batches = list(task.whole(7))
    assert [b.x.shape[0] for b in batches] == [7, 7, 6]
    x = torch.cat([b.x for b in batches])
    test_images, test_labels = data["test"]
    assert torch.equal(x, torch.from_numpy(test_images.reshape(20, 16).astype(np.int64)))
    for b in batches:
        assert b.mask[:, -1].all() and b.mask.sum() == b.x.shape[0]
        assert (b.y[:, :-1] == 0).all()
    y = torch.cat([b.y[:, -1] for b in batches])
    assert torch.equal(y, torch.from_numpy(test_labels.astype(np.int64))) and int(y.max()) < 10
    # record: the sha256 of every file read
    for name, digest in task.record()["sha256"].items():
        assert digest == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def test_fashion_mnist_batches_are_a_function_of_the_generator(tmp_path):
    write_fmnist(tmp_path)
    task = FashionMNISTTask(str(tmp_path), val_frac=0.25)
    a = task.batch("train", 8, torch.Generator().manual_seed(3))
    b = task.batch("train", 8, torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.x.dtype == torch.int64
    train = {tuple(x.tolist()) for x in task.data["train"][0]}
    assert all(tuple(x.tolist()) in train for x in a.x)  # drawn from the train split only


def test_fashion_mnist_levels_quantise_pixels(tmp_path):
    data = write_fmnist(tmp_path)
    task = FashionMNISTTask(str(tmp_path), levels=4, val_frac=0.25)
    assert task.vocab_size == 10  # the classes still need ids 0-9
    expected = [[p * 4 // 256 for p in img.reshape(-1).tolist()] for img in data["test"][0]]
    assert task.data["test"][0].tolist() == expected and max(map(max, expected)) == 3


def test_stratified_split_is_seeded_and_per_class():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 3)
    tr, va = stratified_split(labels, 3, 0.2, seed=0)
    assert torch.bincount(labels[va], minlength=3).tolist() == [2, 4, 1]  # floor(0.2 n + 0.5)
    assert sorted(tr.tolist() + va.tolist()) == list(range(33)) and torch.equal(va, va.sort().values)
    assert torch.equal(va, stratified_split(labels, 3, 0.2, seed=0)[1])
    assert not torch.equal(va, stratified_split(labels, 3, 0.2, seed=1)[1])
    # a class keeps at least one training example
    _, va = stratified_split(torch.tensor([0, 0, 1]), 2, 0.9, seed=0)
    assert torch.bincount(torch.tensor([0, 0, 1])[va], minlength=2).tolist() == [1, 0]


def test_fashion_mnist_found_by_environment_variable(tmp_path, monkeypatch):
    write_fmnist(tmp_path / "fm")
    monkeypatch.setenv(fashion_mnist.ENV, str(tmp_path / "fm"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "none")
    assert FashionMNISTTask(val_frac=0.25).info["path"] == str(tmp_path / "fm")


def test_fashion_mnist_missing_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(fashion_mnist.ENV, raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "none")
    with pytest.raises(CorpusError) as err:
        FashionMNISTTask()
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and fashion_mnist.ENV in msg
    assert str(tmp_path / "none") in msg


def test_fashion_mnist_refuses_bad_options(tmp_path):
    write_fmnist(tmp_path)
    with pytest.raises(ValueError, match="pass --block-size 16"):
        make_task(cfg("sfashion-mnist", block_size=64, path=str(tmp_path), val_frac=0.25))
    with pytest.raises(ValueError, match="levels must be an integer in"):
        FashionMNISTTask(str(tmp_path), levels=300)
    with pytest.raises(ValueError, match="unknown option"):
        make_task(cfg("sfashion-mnist", path=str(tmp_path), colour=1))
    with pytest.raises(ValueError, match="carves no validation example"):
        FashionMNISTTask(str(tmp_path), val_frac=0.01)
    with pytest.raises(ValueError, match=r"val_frac must be a number in \[0, 1\)"):
        FashionMNISTTask(str(tmp_path), val_frac=1.0)


# ----------------------------------------------------------------------------- UCR .ts
def test_read_ts_and_the_ucr_task(tmp_path):
    data = write_ucr(tmp_path)
    series, labels, classes = read_ts(tmp_path / "Toy_TRAIN.ts")
    assert classes == ["a", "b", "c"] and labels == data["TRAIN"][1]
    assert np.allclose(series, data["TRAIN"][0])
    task = make_task(cfg("ucr", set="Toy", path=str(tmp_path), levels=8, val_frac=0.25))
    assert isinstance(task, UCRTask) and task.seq_len == 16 and task.n_classes == 3 and task.vocab_size == 8
    s = task.info["splits"]
    assert (s["train"], s["val"], s["test"]) == (9, 3, 9)  # one of each class's 4 to val
    # the test split: every series once, labels as ids in @classLabel order
    batch = next(task.whole(100))
    assert batch.y[:, -1].tolist() == [["a", "b", "c"].index(c) for c in data["TEST"][1]]
    assert batch.x.max() < 8 and batch.x.min() >= 0


def test_ucr_val_frac_zero_trains_on_all(tmp_path):
    write_ucr(tmp_path)
    task = UCRTask("Toy", str(tmp_path), val_frac=0)
    assert task.info["splits"]["train"] == 12 and task.info["splits"]["val"] == 0
    assert torch.equal(task.data["val"][0], task.data["train"][0])


def test_quantize_against_the_plain_definition():
    values = torch.tensor([[1.0, 2.0, 3.0, 10.0, -4.0, 0.5], [7.0] * 6], dtype=torch.float64)
    got = quantize(values, levels=5, clip=2.0).tolist()
    for row, toks in zip(values.tolist(), got):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / len(row))
        for v, t in zip(row, toks):
            z = (v - mean) / std if std > 0 else 0.0
            assert t == min(max(math.floor((z + 2.0) / 4.0 * 5), 0), 4)
    assert got[1] == [2] * 6  # a constant series: z = 0, the middle bin


@pytest.mark.parametrize("body, message", [
    ("1,2,3:a\n1,2:b\n", "unequal lengths"),
    ("1,2,3:a\n1,?,3:b\n", "not a number"),
    ("1,2,3:1,2,3:a\n", "several dimensions"),
    ("1,2,3:z\n", "not in its @classLabel list"),
])
def test_read_ts_refuses_what_it_cannot_read(tmp_path, body, message):
    path = tmp_path / "Bad_TRAIN.ts"
    path.write_text("@problemName Bad\n@classLabel true a b\n@data\n" + body)
    with pytest.raises(CorpusError, match=message):
        read_ts(path)
    path.write_text("@problemName Bad\n@targetlabel true\n@data\n1,2:0.5\n")
    with pytest.raises(CorpusError, match="no @classLabel"):
        read_ts(path)


def test_ucr_found_in_an_installed_package_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "aeon"
    (pkg / "__init__.py").parent.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")  # finding it must not import it
    write_ucr(pkg / "datasets" / "data" / "Toy")
    monkeypatch.delenv(ucr.ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    task = UCRTask("Toy", val_frac=0.25)
    assert task.info["files"][0] == str(pkg / "datasets" / "data" / "Toy" / "Toy_TRAIN.ts")


def test_ucr_missing_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(ucr.ENV, str(tmp_path))
    monkeypatch.setattr(ucr, "PACKAGES", ())
    with pytest.raises(CorpusError) as err:
        UCRTask("ACSF1")
    msg = str(err.value)
    assert "\n" not in msg and 'pip install "torch-lmn[ucr]"' in msg and ucr.ENV in msg and str(tmp_path) in msg


# ----------------------------------------------------------------------------- through the command line
def test_lmn_train_on_sequential_fashion_mnist(tmp_path, capsys):
    write_fmnist(tmp_path / "fm")
    out = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", "--task", "sfashion-mnist", "--task-opt", f"path={tmp_path / 'fm'}",
                             "--task-opt", "val_frac=0.25", "--block-size", "16", *TINY, "--out", out)
    assert status == 0, err
    final = json.loads((out / "final.json").read_text())
    assert final["whole_test_count"] == 20 and 0.0 <= final["whole_test_accuracy"] <= 1.0
    assert final["task"]["splits"]["train"] == 30 and final["task"]["seq_len"] == 16
    assert sum(final.get(f"whole_test_count@{c}", 0) for c in range(10)) == 20


def test_lmn_probe_on_a_ucr_set(tmp_path):
    from lmn.cli import main

    write_ucr(tmp_path / "ucr")
    assert main(["probe", "ucr", "--model", "lmn:d_model=8,n_layers=1,n_heads=2", "--model-size", "tiny",
                 "--cell", "block_size=16,set=Toy", "--task-opt", f"path={tmp_path / 'ucr'}",
                 "--task-opt", "val_frac=0.25", "--steps", "2",
                 "--batch-size", "4", "--eval-iters", "1", "--lrs", "1e-3", "--seeds", "1",
                 "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]) == 0
    doc = json.loads((tmp_path / "out" / "ucr.json").read_text())
    (run,) = doc["runs"]
    assert run["test"]["count"] == 9 and 0.0 <= run["test"]["accuracy"] <= 1.0


# ----------------------------------------------------------------------------- the real files, where installed
def test_real_fashion_mnist_against_the_source():
    if not fashion_mnist.DEBIAN_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    task = FashionMNISTTask(str(fashion_mnist.DEBIAN_DIR))
    assert task.info["shipped"] == {"train": 60_000, "test": 10_000} and task.seq_len == 784
    assert task.info["splits"]["val"] == 5_000
    assert torch.bincount(task.data["test"][1]).tolist() == [1_000] * 10
    assert torch.bincount(torch.cat([task.data["train"][1], task.data["val"][1]])).tolist() == [6_000] * 10
    # dataset-fashion-mnist 0.0~git20200523.55506a9-1 (Debian bookworm)
    assert task.info["sha256"]["t10k-labels-idx1-ubyte.gz"] == \
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"


# the UCR archive's DataSummary.csv: (train, test, classes, length, 1-NN Euclidean error)
UCR_SUMMARY = {"ACSF1": (100, 100, 10, 1460, 0.4600), "OSULeaf": (200, 242, 6, 427, 0.4793),
               "ArrowHead": (36, 175, 3, 251, 0.2000)}


@pytest.mark.parametrize("name", sorted(UCR_SUMMARY))
def test_real_ucr_sets_against_the_archive(name):
    try:
        train_path, test_path = ucr.resolve_set(name, None)
    except CorpusError:
        pytest.skip(f"UCR {name} not found (pip install aeon, or set {ucr.ENV})")
    n_train, n_test, n_classes, length, ed_error = UCR_SUMMARY[name]
    a, la, classes = read_ts(train_path)
    b, lb, _ = read_ts(test_path)
    assert (len(a), len(b), len(classes), len(a[0])) == (n_train, n_test, n_classes, length)
    A, B = np.array(a), np.array(b)
    nearest = ((B[:, None, :] - A[None]) ** 2).sum(-1).argmin(1)  # 1-NN, Euclidean, on the raw values
    error = float(np.mean(np.array(la)[nearest] != np.array(lb)))
    assert abs(error - ed_error) < 5e-5
