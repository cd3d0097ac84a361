"""Table 1 is rendered from its JSON alone; incomplete runs are never averaged in."""

import json

from lmn.results import build_table1, main, render_markdown


def _fake_run(root, name, model, seed, val, complete=True, max_iters=5000, val_at_1000=2.5):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "preset": f"paper-{model}", "params": 100,
        "train": {"model": model, "seed": seed, "max_iters": max_iters, "eval_iters": 200, "block_size": 512},
    }))
    (d / "metrics.jsonl").write_text(
        json.dumps({"type": "eval", "step": 1000, "train_loss": 2.0, "val_loss": val_at_1000, "elapsed_s": 9.0}) + "\n"
        + json.dumps({"type": "eval", "step": 4000, "train_loss": 2.0, "val_loss": 2.5, "elapsed_s": 9.0}) + "\n")
    if complete:
        (d / "final.json").write_text(json.dumps({
            "step": max_iters, "final_train_loss": val - 0.1, "final_val_loss": val, "whole_val_loss": val + 0.01,
            "whole_val_bits_per_char": (val + 0.01) / 0.6931, "wall_time_s": 60.0, "train_time_s": 50.0,
            "tokens_per_s": 1000.0, "threads": 1, "device": "cpu", "machine": {"cpu": "x"}, "versions": {},
        }))
    return d


def test_table1_summary_and_markdown(tmp_path):
    runs = [
        _fake_run(tmp_path, "lmn-a", "lmn", 1, 1.8),
        _fake_run(tmp_path, "lmn-b", "lmn", 2, 1.9),
        _fake_run(tmp_path, "gpt2-a", "gpt2", 1, 2.0),
        _fake_run(tmp_path, "gpt2-b", "gpt2", 2, 9.9, complete=False),
    ]
    table = build_table1(runs)
    assert abs(table["summary"]["lmn"]["final_val_loss"]["mean"] - 1.85) < 1e-12
    assert table["summary"]["gpt2"]["final_val_loss"]["n"] == 1  # the unfinished run is not averaged
    md = render_markdown(json.loads(json.dumps(table)))  # from the JSON alone
    assert "1.8500 ± 0.0707 (n=2)" in md
    assert "incomplete (last evaluation at step 4000 of 5000)" in md
    assert "1.7742" in md and "1.9704" in md  # the paper's figures sit beside ours
    out = tmp_path / "t1"
    assert main(["table1", *map(str, runs), "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == render_markdown(json.loads(out.with_suffix(".json").read_text()))
    assert main(["table1", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_table1_flags_runs_off_the_paper_protocol(tmp_path):
    runs = [
        _fake_run(tmp_path, "lmn-a", "lmn", 1, 1.8, val_at_1000=2.2),
        _fake_run(tmp_path, "lmn-short", "lmn", 1, 2.1, max_iters=1000, val_at_1000=2.1),
        _fake_run(tmp_path, "mamba-a", "mamba", 1, 1.7, max_iters=1000, val_at_1000=1.7),
    ]
    table = build_table1(runs)
    assert [r["protocol"] for r in table["runs"]] == ["paper", "max_iters=1000", "max_iters=1000"]
    # one model under two protocols: summarised apart, never averaged together
    assert table["summary"]["lmn [paper]"]["final_val_loss"]["mean"] == 1.8
    assert table["summary"]["lmn [max_iters=1000]"]["final_val_loss"]["mean"] == 2.1
    assert table["summary"]["mamba"]["val_loss_at_common_step"]["mean"] == 1.7
    md = render_markdown(json.loads(json.dumps(table)))
    lines = [line for line in md.splitlines() if line.startswith("| LMN | max_iters=1000")]
    assert len(lines) == 1 and "1.7742" not in lines[0]  # the paper's figure only beside paper-protocol runs
    assert "1.7742" in md


def test_another_corpus_gets_its_title_no_paper_figures_and_exact_commands(tmp_path):
    runs = [_fake_run(tmp_path, "lmn-s1337", "lmn", 1337, 1.6, max_iters=1000),
            _fake_run(tmp_path, "gpt2-s1338", "gpt2", 1338, 1.9, max_iters=1000)]
    for run in runs:  # as lmn train writes them: the data path and the corpus record
        cfg = json.loads((run / "config.json").read_text())
        cfg["train"].update(data="runs/data/code.txt", eval_iters=20)
        cfg["corpus"] = {"path": "runs/data/code.txt", "sha256": "ab" * 32, "n_chars": 10, "vocab_size": 9}
        (run / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "code"
    assert main(["table1", *map(str, runs), "--out", str(out), "--title", "Source code", "--no-paper"]) == 0
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# Source code\n") and "1.7742" not in md and "1.9704" not in md
    command = next(line for line in md.splitlines() if line.startswith("lmn train --preset paper-gpt2"))
    assert set(command.split()) == {"lmn", "train", "--preset", "paper-gpt2", "--seed", "1338", "--data",
                                    "runs/data/code.txt", "--max-iters", "1000", "--eval-iters", "20", "--out",
                                    (tmp_path / "gpt2-s1338").as_posix()}
    assert "abababab" in md
    assert md == render_markdown(json.loads(out.with_suffix(".json").read_text()))


def test_runs_finished_on_different_machines_say_where(tmp_path):
    a = _fake_run(tmp_path, "lmn-a", "lmn", 1, 1.8)
    b = _fake_run(tmp_path, "gpt2-a", "gpt2", 1, 2.0)
    md = render_markdown(build_table1([a, b]))
    assert "finished on" not in md  # one machine: the table as before
    final = json.loads((b / "final.json").read_text())
    final.update(device="cuda", machine={"cpu": "y", "gpu": "NVIDIA H200"})
    (b / "final.json").write_text(json.dumps(final))
    md = render_markdown(json.loads(json.dumps(build_table1([a, b]))))
    assert "| complete | NVIDIA H200 |" in md and "| complete | x, 1 thread(s) |" in md
    assert "do not compare across such rows" in md
