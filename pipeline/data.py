"""The data stage: the configured source read, normalized, deduplicated and split into train and test."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.config import PolymathConfig
from polymath.errors import StageError
from polymath.records import Problem
from polymath.keys import key_section
from polymath.workspace import Workspace

from .stage import StageRef, file_inputs, key_of, ref, reusable, stage


# the data config checks each source's verifier against its format (verifiers.py), so a verifier change re-keys it
@stage("data", code=("curation/data.py", "curation/data_config.py", "curation/domains.py", "curation/traces.py",
                     "polymath/verifiers.py"))
def run(cfg: PolymathConfig, ws: Workspace, *, force: bool = False) -> StageRef:
    from curation.data import load_problems

    section = key_section(cfg.data)
    files = [p for src in cfg.data.resolved_sources() if src.format != "reasoning-gym" for p in (src.path, src.test_path)]
    inputs = file_inputs(ws, files)
    key = key_of("data", section, inputs)
    if done := reusable(ws, "data", key, "data", force):
        return done
    with ws.stage_run("data", key, section, inputs) as out:
        problems = load_problems(cfg.data)
        write_problems(problems.train, out.tmp / "train.parquet")
        write_problems(problems.test, out.tmp / "test.parquet")
        out.summary.update(
            source=problems.source,
            rows_read=problems.rows_read,
            duplicates_dropped=problems.duplicates_dropped,
            train=len(problems.train),
            test=len(problems.test),
            domains={d: len(v) for d, v in problems.by_domain("train").items()},
        )
    return ref(ws, "data", key, "data")


def write_problems(problems: list[Problem], path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": [p.id for p in problems],
            "domain": [p.domain for p in problems],
            "prompt": [p.prompt for p in problems],
            "answer": [p.answer for p in problems],
            "solution": [p.solution for p in problems],
            "metadata": [json.dumps(p.metadata, default=str) for p in problems],
        }
    )
    frame.to_parquet(path, index=False)


def read_problems(path: Path) -> list[Problem]:
    frame = pd.read_parquet(path)
    return [
        Problem(
            id=r.id, domain=r.domain, prompt=r.prompt, answer=r.answer, metadata=json.loads(r.metadata),
            # a missing solution reads back as NaN (pandas' string column), not None
            solution=r.solution if isinstance(getattr(r, "solution", None), str) else None,
        )
        for r in frame.itertuples(index=False)
    ]


def train_problems(data: StageRef) -> list[Problem]:
    return read_problems(data.dir / "train.parquet")


def test_problems(data: StageRef) -> list[Problem]:
    return read_problems(data.dir / "test.parquet")


def domains(data: StageRef) -> list[str]:
    """The training data's domains, sorted."""
    return sorted(data.manifest()["summary"]["domains"])


def require_domains(wanted: list[str], data: StageRef, option: str, error: type = StageError) -> None:
    """Raise ``error`` naming ``option``, the missing domains and the available ones, unless the
    training data has every domain in ``wanted``."""
    available = domains(data)
    missing = [d for d in wanted if d not in available]
    if missing:
        raise error(f"{option} names {missing}, which the training data does not have; available: {available}")
