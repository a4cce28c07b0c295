"""Each stage's key hashes the code its outputs come from: every first-party module a stage's run reaches."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline import stages

ROOT = Path(__file__).resolve().parent.parent
STAGE_PACKAGES = ("curation", "training", "evaluation", "merging")
# Read by a stage, but not shaping what it writes: errors, keys and the workspace layout itself.
NOT_OUTPUT_CODE = {"polymath/errors.py", "polymath/keys.py", "polymath/workspace.py", "polymath/registry.py",
                   "polymath/quiet.py", "polymath/threads.py", "polymath/__init__.py",
                   "polymath/cpu_kernels.py",  # reached through the workspace only to record the MKL code path
                   "evaluation/__init__.py"}  # a docstring


def _module_file(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] not in (*STAGE_PACKAGES, "polymath"):
        return None
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.exists():
            return candidate.relative_to(ROOT).as_posix()
    return None


def _imported(path: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the importing module's package
                base = Path(path).parent.parts[: len(Path(path).parent.parts) - (node.level - 1)]
                names = [".".join((*base, node.module))]
            else:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {f for n in names if (f := _module_file(n))}
    return found


def closure(entry: str) -> set[str]:
    """First-party stage-package and ground-floor files ``entry`` reaches by imports (function-level too)."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += sorted(_imported(path) - seen)
    return seen


def covered(path: str, code: tuple[str, ...]) -> bool:
    return any(path == c or path.startswith(c.rstrip("/") + "/") for c in code)


def test_every_module_a_stage_reaches_is_in_its_key():
    # the stage module's own imports of pipeline/ (config, other stages) are keyed through config and inputs
    missing = {}
    for name, stage in stages().items():
        entry = f"pipeline/{name}.py"
        reached = {p for p in closure(entry) - {entry} if p not in NOT_OUTPUT_CODE and not p.startswith("pipeline/")}
        reached -= {p for p in reached if p.endswith("/config.py")}  # config models: their values are in the key
        gaps = sorted(p for p in reached if not covered(p, stage.code))
        if gaps:
            missing[name] = gaps
    assert missing == {}


def test_the_closure_follows_function_level_and_relative_imports():
    reached = closure("pipeline/evaluate.py")
    assert "evaluation/sampling.py" in reached  # imported inside run()
    assert "evaluation/hf_engine.py" in reached  # imported by sampling
    assert "evaluation/report.py" not in reached


def test_every_stage_takes_its_inputs_by_keyword_only():
    """``run(cfg, ws, *, inputs...)``: no stage can be called with positional inputs."""
    import inspect

    for name in stages():
        params = list(inspect.signature(stages()[name].run).parameters.values())
        assert [p.name for p in params[:2]] == ["cfg", "ws"], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]), name
        assert "force" in [p.name for p in params[2:]], name
