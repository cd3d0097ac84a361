"""`lmn probe`: a short probe run through the command line (tiny models, a few steps):
the lr sweep and seeds, the JSON/markdown/plots, state bytes, accumulation, and refusals."""

import json

import pytest

from lmn.cli import main
from lmn.probes.run import best_lrs, headline

TINY_LMN = "lmn:d_model=8,n_layers=1,n_heads=2"
TINY_GPT2 = "gpt2:n_embd=8,n_layer=1,n_head=2,n_inner=16"
BUDGET = ["--task-opt", "vocab=16", "--task-opt", "n_test=16", "--steps", "3", "--batch-size", "4",
          "--eval-iters", "1", "--lrs", "1e-3,1e-2", "--seeds", "1,2", "--sweep", "first"]


def probe(tmp_path, *args):
    return main(["probe", *args, "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")])


def test_probe_mqar_end_to_end(tmp_path, capsys):
    cells = ["--cell", "block_size=16,pairs=2", "--cell", "block_size=32,pairs=4"]
    assert probe(tmp_path, "mqar", "--model", TINY_LMN, "--model", TINY_GPT2, *cells, *BUDGET) == 0
    doc = json.loads((tmp_path / "out" / "mqar.json").read_text())
    assert doc["task"] == "mqar" and doc["budget"]["steps"] == 3 and doc["budget"]["lrs"] == [1e-3, 1e-2]
    runs = doc["runs"]
    # per model: 2 sweep runs + 1 further seed on the first cell; 2 seeds on the second
    assert len(runs) == 2 * (2 + 1 + 2)
    chosen = best_lrs(doc)
    for model in (r["model"] for r in runs):
        lr = doc["chosen_lr"][model]["block_size=16,pairs=2"]
        assert lr == chosen[model]["block_size=16,pairs=2"] == doc["chosen_lr"][model]["block_size=32,pairs=4"]
    r = runs[0]
    assert {"accuracy", "loss", "count"} <= set(r["test"]) and r["test"]["count"] == 16 * 2
    assert any(k.startswith("accuracy@") for k in r["test"])
    # state bytes from the decode adapters: GPT-2's KV cache = 2 * layers * T * d * 4
    assert doc["state"][f"{TINY_GPT2[:4]}[n_embd=8,n_head=2,n_inner=16,n_layer=1]|block_size=32,pairs=4"][
        "state_bytes"] == 2 * 1 * 32 * 8 * 4
    lmn_state = doc["state"]["lmn[d_model=8,n_heads=2,n_layers=1]|block_size=32,pairs=4"]
    assert lmn_state["state_bytes"] == lmn_state["state_bytes_predicted"] and lmn_state["slots"] > 0
    rows = headline(doc)
    assert len(rows) == 4 and all(len(row["seeds"]) == 2 for row in rows)
    md = (tmp_path / "out" / "mqar.md").read_text()
    assert "| lmn[d_model=8,n_heads=2,n_layers=1] |" in md and "Learning-rate sweep" in md
    for png in ("mqar_vs_distance.png", "mqar_vs_length.png", "mqar_vs_state.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    # a second call with the same budget trains nothing new
    capsys.readouterr()
    assert probe(tmp_path, "mqar", "--model", TINY_LMN, *cells, *BUDGET) == 0
    assert "lr 0.001 seed 1" not in capsys.readouterr().err
    assert len(json.loads((tmp_path / "out" / "mqar.json").read_text())["runs"]) == 10
    # another budget into the same result file is refused
    with pytest.raises(SystemExit) as err:
        probe(tmp_path, "mqar", "--model", TINY_LMN, *cells, *BUDGET[:-4], "--steps", "4")
    assert err.value.code == 2
    assert "another budget" in capsys.readouterr().err
    # re-render from the JSON alone
    (tmp_path / "out" / "mqar.md").unlink()
    assert probe(tmp_path, "mqar", "--report-only") == 0 and (tmp_path / "out" / "mqar.md").exists()


def test_probe_lr_from_another_probe(tmp_path):
    assert probe(tmp_path, "mqar", "--model", TINY_LMN, "--cell", "block_size=16,pairs=2", *BUDGET) == 0
    lr = json.loads((tmp_path / "out" / "mqar.json").read_text())["chosen_lr"][
        "lmn[d_model=8,n_heads=2,n_layers=1]"]["block_size=16,pairs=2"]
    assert probe(tmp_path, "distance", "--model", TINY_LMN, "--cell", "block_size=24,distances=1;2;4;8",
                 "--task-opt", "n_test=8", "--steps", "2", "--batch-size", "4", "--seeds", "1",
                 "--lr-from", str(tmp_path / "out" / "mqar.json")) == 0
    doc = json.loads((tmp_path / "out" / "distance.json").read_text())
    assert [r["lr"] for r in doc["runs"]] == [lr]
    # a further seed later, with the same sweep seed: added for the model, budget's seeds extended
    assert probe(tmp_path, "distance", "--model", TINY_LMN, "--cell", "block_size=24,distances=1;2;4;8",
                 "--task-opt", "n_test=8", "--steps", "2", "--batch-size", "4", "--seeds", "1,2",
                 "--lr-from", str(tmp_path / "out" / "mqar.json")) == 0
    doc = json.loads((tmp_path / "out" / "distance.json").read_text())
    assert doc["budget"]["seeds"] == [1, 2] and [r["seed"] for r in doc["runs"]] == [1, 2]
    assert {f"accuracy@{d}" for d in (1, 2, 4, 8)} <= set(doc["runs"][0]["test"])
    md = (tmp_path / "out" / "distance.md").read_text()  # no empty sweep table: where the lrs came from
    assert "Learning-rate sweep" not in md and "each model's lr comes from" in md and "mqar.json" in md


def test_probe_refusals_and_dispatch(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        probe(tmp_path, "nope", "--model", "lmn")
    assert err.value.code == 2 and "unknown probe 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe(tmp_path, "mqar", "--model", "nosuchkind")
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe(tmp_path, "mqar")
    assert "at least one --model" in capsys.readouterr().err
    # the probes of trained runs are studies in research/: the error says where they went
    for name in ("context", "levels", "sequential"):
        with pytest.raises(SystemExit) as err:
            probe(tmp_path, name, "--help")
        assert err.value.code == 2 and f"python -m research.{name}" in capsys.readouterr().err


def test_probe_lr_from_length_only_options_and_merge(tmp_path, capsys):
    """--lr-from takes the kind's lr for a model whose options only widen its position table
    (gpt2:n_positions=N), not for one with other options; --merge joins a probe run in parts."""
    from lmn.probes.run import ModelSpec, lr_for

    chosen = {"gpt2": 0.003, "lmn": 0.01}
    assert lr_for(ModelSpec.parse("gpt2:n_positions=4160"), chosen) == 0.003
    assert lr_for(ModelSpec.parse("lmn"), chosen) == 0.01
    assert lr_for(ModelSpec.parse("lmn:stride=3"), chosen) is None  # another model: no silent reuse
    assert lr_for(ModelSpec.parse("mamba2"), chosen) is None
    assert lr_for(ModelSpec.parse("lmn:n_positions=9,stride=3"), chosen) is None
    sweep = tmp_path / "sweep"
    assert main(["probe", "mqar", "--model", TINY_LMN, "--model", TINY_GPT2, "--cell", "block_size=16,pairs=2",
                 *BUDGET[:-4], "--seeds", "1", "--out", str(sweep), "--runs-dir", str(tmp_path / "r0")]) == 0
    gpt2_lr = json.loads((sweep / "mqar.json").read_text())["chosen_lr"][
        "gpt2[n_embd=8,n_head=2,n_inner=16,n_layer=1]"]["block_size=16,pairs=2"]
    common = ["--cell", "block_size=24,distances=1;2;4", "--task-opt", "n_test=8", "--steps", "2",
              "--batch-size", "4", "--seeds", "1", "--lr-from", str(sweep / "mqar.json")]
    wide = TINY_GPT2 + ",n_positions=24"
    for i, model in enumerate((TINY_LMN, wide)):
        assert main(["probe", "distance", "--model", model, *common, "--out", str(tmp_path / f"part{i}"),
                     "--runs-dir", str(tmp_path / f"r{i + 1}")]) == 0
    part = json.loads((tmp_path / "part1" / "distance.json").read_text())
    assert [r["lr"] for r in part["runs"]] == [gpt2_lr]
    merged = tmp_path / "merged"
    assert main(["probe", "distance", "--out", str(merged), "--merge", str(tmp_path / "part0" / "distance.json"),
                 "--merge", str(tmp_path / "part1" / "distance.json")]) == 0
    doc = json.loads((merged / "distance.json").read_text())
    assert sorted(r["model"] for r in doc["runs"]) == sorted([ModelSpec.parse(TINY_LMN).label,
                                                              ModelSpec.parse(wide).label])
    assert len(doc["state"]) == 2 and len(doc["commands"]) == 2 and (merged / "distance.md").exists()
    # merging again adds nothing; a result file of another budget is refused
    assert main(["probe", "distance", "--out", str(merged), "--merge", str(tmp_path / "part0" / "distance.json")]) == 0
    assert len(json.loads((merged / "distance.json").read_text())["runs"]) == 2
    other = json.loads((tmp_path / "part0" / "distance.json").read_text())
    other["budget"]["steps"] = 3
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(["probe", "distance", "--out", str(merged), "--merge", str(tmp_path / "other.json")])
    assert err.value.code == 2 and "another budget" in capsys.readouterr().err


def test_probe_checks_every_model_and_cell_before_training(tmp_path, capsys, monkeypatch):
    """A bad second model (or cell, lr, size) fails in seconds, naming it, before the first
    model trains: exit status 2, one line, nothing written (issue 23)."""
    import time

    one_cell = ["--cell", "block_size=16,pairs=2", *BUDGET]
    cases = [
        (["--model", TINY_LMN, "--model", "gpt2:n_embd=7,n_layer=1,n_head=2", *one_cell],
         "--model gpt2:n_embd=7,n_layer=1,n_head=2: n_embd (7) must be divisible by n_head (2)"),
        (["--model", TINY_LMN, "--model", "lmn:nosuch=1", *one_cell], "--model lmn:nosuch=1: unknown LMNConfig field"),
        (["--model", TINY_LMN, "--model", "lmn:bad", *one_cell], "--model lmn:bad: expected KEY=VALUE"),
        (["--model", TINY_LMN, "--model", TINY_GPT2 + ",n_positions=8", *one_cell],
         "at cell block_size=16,pairs=2: block_size 16 exceeds the gpt2 model's 8 positions"),
        (["--model", TINY_LMN, "--model", "lmn:d_model=65536,n_heads=2", *one_cell],
         "--model lmn:d_model=65536,n_heads=2 at cell block_size=16,pairs=2: training lmn"),
        (["--model", TINY_LMN, "--cell", "block_size=16,pairs=2", "--cell", "block_size=8,pairs=4", *BUDGET],
         "--cell block_size=8,pairs=4: MQAR needs block_size >= 4 * pairs"),
        (["--model", TINY_LMN, "--cell", "block_size=16.5", *BUDGET], "--cell block_size=16.5: block_size must be an "
                                                                      "integer >= 1"),
        (["--model", TINY_LMN, *one_cell, "--lrs", "1e-3,-1"], "--lrs: every learning rate must be a finite number > 0"),
        (["--model", TINY_LMN, *one_cell, "--lrs", "fast"], "--lrs must be comma-separated numbers"),
        (["--model", TINY_LMN, *one_cell, "--seeds", "1,x"], "--seeds must be comma-separated whole numbers"),
    ]
    for argv, needle in cases:
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as err:
            probe(tmp_path, "mqar", *argv)
        stderr = capsys.readouterr().err
        assert err.value.code == 2, stderr
        assert len(stderr.strip().splitlines()) == 1 and needle in stderr.splitlines()[0], (needle, stderr)
        assert time.perf_counter() - t0 < 20
        assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists(), argv
    # the machine's memory (LMN_MEMORY_LIMIT here) is one of the checks
    monkeypatch.setenv("LMN_MEMORY_LIMIT", "1kB")
    with pytest.raises(SystemExit) as err:
        probe(tmp_path, "mqar", "--model", TINY_LMN, *one_cell)
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and "needs ~" in stderr and "LMN_MEMORY_LIMIT allows 1.0 kB" in stderr, stderr
    assert not (tmp_path / "runs").exists()


def test_probe_shows_its_progress(tmp_path, capsys):
    """A line when the checks pass, at each cell's start and end, at each run's start and
    end, and the trainer's own step lines in between (stderr)."""
    assert probe(tmp_path, "mqar", "--model", TINY_LMN, "--cell", "block_size=16,pairs=2", *BUDGET[:-6],
                 "--lrs", "1e-3", "--seeds", "1") == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "1 model(s) x 1 cell(s) checked" in lines[0] and "1 run(s) of 3 steps" in lines[0]
    assert "cell 1/1 block_size=16,pairs=2: start" in lines[1]
    assert "lr 0.001 seed 1: training (run 1/1)" in lines[2]
    assert any(line.startswith("    step 3/3 [") for line in lines), err
    assert "test acc" in lines[-2] and "cell 1/1 block_size=16,pairs=2: done" in lines[-1]
