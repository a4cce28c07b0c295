"""Load prompt sets into :class:`Problem` records.

Formats: JSONL, Parquet, CSV, Hugging Face ``datasets`` (a ``save_to_disk``
folder, local data files, or the hub when reachable) and the embedded
reasoning-gym domains. Field names are mapped by config, answers are pulled out
of GSM8K (``#### 42``) or ``\\boxed{}`` forms, and fixed instruction text can be
stripped (DAPO-Math-17k wraps every prompt in the same instruction).

Every error names the file and line (or field) and says what to change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator


from polymath.answers import instruction_text, last_boxed
from polymath.errors import DataError
from polymath.records import Problem
from polymath.text import normalize_text

from .data_config import AnswerFormat, DataConfig, FieldMap, Format, SourceConfig  # noqa: F401
from .domains import load_embedded

log = logging.getLogger(__name__)



@dataclass
class ProblemSet:
    """Train and test problems plus what loading had to drop."""

    train: list[Problem]
    test: list[Problem]
    source: str
    rows_read: int = 0
    duplicates_dropped: int = 0
    notes: list[str] = field(default_factory=list)

    def domains(self) -> list[str]:
        return sorted({p.domain for p in self.train})

    def by_domain(self, split: str = "train") -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in self.train if split == "train" else self.test:
            out.setdefault(p.domain, []).append(p)
        return out


# ---------------------------------------------------------------- answers


def parse_answer(raw: Any, answer_format: AnswerFormat, where: str) -> str:
    text = "" if raw is None else str(raw)
    if answer_format == "gsm8k":
        if "####" not in text:
            raise DataError(f"{where}: answer has no '#### <number>' line; set data.answer_format to plain or boxed")
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    if answer_format == "boxed":
        boxed = last_boxed(text)
        return (boxed if boxed is not None else text).strip()
    return text.strip()


def normalize_prompt(text: str, prefixes: list[str], suffixes: list[str]) -> str:
    """Remove the first matching fixed prefix and suffix (outer whitespace ignored)."""
    text = text.strip()
    for prefix in prefixes:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    for suffix in suffixes:
        if suffix and text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return text.strip()


# ---------------------------------------------------------------- readers


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not UTF-8 (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); re-encode the file as UTF-8") from None


def _rows_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "fix or remove that line (JSONL holds one JSON object per line)"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} line {lineno}", row


def _rows_table(path: Path, kind: str) -> Iterator[tuple[str, dict]]:
    import pandas as pd

    if kind == "csv":
        for _ in _utf8_lines(path):  # a bad byte names its line, as in JSONL
            pass
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise DataError(f"{path}: cannot read as {kind} ({exc}); check data.format") from None
    # CSV line numbers count the header line; parquet rows are 0-based row numbers.
    offset, unit = (2, "line") if kind == "csv" else (0, "row")
    for i, row in enumerate(frame.to_dict(orient="records")):
        yield f"{path} {unit} {i + offset}", row


def _rows_hf(name: str, split: str) -> Iterator[tuple[str, dict]]:
    import datasets

    local = Path(name)
    try:
        if local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except KeyError:
        raise DataError(f"{name}: has no split {split!r}; set data.split") from None
    except Exception as exc:
        raise DataError(
            f"{name}: cannot load as a Hugging Face dataset ({exc}); give a local save_to_disk folder "
            "or data files, or check data.format"
        ) from None
    for i, row in enumerate(ds):
        yield f"{name}[{split}] row {i}", row


def _read_rows(cfg: SourceConfig, path: str, split: str) -> Iterator[tuple[str, dict]]:
    if cfg.format == "hf":
        return _rows_hf(path, split)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file; set data.path to an existing {cfg.format} file")
    if cfg.format == "jsonl":
        return _rows_jsonl(p)
    return _rows_table(p, cfg.format)


_MISSING = object()


def _field(row: dict, path: str) -> Any:
    """A column, or a dotted path into nested objects (``reward_model.ground_truth``)."""
    if path in row:
        return row[path]
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _text(value: Any) -> str:
    """Plain text of a field; a chat message list gives its last user message."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "content" in m for m in value):
        users = [m for m in value if m.get("role", "user") == "user"] or list(value)
        return str(users[-1]["content"])
    return "" if value is None else str(value)


def _records(cfg: SourceConfig, path: str, split: str, verifier: str) -> tuple[list[Problem], int]:
    fmap = cfg.fields
    problems: list[Problem] = []
    rows = 0
    for where, row in _read_rows(cfg, path, split):
        rows += 1
        wanted = [("prompt", fmap.prompt), ("answer", fmap.answer)]
        if fmap.domain:
            wanted.append(("domain", fmap.domain))
        if fmap.id:
            wanted.append(("id", fmap.id))
        values = {role: _field(row, column) for role, column in wanted}
        for role, column in wanted:
            if values[role] is _MISSING:
                present = ", ".join(map(str, row)) or "(none)"
                raise DataError(
                    f"{where}: field {column!r} (data.fields.{role}) is missing; "
                    f"fields present: {present}; set data.fields.{role} to one of them"
                )
        prompt = normalize_prompt(_text(values["prompt"]), cfg.strip_prefixes, cfg.strip_suffixes)
        if not prompt:
            raise DataError(f"{where}: empty prompt in field {fmap.prompt!r}; remove the row or fix the text")
        answer = parse_answer(values["answer"], cfg.answer_format, where)
        if not answer:
            raise DataError(f"{where}: empty or null answer in field {fmap.answer!r}; every problem needs the answer "
                            "its completions are scored against: fix the row or remove it")
        raw_answer = "" if values["answer"] is None else str(values["answer"]).strip()
        # GSM8K's and boxed answers come with their worked solution: keep it (it sizes evaluation's token cap).
        solution = raw_answer if cfg.answer_format != "plain" and raw_answer != answer else None
        domain = _text(values["domain"]).strip() if fmap.domain else cfg.domain
        if not domain:
            raise DataError(f"{where}: empty or null domain in field {fmap.domain!r}; give the row a domain name, or "
                            "drop data.fields.domain to put every row in data.domain")
        pid = str(values["id"]) if fmap.id else f"{Path(path).stem}-{rows - 1}"
        top = {c.split(".")[0] for c in (fmap.prompt, fmap.answer)}
        extra = {k: v for k, v in row.items() if k not in top}
        metadata = {"verifier": verifier, **{k: v for k, v in extra.items() if _jsonable(v)}}
        problems.append(
            Problem(id=pid, domain=domain, prompt=prompt, answer=answer, metadata=metadata, solution=solution)
        )
    return problems, rows


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _dedup(problems: list[Problem]) -> tuple[list[Problem], int]:
    """Drop exact duplicate prompts (the text as :func:`polymath.text.normalize_text` compares it), keeping the first."""
    seen: set[str] = set()
    kept: list[Problem] = []
    ids: set[str] = set()
    for p in problems:
        key = normalize_text(p.prompt)
        if key in seen:
            continue
        if p.id in ids:
            raise DataError(f"duplicate problem id {p.id!r}; ids in data.fields.id must be unique")
        seen.add(key)
        ids.add(p.id)
        kept.append(p)
    return kept, len(problems) - len(kept)


def _holdout(problems: list[Problem], fraction: float, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Deterministic split by a hash of (seed, id): stable when rows are added or reordered."""
    if fraction == 0:
        return problems, []

    def bucket(p: Problem) -> float:
        digest = hashlib.sha256(f"{seed}:{p.id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    train = [p for p in problems if bucket(p) >= fraction]
    test = [p for p in problems if bucket(p) < fraction]
    return train, test


def load_problems(cfg: DataConfig) -> ProblemSet:
    """Load train and test problems as the config says: every source, their domains kept apart."""
    sources = cfg.resolved_sources()
    if len(sources) == 1:
        return _load_source(sources[0])
    parts = []
    owner: dict[str, int] = {}
    for i, src in enumerate(sources):
        try:
            part = _load_source(src)
        except DataError as exc:
            raise DataError(f"{src.label(i)}: {exc}") from None
        for domain in part.domains():
            if domain in owner:
                j = owner[domain]
                raise DataError(f"{sources[j].label(j)} and {src.label(i)} both give domain {domain!r}; each domain "
                                f"comes from one source: rename it in one of them (its domain column or .domain)")
            owner[domain] = i
        # ids are unique within a source; the source's name keeps them unique across sources
        prefix = f"{src.name or '+'.join(part.domains())}/"
        part.train = [replace(p, id=prefix + p.id) for p in part.train]
        part.test = [replace(p, id=prefix + p.id) for p in part.test]
        parts.append(part)
    return ProblemSet(
        train=[p for part in parts for p in part.train],
        test=[p for part in parts for p in part.test],
        source=" + ".join(part.source for part in parts),
        rows_read=sum(part.rows_read for part in parts),
        duplicates_dropped=sum(part.duplicates_dropped for part in parts),
        notes=[n for part in parts for n in part.notes],
    )


def _load_source(cfg: SourceConfig) -> ProblemSet:
    if cfg.format == "reasoning-gym":
        train, test = load_embedded(cfg.domains, cfg.train_per_domain, cfg.test_per_domain, cfg.rg_specs())
        verifier = cfg.resolved_verifier()
        tag = lambda p: replace(p, metadata={**p.metadata, "verifier": verifier})  # noqa: E731
        train, test = [tag(p) for p in train], [tag(p) for p in test]
        if cfg.strip_prefixes or cfg.strip_suffixes:
            strip = lambda p: replace(p, prompt=normalize_prompt(p.prompt, cfg.strip_prefixes, cfg.strip_suffixes))  # noqa: E731
            train, test = [strip(p) for p in train], [strip(p) for p in test]
        rows = len(train) + len(test)
        train, dropped = _dedup(train)
        source = "reasoning-gym:" + ",".join(sorted({p.domain for p in train}))
    else:
        verifier = cfg.resolved_verifier()
        assert cfg.path is not None
        problems, rows = _records(cfg, cfg.path, cfg.split, verifier)
        problems, dropped = _dedup(problems)
        if cfg.test_path or cfg.test_split:
            test_rows, _ = _records(cfg, cfg.test_path or cfg.path, cfg.test_split or cfg.split, verifier)
            train_keys = {normalize_text(p.prompt) for p in problems}
            test = [p for p in test_rows if normalize_text(p.prompt) not in train_keys]
            train = problems
        else:
            train, test = _holdout(problems, cfg.test_fraction, cfg.seed)
        source = str(cfg.path)
    if cfg.max_problems is not None:
        train = train[: cfg.max_problems]
    if suffix := instruction_text(cfg.answer_instruction):
        # after dedup and the train/test split: the same words on every prompt change neither
        train, test = [replace(p, prompt=p.prompt + suffix) for p in train], [replace(p, prompt=p.prompt + suffix) for p in test]
    if not train:
        raise DataError(f"{source}: no training problems after loading; check data.path and data.fields")
    notes = [f"dropped {dropped} exact duplicate prompts"] if dropped else []
    for note in notes:
        log.warning("%s: %s", source, note)
    return ProblemSet(train=train, test=test, source=source, rows_read=rows, duplicates_dropped=dropped, notes=notes)
