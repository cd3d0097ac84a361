"""Corpus resolution, the character tokenizer and batching."""

import io
import urllib.error
import urllib.request

import pytest
import torch

from lmn.data import (
    CORPORA,
    CharTokenizer,
    CorpusError,
    check_split_sizes,
    get_batch,
    read_text,
    resolve_corpus,
    sequential_windows,
    split_tokens,
)
from tests.lmn_testdata import require_shakespeare

TS = CORPORA["tinyshakespeare"]


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No LMN_DATA_DIR, an empty cache directory, and no network."""
    monkeypatch.delenv("LMN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tmp_path


# ----------------------------------------------------------------------------- resolution
def test_explicit_path_wins(tmp_path):
    path = tmp_path / "tinyshakespeare"  # a file named like the corpus is still a file
    path.write_text("hello", encoding="utf-8")
    assert resolve_corpus(str(path)) == path


def test_named_corpus_from_data_dir(isolated_env, monkeypatch):
    shakespeare = require_shakespeare()
    monkeypatch.setenv("LMN_DATA_DIR", str(shakespeare.parent))
    assert resolve_corpus("tinyshakespeare") == shakespeare


def test_named_corpus_from_cache_dir(isolated_env):
    cache = isolated_env / "cache" / "lmn"
    cache.mkdir(parents=True)
    (cache / TS.filename).symlink_to(require_shakespeare())
    assert resolve_corpus("tinyshakespeare") == cache / TS.filename


def test_named_corpus_with_wrong_sha_is_rejected(isolated_env, monkeypatch):
    data_dir = isolated_env / "data"
    data_dir.mkdir()
    (data_dir / TS.filename).write_text("not shakespeare", encoding="utf-8")
    monkeypatch.setenv("LMN_DATA_DIR", str(data_dir))
    with pytest.raises(CorpusError, match="sha256"):
        resolve_corpus("tinyshakespeare")


def test_offline_and_absent_says_how_to_provide_it(isolated_env):
    with pytest.raises(CorpusError) as info:
        resolve_corpus("tinyshakespeare")
    message = str(info.value)
    assert "network is unreachable" in message and TS.url in message
    assert "--data" in message and "LMN_DATA_DIR" in message


def test_download_is_verified_and_cached(isolated_env, monkeypatch):
    payload = require_shakespeare().read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path = resolve_corpus("tinyshakespeare")
    assert path == isolated_env / "cache" / "lmn" / TS.filename
    assert path.read_bytes() == payload


def test_download_with_wrong_content_leaves_nothing(isolated_env, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"tampered"))
    with pytest.raises(CorpusError, match="sha256"):
        resolve_corpus("tinyshakespeare")
    cache = isolated_env / "cache" / "lmn"
    assert not cache.exists() or not any(cache.iterdir())


def test_unknown_name_or_missing_path(tmp_path):
    with pytest.raises(CorpusError, match="not a known corpus name"):
        resolve_corpus(str(tmp_path / "nope.txt"))


@pytest.mark.parametrize(
    "content, match",
    [(b"", "is empty"), (b"caf\xe9 au lait", "not valid UTF-8 \\(byte 3")],
    ids=["empty", "latin1"],
)
def test_unreadable_text(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=match):
        read_text(path)


def test_too_short_for_a_window():
    train, val = split_tokens(torch.arange(1000), 0.9)
    check_split_sizes(train, val, block_size=99)  # val holds exactly 100 = block + 1
    with pytest.raises(CorpusError, match="too short.*smaller --block-size"):
        check_split_sizes(train, val, block_size=100)


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_save(tmp_path):
    tok = CharTokenizer.from_text("hello, wörld\n😀")
    assert tok.chars == "".join(sorted(set("hello, wörld\n😀")))
    text = "hello wörld😀"
    ids = tok.encode(text)
    assert ids.dtype == torch.int64 and tok.decode(ids) == text
    assert ids.tolist() == [tok.stoi[c] for c in text]
    tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(tmp_path / "tok.json") == tok


def test_tokenizer_names_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'x', 'é'"):
        tok.encode("abxé")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, 3])


def test_tokenizer_of_tiny_shakespeare():
    tok = CharTokenizer.from_text(require_shakespeare().read_text(encoding="utf-8"))
    assert tok.vocab_size == 65 and tok.chars[0] == "\n" and tok.chars[1] == " "


# ----------------------------------------------------------------------------- batching
def test_split_is_first_90_percent():
    train, val = split_tokens(torch.arange(1000))
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000))


def test_random_batches_are_shifted_windows_and_seeded():
    data = torch.arange(500)
    x, y = get_batch(data, 16, 8, torch.Generator().manual_seed(3))
    x2, _ = get_batch(data, 16, 8, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16) and torch.equal(x, x2)
    assert torch.equal(y, x + 1)  # data[i] == i, so targets are inputs shifted by one
    assert int(x.max()) < 500 and int(y.max()) < 500


@pytest.mark.parametrize("n", [33, 64, 65, 99])
def test_whole_split_windows_cover_every_target_once(n):
    data = torch.arange(n)
    xs, ys = zip(*sequential_windows(data, block_size=8, batch_size=3))
    targets = torch.cat([y.reshape(-1) for y in ys])
    assert targets.tolist() == list(range(1, n))
    assert all(torch.equal(y, x + 1) for x, y in zip(xs, ys))


def test_a_corpus_of_one_distinct_character_is_refused(tmp_path):
    from lmn.tasks.text import TextTask

    path = tmp_path / "nul.txt"
    path.write_bytes(b"\0" * 100_000)
    with pytest.raises(CorpusError, match="single distinct character.*at least 2 different"):
        TextTask(str(path), block_size=16)
    path.write_bytes(b"\0\1" * 1000)
    assert TextTask(str(path), block_size=16).vocab_size == 2


def test_tokenizer_save_is_atomic(tmp_path):
    tok = CharTokenizer.from_text("hello")
    tok.save(tmp_path / "tokenizer.json")
    tok.save(tmp_path / "tokenizer.json")  # replaced, never half-written, no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    assert CharTokenizer.load(tmp_path / "tokenizer.json") == tok
