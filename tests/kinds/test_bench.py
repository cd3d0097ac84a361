"""`lmn bench`: the quick sweeps run end to end, their JSON has the documented fields, the
markdown is a function of the JSON alone, and the materialised LMN equals the model."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import max_abs_diff
from lmn import LMN, LMNConfig, state_nbytes
from lmn.bench.common import parse_bytes, parse_count, parse_counts, run_point, summarize
from lmn.materialized import gather_slots, materialized_forward, slots_count
from lmn.bench.report import render_decode, render_train, report
from lmn.bench.train import TrainSettings, plan
from lmn.cli import main
from lmn.native import find_compiler


# ----------------------------------------------------------------------------- materialised variant
@pytest.mark.parametrize(
    "config",
    [LMNConfig(), LMNConfig(expand=1, summarizer="conv", pos_encoding="sinusoidal"), LMNConfig(n_banks=3, n_heads=2)],
    ids=["paper", "expand1-conv-sinusoidal", "3banks"],
)
def test_materialized_forward_equals_model(config):
    model = LMN(config)
    idx = torch.randint(config.vocab_size, (2, 37))  # odd length: partial blocks at every level
    out = materialized_forward(model, idx)
    diff = max_abs_diff(out, model(idx))
    assert diff < 1e-5, f"max |materialised - model| = {diff:.2e}"


def test_materialized_gradients_equal_model():
    model = LMN(LMNConfig())
    idx = torch.randint(65, (1, 21))
    grads = []
    for fn in (model, lambda i: materialized_forward(model, i)):
        model.zero_grad()
        fn(idx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert max_abs_diff(g, grads[1][name]) < 1e-5, name


def test_gather_slots_shapes_and_presence():
    config = LMNConfig(expand=1)
    model = LMN(config)
    x = torch.randn(2, 9, config.d_model)
    slots, present = gather_slots(x, model.blocks[0].memory.build(x))
    S = slots_count(config, 9)  # 1 + 2*(1+1) + 2*(1+2) + 2*(1+3)
    assert S == 1 + 4 + 6 + 8 and slots.shape == (2, 9, S, config.d_model)
    assert present.sum(1).tolist() == [config.n_slots(t) for t in range(9)]


# ----------------------------------------------------------------------------- helpers
def test_parsing():
    assert parse_count("1K") == 1024 and parse_count("1m") == 1 << 20 and parse_count("256") == 256
    assert parse_counts("1M,256,1K,256") == [256, 1024, 1 << 20]
    assert parse_bytes("4G") == 4 << 30 and parse_bytes("0") == 0 and parse_bytes("1.5K") == 1536
    for bad in ("0", "-3", "1T", "K"):
        with pytest.raises(ValueError):
            parse_count(bad)
    assert summarize([3.0, 1.0, 2.0, 10.0]) == {"median_s": 2.5, "min_s": 1.0, "max_s": 10.0, "mean_s": 4.0, "n": 4}


def test_train_plan_dedupes_and_marks_special_shapes():
    cfg = TrainSettings(sizes=["paper"], models=["lmn", "gpt2"], lengths=[512, 2048], tokens_per_batch=8192,
                        special=[(16, 512, None), (1, 4096, ("lmn",))], repeats=1, warmup=0, threads=1,
                        devices=["cpu"], timeout=1, mem_limit_bytes=0, seed=0, quick=True)
    got = [(p["model"], p["batch"], p["length"], p["sweep"], p["special"]) for p in plan(cfg)]
    assert got == [("lmn", 16, 512, True, True), ("gpt2", 16, 512, True, True),
                   ("lmn", 4, 2048, True, False), ("gpt2", 4, 2048, True, False), ("lmn", 1, 4096, False, True)]


def test_point_timeout_is_recorded():
    r = run_point("lmn.bench._decode_point", ["--size", "paper", "--model", "lmn", "--position", "1048576"],
                  timeout=0.5, threads=1)
    assert r["status"] == "timeout" and "0.5 s" in r["reason"]


def test_bench_package_imports_no_extras():
    code = ("import sys, lmn.bench.cli, lmn.bench.decode, lmn.bench.train, lmn.bench.report; "
            "bad = [m for m in ('transformers', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- quick sweeps
POINT_OK = {"device", "size", "model", "status", "params", "params_total", "config", "rss_before_bytes",
            "peak_rss_bytes", "wall_s"}
HEADER = {"bench", "schema_version", "command", "argv", "timestamp", "git", "machine", "settings", "models", "points"}
MACHINE = {"platform", "cpu_model", "cpu_count", "cpu_usable", "torch", "threads", "devices", "cuda"}


def _check_header(doc, bench):
    assert HEADER <= set(doc) and doc["bench"] == bench and doc["schema_version"] == 1
    assert MACHINE <= set(doc["machine"]) and doc["machine"]["threads"] == 1
    assert doc["command"].startswith(f"lmn bench {bench} ") and "--quick" in doc["command"]
    assert set(doc["git"]) == {"commit", "dirty"}


@pytest.fixture(scope="module")
def decode_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "decode", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "decode.json").read_text())


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "train", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "train.json").read_text())


@pytest.mark.slow
def test_decode_quick_json(decode_run):
    out, doc = decode_run
    _check_header(doc, "decode")
    assert doc["settings"]["positions"] == [16, 100] and doc["settings"]["repeats"] == 3
    models = ("lmn", "lmn-native", "gpt2", "mamba") if find_compiler() else ("lmn", "gpt2", "mamba")
    assert {(p["model"], p["position"]) for p in doc["points"]} == {(m, P) for m in models for P in (16, 100)}
    assert doc["models"]["paper"]["lmn"]["params"] == 71_489 and doc["models"]["paper"]["gpt2"]["params"] == 69_344
    for p in doc["points"]:
        assert p["status"] == "ok", p
        assert POINT_OK | {"position", "latency", "state_bytes", "prefill_s"} <= set(p)
        lat = p["latency"]
        assert lat["n"] == 3 and 0 < lat["min_s"] <= lat["median_s"] <= lat["max_s"]
        assert p["peak_rss_bytes"] >= p["rss_before_bytes"] > 0 and p["device"] == "cpu"
        if p["model"] in ("lmn", "lmn-native"):  # the state holds exactly what state_nbytes says
            assert p["state_bytes"] == state_nbytes(LMNConfig(), 1, p["position"])
        if p["model"] == "gpt2":  # K and V: 2 * 4 layers * P * 32 * 4 bytes
            assert p["state_bytes"] == p["estimated_cache_bytes"] == 2 * 4 * p["position"] * 32 * 4
    mamba = [p["state_bytes"] for p in doc["points"] if p["model"] == "mamba"]
    assert mamba[0] == mamba[1] > 0  # constant in P
    for png in ("decode_latency.png", "decode_memory.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.slow
def test_decode_markdown_is_the_json_rendered(decode_run, tmp_path):
    out, doc = decode_run
    md = (out / "decode.md").read_text()
    assert md == render_decode(doc)
    for p in doc["points"]:  # every median appears in the table
        from lmn.bench.common import format_seconds

        assert format_seconds(p["latency"]["median_s"]) in md
    # regenerated from the JSON alone, elsewhere: same text
    (tmp_path / "decode.json").write_text((out / "decode.json").read_text())
    report([str(tmp_path)], plots=False)
    assert (tmp_path / "decode.md").read_text() == md


@pytest.mark.slow
def test_train_quick_json_and_markdown(train_run):
    out, doc = train_run
    _check_header(doc, "train")
    shapes = [(p["model"], p["batch"], p["length"], p["special"]) for p in doc["points"]]
    assert shapes == [("lmn", 8, 32, False), ("gpt2", 8, 32, False), ("lmn-materialized", 8, 32, False),
                      ("lmn", 2, 128, False), ("gpt2", 2, 128, False), ("lmn-materialized", 2, 128, False),
                      ("lmn", 1, 512, True)]
    for p in doc["points"]:
        assert p["status"] == "ok", p
        assert POINT_OK | {"batch", "length", "time", "peak_growth_bytes", "sweep", "special"} <= set(p)
        assert p["time"]["n"] >= 1 and p["time"]["median_s"] > 0
        assert p["peak_growth_bytes"] == p["peak_rss_bytes"] - p["rss_before_bytes"] >= 0
    assert (out / "train.md").read_text() == render_train(doc)
    assert (out / "train.png").stat().st_size > 1000


@pytest.mark.slow
def test_decode_runs_the_recurrent_peers(tmp_path):
    """Kinds added through the registry run in `lmn bench decode` with nothing else changed;
    their state does not grow with the context."""
    out = tmp_path / "b"
    assert main(["bench", "decode", "--models", "mamba2,rwkv", "--sizes", "paper", "--positions", "16,64",
                 "--repeats", "2", "--warmup", "1", "--out", str(out), "--no-plots"]) == 0
    doc = json.loads((out / "decode.json").read_text())
    by = {(p["model"], p["position"]): p for p in doc["points"]}
    assert all(p["status"] == "ok" for p in doc["points"]), doc["points"]
    for m in ("mamba2", "rwkv"):
        assert by[(m, 16)]["state_bytes"] == by[(m, 64)]["state_bytes"] > 0
    assert by[("rwkv", 16)]["state_bytes"] == by[("rwkv", 16)]["estimated_cache_bytes"] == 5 * 36 * 4 * 4
    assert doc["models"]["paper"]["mamba2"]["params"] == 70_192 and doc["models"]["paper"]["rwkv"]["params"] == 71_460
    md = (out / "decode.md").read_text()
    assert md == render_decode(doc) and "`rwkv` through transformers' RWKV state" in md


def test_decode_skips_gpt2_past_the_cache_limit(tmp_path):
    """No process is started for a point over --max-cache; the table says why."""
    out = tmp_path / "b"
    assert main(["bench", "decode", "--models", "gpt2", "--sizes", "paper", "--positions", "1K,1M",
                 "--max-cache", "64K", "--out", str(out), "--no-plots"]) == 0
    doc = json.loads((out / "decode.json").read_text())
    assert [p["status"] for p in doc["points"]] == ["skipped", "skipped"]
    assert "KV cache would be 1.0 MiB > --max-cache 64.0 KiB" in doc["points"][0]["reason"]
    md = (out / "decode.md").read_text()
    assert md == render_decode(doc) and "gpt2 at P = 1M: skipped" in md


def test_bench_usage_errors(capsys):
    for argv, msg in ((["bench", "decode", "--models", "lstm"], "unknown model 'lstm'"),
                      (["bench", "decode", "--positions", "0"], "positive count"),
                      (["bench", "train", "--special", "16by512"], "BxT"),
                      (["bench", "decode", "--chunk", "1000"], "power of two"),
                      (["bench", "train", "--malloc-mmap-threshold", "64M"], "between 0 and 32M")):
        with pytest.raises(SystemExit) as err:
            main(argv + ["--out", "/nonexistent/never-written"])
        assert err.value.code == 2
        assert msg in capsys.readouterr().err


def test_train_point_with_fixed_mmap_threshold(tmp_path):
    """--malloc-mmap-threshold reaches the measuring process (mallopt succeeds there) and is
    stated in the rendered table."""
    out = tmp_path / "b"
    assert main(["bench", "train", "--models", "lmn", "--lengths", "32", "--tokens-per-batch", "64",
                 "--special", "none", "--repeats", "1", "--malloc-mmap-threshold", "4M",
                 "--out", str(out), "--no-plots"]) == 0
    doc = json.loads((out / "train.json").read_text())
    assert doc["settings"]["mmap_threshold_bytes"] == 4 * 2**20
    assert [p["status"] for p in doc["points"]] == ["ok"]
    md = (out / "train.md").read_text()
    assert md == render_train(doc) and "mmap threshold fixed at 4.0 MiB" in md
