#!/usr/bin/env python
"""Assemble a character-level source-code corpus from an installed package (issue 11).

    python scripts/make_code_corpus.py --package torch --min-bytes 2000000 --out runs/data/code_torch.txt

Reads the ``.py`` files of the installed ``--package`` (from its distribution's installed
location), in sorted order of their path relative to the package directory, keeping only
files that are pure ASCII (so the vocabulary stays a small character set, like Tiny
Shakespeare's), each preceded by a ``# ===== <relative path>`` line, and stops after the
first file that brings the corpus to ``--min-bytes``. The same package version gives the
same bytes. A sidecar ``<out>.json`` records the package, its version, the number of files,
the first and last file, the size, the number of distinct characters and the sha256.
The corpus is data, not source: do not commit it (``runs/`` is git-ignored).

Train on it with any kind, e.g. the Table 1 protocol:
``lmn train --preset paper-lmn --data runs/data/code_torch.txt --out runs/code-lmn-s1337``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Iterable


def package_files(package: str) -> tuple[Path, list[Path]]:
    module = importlib.import_module(package)
    root = Path(module.__file__).resolve().parent
    files = sorted((p for p in root.rglob("*.py") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    return root, files


def select_files(package: str, items: Iterable[tuple[str, bytes]], min_bytes: int) -> list[tuple[str, str]]:
    """The corpus rule on ``(relative path, raw bytes)`` pairs, given in sorted order of the
    path: each file decoded as UTF-8 with universal newlines (what ``Path.read_text`` does),
    left out unless it is non-blank pure ASCII, kept as ``(path, chunk)`` with its chunk the
    ``# ===== package/path`` line and the text (ending in a newline), until the chunks reach
    ``min_bytes``. ``items`` is read lazily, so the files after the last one kept are never
    read. Also used by ``research/corpus.py`` on the ``.py`` members of a downloaded wheel."""
    kept, size = [], 0
    for rel, data in items:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.isascii() or not text.strip():
            continue
        chunk = f"# ===== {package}/{rel}\n{text if text.endswith(chr(10)) else text + chr(10)}"
        kept.append((rel, chunk))
        size += len(chunk)
        if size >= min_bytes:
            break
    return kept


def build(package: str, min_bytes: int) -> tuple[str, dict]:
    root, files = package_files(package)
    kept = select_files(package, ((p.relative_to(root).as_posix(), p.read_bytes()) for p in files), min_bytes)
    parts = [chunk for _rel, chunk in kept]
    used = [rel for rel, _chunk in kept]
    corpus = "".join(parts)
    if len(corpus) < min_bytes:
        raise SystemExit(f"{package} has only {len(corpus):,} bytes of ASCII .py source (< {min_bytes:,})")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(importlib.import_module(package), "__version__", "unknown")
    data = corpus.encode("ascii")
    info = {"package": package, "version": version, "files": len(used), "first_file": used[0], "last_file": used[-1],
            "bytes": len(data), "distinct_chars": len(set(corpus)), "sha256": hashlib.sha256(data).hexdigest(),
            "rule": "sorted .py files under the package directory, ASCII-only, each after a '# ===== path' line, "
                    "until min_bytes", "min_bytes": min_bytes}
    return corpus, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--package", default="torch")
    p.add_argument("--min-bytes", type=int, default=2_000_000)
    p.add_argument("--out", default="runs/data/code_torch.txt")
    args = p.parse_args(argv)
    corpus, info = build(args.package, args.min_bytes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(corpus.encode("ascii"))
    out.with_name(out.name + ".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
