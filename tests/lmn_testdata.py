"""Where the tests find Tiny Shakespeare: $LMN_DATA_DIR, else <repo>/../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shakespeare_path() -> Path:
    data_dir = os.environ.get("LMN_DATA_DIR") or str(REPO.parent / "shared" / "data")
    return Path(data_dir) / "tinyshakespeare.txt"


def require_shakespeare() -> Path:
    path = shakespeare_path()
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path}; set LMN_DATA_DIR to the directory holding tinyshakespeare.txt")
    return path


def small_corpus(tmp_path: Path, n_chars: int = 20_000) -> Path:
    """The first ``n_chars`` characters of Tiny Shakespeare as a corpus of its own."""
    text = require_shakespeare().read_text(encoding="utf-8")[:n_chars]
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path
