"""The package's layering, read from the source (AST; nothing is imported).

* Nothing in the library below ``bench/`` imports ``lmn.bench``: the benchmarks may import
  the library, never the reverse (``cli.py`` dispatches ``lmn bench`` and is exempt).
* The core and the runtime forms (model, attention, memory, tree, state, native, export,
  graphs, generation, reference, kernels, ...) import none of ``lmn.kinds``, ``lmn.trainer``,
  ``lmn.bench``: the registry, the trainer and the benchmarks are built on them. A kind of
  a runtime form is defined in ``kinds/`` (``lmn.kinds.lmn_runtimes``), not beside it.
* Every rename of a written file goes through :mod:`lmn.atomic` (temporary in the same
  directory, fsync, rename): no ``os.replace`` / ``os.rename`` elsewhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "lmn"

# module (relative to src/lmn) -> why it may call os.replace / os.rename itself
RENAME_EXCEPTIONS: dict[str, str] = {}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _package(rel: Path) -> list[str]:
    """``lmn.trainer.loop`` -> ``["lmn", "trainer"]`` (the package a relative import starts from)."""
    return ["lmn", *rel.with_suffix("").parts][:-1]  # a package's __init__: its own package


def _imported(rel: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """Every module name ``tree`` imports, made absolute, with its line."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(rel)[: len(_package(rel)) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]  # from lmn import bench
    return out


def test_the_relative_import_resolution_itself():
    tree = ast.parse("from ..bench.common import x\nfrom . import bench\nfrom .. import atomic\n")
    names = [m for _, m in _imported(Path("trainer/loop.py"), tree)]
    assert "lmn.bench.common" in names
    assert "lmn.trainer.bench" in names  # "from . import bench" inside lmn.trainer
    assert "lmn.atomic" in names
    names = [m for _, m in _imported(Path("kinds/__init__.py"), ast.parse("from ..bench import x\n"))]
    assert "lmn.bench" in names


def test_nothing_below_bench_imports_bench():
    offenders = []
    for rel, tree in _modules():
        if rel.parts[0] == "bench" or rel == Path("cli.py"):
            continue
        for line, mod in _imported(rel, tree):
            if mod == "lmn.bench" or mod.startswith("lmn.bench."):
                offenders.append(f"src/lmn/{rel}:{line} imports {mod}")
    assert not offenders, "library modules import lmn.bench (the benchmarks sit above the library):\n" + \
        "\n".join(offenders)


def _rename_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    aliases = set()  # from os import replace / rename [as x]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            aliases |= {a.asname or a.name for a in node.names if a.name in ("replace", "rename", "renames")}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("replace", "rename", "renames") \
                and isinstance(f.value, ast.Name) and f.value.id == "os":
            found.append((node.lineno, f"os.{f.attr}"))
        elif isinstance(f, ast.Name) and f.id in aliases:
            found.append((node.lineno, f.id))
    return found


def test_every_rename_goes_through_lmn_atomic():
    offenders = []
    for rel, tree in _modules():
        if rel == Path("atomic.py") or str(rel) in RENAME_EXCEPTIONS:
            continue
        offenders += [f"src/lmn/{rel}:{line}: {call}" for line, call in _rename_calls(tree)]
    assert not offenders, "write through lmn.atomic (atomic_write / atomic_path / atomic_dir / rename) instead of:\n" \
        + "\n".join(offenders)


def test_the_rename_finder_finds_renames():
    tree = ast.parse("import os\nos.replace(a, b)\nfrom os import rename as mv\nmv(a, b)\nx.replace('a', 'b')\n")
    assert _rename_calls(tree) == [(2, "os.replace"), (4, "mv")]
    atomic = ast.parse((SRC / "atomic.py").read_text(encoding="utf-8"))
    assert _rename_calls(atomic)  # the one place that renames


def test_the_oracle_and_the_records_live_beside_the_core():
    assert (SRC / "materialized.py").is_file() and not (SRC / "bench" / "materialized.py").exists()
    assert (SRC / "records.py").is_file() and (SRC / "atomic.py").is_file()
    defs = {}
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("machine_info", "git_commit"):
                defs.setdefault(node.name, []).append(str(rel))
    assert defs == {"machine_info": ["records.py"], "git_commit": ["records.py"]}


# the modules above the core (relative to src/lmn; a folder covers what is in it) -> why they
# may import the registry, the trainer or the benchmarks. Everything else is core or runtime.
ABOVE_THE_CORE: dict[str, str] = {
    "kinds": "the registry itself, and the kinds of the runtime forms (lmn_runtimes.py)",
    "baselines": "peer models, each registered as a kind in its own file",
    "timeseries": "the forecasting kinds, registered like the others",
    "trainer": "the training loop: builds models through the registry",
    "bench": "the benchmarks: time every registered kind",
    "tasks": "the probe tasks, run by the trainer and `lmn probe`",
    "probes": "`lmn probe`: trains and scores registered kinds",
    "cli.py": "dispatches every command",
    "limits.py": "sizes a registered kind's model before it is built (trainer, load_run, probe, hf)",
    "hf.py": "`lmn convert`: reads an `lmn train` run (lmn.trainer.load_run)",
    "demo.py": "the demo command, above the library",
    "results.py": "renders result tables of every registered kind and preset",
    "train.py": "the trainer's former module name: re-exports lmn.trainer",
}
FORBIDDEN_BELOW = ("lmn.kinds", "lmn.trainer", "lmn.bench")


def _above_the_core(rel: Path) -> bool:
    return rel.parts[0] in ABOVE_THE_CORE


def test_the_core_and_the_runtime_forms_import_no_registry_trainer_or_bench():
    core = {str(rel) for rel, _ in _modules() if not _above_the_core(rel)}
    must_be_core = {"model.py", "attention.py", "memory.py", "tree.py", "state.py", "pinned.py", "layout.py",
                    "native.py", "export.py", "graphs.py", "generation.py", "reference.py", "kernels/__init__.py"}
    assert must_be_core <= core, must_be_core - core
    assert all((SRC / name).exists() for name in ABOVE_THE_CORE), "a stale entry in ABOVE_THE_CORE"
    offenders = []
    for rel, tree in _modules():
        if _above_the_core(rel):
            continue
        for line, mod in _imported(rel, tree):
            if any(mod == top or mod.startswith(top + ".") for top in FORBIDDEN_BELOW):
                offenders.append(f"src/lmn/{rel}:{line} imports {mod}")
    assert not offenders, "core/runtime modules import the registry, the trainer or the benchmarks (define the " \
        "kind in lmn/kinds/, load runs in the caller):\n" + "\n".join(sorted(set(offenders)))


def test_the_runtime_kinds_are_defined_in_the_kinds_layer():
    tree = ast.parse((SRC / "kinds" / "__init__.py").read_text(encoding="utf-8"))
    REGISTRY = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "REGISTRY")
    assert REGISTRY["lmn-onnx"] == REGISTRY["lmn-graph"] == "lmn.kinds.lmn_runtimes"
    assert all(value.startswith(("lmn.kinds.", "lmn.baselines.", "lmn.timeseries."))
               for value in REGISTRY.values()), REGISTRY
