"""What the wheel ships: the modules setuptools finds under the configured ``where``
(pyproject's ``[tool.setuptools.packages.find]``), and no one-off study of ``research/``.
(A proxy for ``pip wheel .``, which takes too long for a test.)"""

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]
RESEARCH = {"lmn.probes.context", "lmn.probes.levels", "lmn.probes.sequential", "lmn.probes.strides",
            "lmn.experiments", "lmn.bench.gpu_session"}


def shipped_modules() -> set[str]:
    """Every package and module the wheel would hold, by dotted name."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    (where,) = config["packages"]["find"]["where"]
    root = REPO / where
    names = set()
    for package in find_packages(str(root)):
        names.add(package)
        folder = root.joinpath(*package.split("."))
        names |= {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    return names


def test_the_wheel_holds_the_library_and_no_research_module():
    names = shipped_modules()
    # what a user runs is there (the check would pass vacuously on an empty list)
    assert {"lmn", "lmn.cli", "lmn.probes.run", "lmn.bench.decode", "lmn.results", "lmn.trainer"} <= names
    assert not names & RESEARCH, sorted(names & RESEARCH)
    assert not any(n == "research" or n.startswith(("research.", "tests")) for n in names)
    assert not any(n.startswith("lmn.experiments.") for n in names)


def test_package_data_is_only_the_c_kernels():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config.get("package-data") == {"lmn": ["kernels/*.c", "py.typed"]}


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_the_distribution_has_a_name_of_its_own_and_one_version():
    # "lmn" on PyPI is an unrelated launcher (it also installs an `lmn` command)
    assert PROJECT["name"] == "torch-lmn"
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["dynamic"]["version"] == {"attr": "lmn.__version__"}
    import lmn

    assert f"## [{lmn.__version__}]" in (REPO / "CHANGELOG.md").read_text()


def test_license_and_typing_marker_ship():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert (REPO / "src" / "lmn" / "py.typed").is_file()


def test_every_install_hint_names_the_distribution():
    """A hint of the form pip install 'lmn[...]' would install the unrelated launcher."""
    places = [*(REPO / "src").rglob("*.py"), REPO / "README.md", *(REPO / "docs").rglob("*.md"),
              *(REPO / "examples").rglob("*.py"), *(REPO / "research").rglob("*.py")]
    bad = [str(p.relative_to(REPO)) for p in places
           if "install 'lmn[" in p.read_text(encoding="utf-8") or "install lmn" in p.read_text(encoding="utf-8")]
    assert not bad, bad
    assert "install it with: pip install 'torch-lmn[" in (REPO / "src" / "lmn" / "cli.py").read_text()
