"""lmn.atomic: a write appears whole or not at all, and every JSON it writes is valid."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat

import pytest

from lmn import atomic


def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_a_write_that_raises_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    atomic.write_bytes(path, b"old contents")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic.atomic_write(path) as f:
            f.write(b"new cont")
            assert atomic.temporary_name(path).exists()  # the bytes go beside, not onto, the file
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old contents"
    assert _leftovers(tmp_path, {"weights.bin"}) == []


def test_a_path_writer_that_raises_leaves_nothing(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(ValueError):
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("exporter failed")
    assert not path.exists() and _leftovers(tmp_path, set()) == []
    with pytest.raises(OSError, match="did not create"):  # a writer that wrote nothing is an error
        with atomic.atomic_path(path):
            pass
    with atomic.atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name != path.name
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and _leftovers(tmp_path, {"model.onnx"}) == []


def test_text_and_json_and_their_bytes(tmp_path):
    atomic.write_text(tmp_path / "sub" / "a.md", "naïve\n")  # parents made, UTF-8
    assert (tmp_path / "sub" / "a.md").read_bytes() == "naïve\n".encode()
    doc = {"b": [1, 2.5, None], "a": {"x": "é"}}
    for kw in ({}, {"indent": 2}, {"indent": None}, {"indent": 2, "sort_keys": True}):
        atomic.write_json(tmp_path / "d.json", doc, **kw)  # byte-identical to the hand-written writers
        want = json.dumps(doc, indent=kw.get("indent", 1), sort_keys=kw.get("sort_keys", False)) + "\n"
        assert (tmp_path / "d.json").read_text() == want
    with atomic.atomic_write(tmp_path / "t.txt", "w") as f:
        f.write("text mode")
    assert (tmp_path / "t.txt").read_text() == "text mode"
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_write(tmp_path / "t.txt", "a"):
            pass


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_with_nan_is_refused_and_nothing_is_written(tmp_path, bad):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"loss": 1.0})
    with pytest.raises(ValueError) as err:
        atomic.write_json(path, {"runs": [{"loss": bad}]})
    msg = str(err.value)
    assert str(path) in msg and "non-finite" in msg and "\n" not in msg
    assert json.loads(path.read_text()) == {"loss": 1.0}
    assert _leftovers(tmp_path, {"results.json"}) == []


def test_a_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("save_pretrained failed")
    assert not out.exists() and _leftovers(tmp_path, set()) == []
    with atomic.atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("1")
        (tmp / "model.safetensors").write_bytes(b"w")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(RuntimeError):  # a failed rewrite leaves the previous directory as it was
        with atomic.atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("2")
            raise RuntimeError("again")
    assert (out / "config.json").read_text() == "1" and _leftovers(tmp_path, {"hf"}) == []
    with atomic.atomic_dir(out) as tmp:  # replaced whole: a file the new one lacks is gone
        (tmp / "config.json").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    (out / "notes.txt").write_text("mine")
    with atomic.atomic_dir(out, merge=True) as tmp:  # merged: the other files survive
        (tmp / "config.json").write_text("4")
    assert (out / "config.json").read_text() == "4" and (out / "notes.txt").read_text() == "mine"
    assert _leftovers(tmp_path, {"hf"}) == []


def test_save_figure_names_its_format(tmp_path):
    class Fig:  # what matplotlib's savefig sees: a temporary name, the format given explicitly
        def savefig(self, fname, **kw):
            self.kw = kw
            with open(fname, "wb") as f:
                f.write(b"\x89PNG")

    fig = Fig()
    assert atomic.save_figure(fig, tmp_path / "p.png", dpi=90) == tmp_path / "p.png"
    assert fig.kw == {"dpi": 90, "format": "png"} and (tmp_path / "p.png").read_bytes() == b"\x89PNG"
    assert _leftovers(tmp_path, {"p.png"}) == []


@pytest.fixture
def umask022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_modes_are_those_of_a_file_written_in_place(tmp_path, umask022):
    """A writer that creates its temporary 0600 (safetensors, mkstemp) does not leak that
    mode: a new file gets 0o666 & ~umask, a replaced one keeps its mode (issue 23)."""
    assert atomic.umask() == 0o022 and atomic.new_file_mode() == 0o644
    path = tmp_path / "model.safetensors"
    with atomic.atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"w")
        os.close(fd)
    assert _mode(path) == 0o644
    os.chmod(path, 0o640)
    atomic.write_bytes(path, b"again")
    assert _mode(path) == 0o640 and path.read_bytes() == b"again"
    with atomic.atomic_path(tmp_path / "kernel.so") as tmp:  # a writer that makes it executable keeps that
        tmp.write_bytes(b"\x7fELF")
        os.chmod(tmp, 0o700)
    assert _mode(tmp_path / "kernel.so") == 0o755
    out = tmp_path / "hf"
    with atomic.atomic_dir(out) as tmp:
        fd = os.open(tmp / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        (tmp / "config.json").write_text("{}")
    assert {p.name: _mode(p) for p in out.iterdir()} == {"model.safetensors": 0o644, "config.json": 0o644}
    assert _mode(out) == 0o755
    os.chmod(out / "config.json", 0o600)  # the user's choice, kept when the directory is replaced
    os.chmod(out, 0o750)
    with atomic.atomic_dir(out, merge=True) as tmp:
        fd = os.open(tmp / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        (tmp / "config.json").write_text("{}")
    assert {p.name: _mode(p) for p in out.iterdir()} == {"model.safetensors": 0o644, "config.json": 0o600}
    assert _mode(out) == 0o750


class FullDisk:
    """``open`` for lmn.atomic whose files take ``room`` bytes, then raise ENOSPC."""

    def __init__(self, room):
        self.room = room

    def __call__(self, file, mode="r", *args, **kwargs):
        real = open(file, mode, *args, **kwargs)
        if "w" not in mode:
            return real
        outer = self

        class File:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

            def write(self, data):
                if len(data) > outer.room:
                    real.write(data[: outer.room])
                    real.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                outer.room -= len(data)
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        return File()


def test_a_full_disk_names_the_destination_and_leaves_the_previous_files(tmp_path, monkeypatch):
    model, meta = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    atomic.write_together([(model, b"old model"), (meta, b"old meta")])
    assert model.read_bytes() == b"old model" and meta.read_bytes() == b"old meta"
    for room in (4, 20):  # the model's write fails part-way; the model written, the description's fails
        monkeypatch.setattr(atomic, "open", FullDisk(room), raising=False)
        with pytest.raises(OSError) as err:
            atomic.write_together([(model, b"a new model"), (meta, b"a new description")])
        monkeypatch.undo()
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(model if room == 4 else meta)
        assert str(err.value) == f"[Errno 28] No space left on device: {str(model if room == 4 else meta)!r}"
        assert model.read_bytes() == b"old model" and meta.read_bytes() == b"old meta"
        assert _leftovers(tmp_path, {"m.onnx", "m.onnx.json"}) == []
    monkeypatch.setattr(atomic, "open", FullDisk(3), raising=False)
    with pytest.raises(OSError, match=r"No space left on device: '.*weights\.bin'"):
        atomic.write_bytes(tmp_path / "weights.bin", b"0123456789")
    monkeypatch.undo()
    assert _leftovers(tmp_path, {"m.onnx", "m.onnx.json"}) == []


def test_check_space_refuses_before_writing(tmp_path, monkeypatch):
    atomic.check_space(tmp_path / "new" / "deeper" / "f.bin", 1)  # a directory yet to be made: its parent's disk
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 90, 10))
    with pytest.raises(OSError) as err:
        atomic.write_together([(tmp_path / "f.bin", b"x" * 11)])
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "f.bin")
    assert "11 bytes to write, 10 free" in str(err.value) and _leftovers(tmp_path, set()) == []


def test_a_merged_directory_is_replaced_whole(tmp_path):
    """merge=True keeps the other files (and folders) of the directory, and still swaps the
    directory in one step: no moment holds some new files and some old ones."""
    out = tmp_path / "hf"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("1")
        (tmp / "model.safetensors").write_text("1")
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("mine")
    (out / "link").symlink_to("config.json")
    seen = []
    real = atomic._exchange

    def exchange(a, b):  # the moment of the swap: the new directory is complete, the old one untouched
        seen.append(((b / "config.json").read_text(), (a / "config.json").read_text(),
                     (a / "notes" / "mine.txt").read_text(), (b / "model.safetensors").read_text()))
        return real(a, b)

    atomic._exchange, keep = exchange, atomic._exchange
    try:
        with atomic.atomic_dir(out, merge=True) as tmp:
            (tmp / "config.json").write_text("2")
            (tmp / "model.safetensors").write_text("2")
    finally:
        atomic._exchange = keep
    assert seen == [("1", "2", "mine", "1")]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "link", "model.safetensors", "notes"]
    assert (out / "notes" / "mine.txt").read_text() == "mine" and os.readlink(out / "link") == "config.json"
    assert (out / "model.safetensors").read_text() == "2" and _leftovers(tmp_path, {"hf"}) == []


def test_without_an_atomic_swap_the_directory_is_moved_aside(tmp_path, monkeypatch):
    out = tmp_path / "hf"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # not Linux, or a file system without it
    with atomic.atomic_dir(out, merge=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"] and _leftovers(tmp_path, {"hf"}) == []
