"""The model registry: every kind is one file plus one registration, and the trainer,
bench and CLI take everything about a kind from it. The two recurrent peers added through
it (Mamba-2, RWKV) build at the paper's budget, decode through their caches exactly as
their parallel forward, and train with `lmn train`."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from lmn.kinds import REGISTRY, get_kind, kind_names
from lmn.timeseries import TS_KINDS  # forecasting kinds: values in, not token ids (tests/tasks/test_etth1.py)

pytest.importorskip("transformers")

SRC = Path(__file__).resolve().parents[2] / "src" / "lmn"
TINY = {
    "lmn": {"d_model": 8, "n_layers": 1, "n_heads": 2},
    "gpt2": {"n_embd": 8, "n_layer": 1, "n_head": 2, "n_inner": 16, "n_positions": 32},
    "mamba": {"hidden_size": 8, "num_hidden_layers": 1},
    "mamba2": {"hidden_size": 8, "num_hidden_layers": 1, "head_dim": 4, "chunk_size": 8},
    "rwkv": {"hidden_size": 8, "num_hidden_layers": 2},
    "loglinear-mamba2": {"hidden_size": 8, "num_hidden_layers": 1, "head_dim": 4, "chunk_size": 4},
    "s4d": {"d_model": 8, "n_layers": 1, "d_state": 4},
}


def _build(name, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "mambapy is not installed" is not under test
        return get_kind(name).build({"vocab_size": 11, **TINY.get(name, TINY["lmn"]), **config})


@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in TS_KINDS])
def test_every_kind_builds_and_states_its_contract(name):
    kind = get_kind(name)
    assert kind.name == name and kind.uses <= {"train", "decode", "bench-train"} and kind.uses
    assert {"paper", "large", "tiny"} <= set(kind.sizes)
    defaults = kind.config_class().to_dict()
    assert kind.normalize({}) == defaults == kind.config_class.from_dict(defaults).to_dict()
    model = _build(name)
    assert model(torch.randint(11, (2, 7))).shape == (2, 7, 11)
    assert kind.size_config("paper")["vocab_size"] == 65


def test_unknown_kind_and_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'lstm'; choose from lmn, .*rwkv"):
        get_kind("lstm")
    with pytest.raises(ValueError, match="num_hidden_layers must be >= 2"):
        _build("rwkv", num_hidden_layers=1)
    with pytest.raises(ValueError, match="divisible by head_dim"):
        _build("mamba2", head_dim=3)
    assert kind_names("train") == ("lmn", "gpt2", "mamba", "mamba2", "rwkv", "loglinear-mamba2", "s4d", *TS_KINDS)


@pytest.mark.parametrize("name, params", [("mamba2", 70_192), ("rwkv", 71_460), ("loglinear-mamba2", 72_544),
                                          ("s4d", 71_360)])
def test_recurrent_peers_match_the_paper_budget(name, params):
    kind = get_kind(name)
    model = kind.build(kind.size_config("paper"))
    assert kind.bench.reported_params(model, model.config) == params  # LMN: 71,489


@pytest.mark.parametrize("name", ["mamba2", "rwkv", "gpt2", "lmn", "lmn-native", "loglinear-mamba2", "s4d"])
def test_decoder_continues_the_parallel_forward(name):
    """Prefill in two chunks, then single steps: the logits of one parallel pass."""
    if get_kind(name).bench.unavailable() is not None:
        pytest.skip(get_kind(name).bench.unavailable())
    torch.manual_seed(0)
    model = _build(name).eval()
    idx = torch.randint(11, (1, 12))
    with torch.no_grad():
        full = model(idx)
        decoder = get_kind(name).decoder(model, 4)
        decoder.prefill(idx[:, :4])
        decoder.prefill(idx[:, 4:8])
        steps = torch.stack([decoder.step(idx[:, t]) for t in range(8, 12)], dim=1)
    assert (steps - full[:, 8:]).abs().max() < 1e-4
    assert decoder.state_bytes() > 0
    predicted = get_kind(name).state_bytes
    if predicted is not None:
        assert decoder.state_bytes() == predicted(model.config.to_dict(), 12)


@pytest.mark.parametrize("name", [n for n in kind_names("train") if n not in TS_KINDS])
def test_smoke_preset_trains_every_kind(tmp_path, capsys, name):
    """`lmn train --preset smoke --model NAME`: each kind's own tiny size."""
    from lmn.cli import main
    from tests.lmn_testdata import small_corpus

    argv = ["train", "--preset", "smoke", "--model", name, "--data", str(small_corpus(tmp_path)),
            "--out", str(tmp_path / name), "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1",
            "--block-size", "16", "--batch-size", "2", "--no-whole-val"]
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / name / "config.json").read_text())["train"]
    assert config["model_size"] == "tiny" and config["model_config"] == get_kind(name).normalize(
        {**get_kind(name).sizes["tiny"], "vocab_size": config["model_config"]["vocab_size"]})


def test_paper_presets_of_the_recurrent_peers(tmp_path, capsys):
    from lmn.cli import main
    from lmn.trainer import PRESETS
    from tests.lmn_testdata import small_corpus

    assert {"paper-mamba2", "paper-rwkv"} <= set(PRESETS)
    data = small_corpus(tmp_path)
    for name in ("mamba2", "rwkv"):
        opts = [x for k, v in TINY[name].items() for x in ("--model-opt", f"{k}={v}")]
        argv = ["train", "--preset", f"paper-{name}", "--data", str(data), "--out", str(tmp_path / name),
                "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--block-size", "16",
                "--batch-size", "2", "--no-whole-val", *opts]
        assert main(argv) == 0, capsys.readouterr().err
        assert (tmp_path / name / "final.json").is_file()
    capsys.readouterr()
    status, _, err = main_status(["train", "--preset", "smoke", "--model-size", "huge", "--out", str(tmp_path / "x"),
                                  "--data", str(data)], capsys)
    assert status == 2 and "has no size 'huge'" in err and len(err.strip().splitlines()) == 1


def main_status(argv, capsys):
    from lmn.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_no_kind_is_special_cased_outside_its_file():
    """Train, bench, results and the CLI compare no model name with a literal."""
    names = "|".join(re.escape(n) for n in REGISTRY)
    pattern = re.compile(rf"""(==|!=|\bin|startswith\()\s*\(?\s*["']({names})["']""")
    files = [*SRC.glob("trainer/*.py"), *SRC.glob("bench/*.py"), SRC / "results.py", SRC / "cli.py", *SRC.glob("tasks/*.py")]
    hits = [f"{p.name}:{n}: {line.strip()}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits, hits


def test_the_lmn_r_preset_is_the_paper_protocol_with_the_measured_mechanisms():
    from lmn import LMN, LMNConfig
    from lmn.trainer import PRESETS, preset_config

    cfg = preset_config("lmn-r")
    paper = preset_config("paper-lmn")
    assert {k: v for k, v in vars(cfg).items() if k != "model_config"} == \
        {k: v for k, v in vars(paper).items() if k != "model_config"}
    model = LMN(LMNConfig(vocab_size=65, **cfg.model_config))
    assert model.config.summarizer == "gated" and model.config.window == 16 and model.config.sink
    assert model.num_parameters() <= 72_000  # the budget
    assert "lmn-r" in PRESETS and PRESETS["paper-lmn"] == {"model": "lmn"}
