"""lmn.atomic: a write appears whole or not at all, and every JSON it writes is valid."""

from __future__ import annotations

import json
import math

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
