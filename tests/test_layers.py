"""The import graph follows the layer order: a package imports only its own modules and the floors below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. Packages on one floor do not import each other: the stage packages meet only in pipeline/.
LAYERS = [
    ("polymath",),
    ("curation", "training", "evaluation", "merging"),
    ("pipeline",),
    ("experiments",),
    ("tasks",),
    ("flows",),
]
FLOOR = {pkg: i for i, floor in enumerate(LAYERS) for pkg in floor}
# Only flows/ and the task layer below them import Prefect: every stage runs from a notebook without it.
PREFECT_FREE = ("polymath", "curation", "training", "evaluation", "merging", "pipeline", "experiments")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(root: Path) -> list[str]:
    bad = []
    for pkg, floor in FLOOR.items():
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            for line, top in imports(path):
                if top == pkg:
                    continue
                if top in FLOOR and FLOOR[top] >= floor:
                    bad.append(f"{rel}:{line} imports {top} (floor {FLOOR[top]}) from floor {floor}")
                if top == "prefect" and pkg in PREFECT_FREE:
                    bad.append(f"{rel}:{line} imports prefect; stage packages stay free of Prefect")
    return sorted(bad)


def test_no_import_goes_against_the_layer_order():
    assert violations(ROOT) == []


def test_the_check_catches_a_stage_package_importing_another(tmp_path):
    for pkg in FLOOR:
        (tmp_path / pkg).mkdir()
    (tmp_path / "curation" / "data.py").write_text("def f():\n    from training.verifiers import reward\n")
    (tmp_path / "polymath" / "config.py").write_text("import pipeline.config\n")
    (tmp_path / "merging" / "flow.py").write_text("from prefect import flow\n")
    (tmp_path / "pipeline" / "task.py").write_text("import prefect\n")
    assert violations(tmp_path) == [
        "curation/data.py:2 imports training (floor 1) from floor 1",
        "merging/flow.py:1 imports prefect; stage packages stay free of Prefect",
        "pipeline/task.py:1 imports prefect; stage packages stay free of Prefect",
        "polymath/config.py:1 imports pipeline (floor 2) from floor 0",
    ]


@pytest.mark.parametrize("pkg", sorted(FLOOR))
def test_no_source_file_is_over_400_lines(pkg):
    long = [f"{p.relative_to(ROOT)}: {n}" for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert long == []
