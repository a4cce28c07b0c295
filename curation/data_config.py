"""The data section of the config: one source of prompts, or several (``data.sources``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal["jsonl", "parquet", "csv", "hf", "reasoning-gym"]
AnswerFormat = Literal["plain", "gsm8k", "boxed"]


class FieldMap(BaseModel):
    """Which column of the input holds each part of a problem."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    prompt: str = Field("prompt", description="Column with the prompt (text, or a chat message list: last user turn).")
    answer: str = Field("answer", description="Column with the reference answer; dotted paths reach nested fields.")
    domain: str | None = Field(None, description="Column with the domain; None = data.domain for all rows.")
    id: str | None = Field(None, description="Column with a unique id; None = derived from file and line.")


class TaskConfig(BaseModel):
    """One reasoning-gym task as a domain: its generator and the difficulty it is drawn at."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    domain: str = Field(description="Domain name (experts, tables and problem ids use it).")
    task: str = Field(description="reasoning-gym task name, e.g. chain_sum, products, gcd.")
    params: dict[str, Any] = Field(default_factory=dict, description="The task's difficulty parameters, as "
                                   "reasoning_gym.create_dataset takes them.")

    @model_validator(mode="after")
    def _known_task(self) -> "TaskConfig":
        from reasoning_gym.factory import DATASETS

        if self.task not in DATASETS:
            import difflib

            close = difflib.get_close_matches(self.task, DATASETS, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see reasoning_gym.factory.DATASETS"
            raise ValueError(f"unknown reasoning-gym task {self.task!r} for domain {self.domain!r}; {hint}")
        return self

    def spec(self):
        from .domains import DomainSpec

        return DomainSpec(self.domain, self.task, dict(self.params))


class SourceConfig(BaseModel):
    """One source of prompts and how to read it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str | None = Field(None, description="Name of the source in messages and problem ids (None: its domain).")

    format: Format = Field("reasoning-gym", description="Input format.")
    path: str | None = Field(None, description="File, folder or HF dataset name (not for reasoning-gym).")
    split: str = Field("train", description="HF dataset split used for training.")
    test_path: str | None = Field(None, description="Optional separate test file (same format and fields).")
    test_split: str | None = Field(None, description="Optional HF split for testing (e.g. 'test').")
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Held-out share when no test file/split is given.")
    fields: FieldMap = Field(default_factory=FieldMap, description="Column mapping.")
    domain: str = Field("default", description="Domain name when the data has no domain column.")
    answer_format: AnswerFormat = Field("plain", description="plain | gsm8k ('#### 42') | boxed ('\\boxed{42}').")
    strip_prefixes: list[str] = Field(default_factory=list, description="Fixed leading instruction texts to remove.")
    strip_suffixes: list[str] = Field(default_factory=list, description="Fixed trailing instruction texts to remove.")
    answer_instruction: str = Field("none", description=(
        "Appended to every prompt (after stripping) to state the answer format: none, answer-line (end with a "
        "line 'Answer: ...'), answer-tag (<answer>...</answer>), or any other text, appended as written."))
    verifier: str | None = Field(
        None,
        description="marker | reasoning-gym | math | numeric | exact; None = from the format and answer_format "
        "(reasoning-gym data: marker, the exact final answer after 'Answer:'; reasoning-gym's partial-credit "
        "scorer only when set explicitly).",
    )
    tasks: list[TaskConfig] = Field(default_factory=list, description=(
        "reasoning-gym tasks as domains, each with its difficulty parameters (format reasoning-gym); empty: the "
        "four embedded domains (arithmetic, legs, gcd, reverse)."))
    domains: list[str] | None = Field(None, description="Which of the reasoning-gym domains to use (None = all).")
    train_per_domain: int = Field(4000, gt=0, description="reasoning-gym training problems per domain.")
    test_per_domain: int = Field(250, gt=0, description="reasoning-gym test problems per domain (disjoint from training).")
    max_problems: int | None = Field(None, gt=0, description="Keep only the first N training problems (smoke runs).")
    seed: int = Field(0, description="Seed of the train/test hold-out split.")

    @model_validator(mode="after")
    def _path_needed(self) -> "SourceConfig":
        if self.format != "reasoning-gym" and not self.path:
            raise ValueError(f"path is required for format {self.format!r} (a file, folder or HF dataset name)")
        return self

    @model_validator(mode="after")
    def _tasks_fit(self) -> "SourceConfig":
        if self.tasks and self.format != "reasoning-gym":
            raise ValueError(f"tasks are reasoning-gym tasks, but the format is {self.format!r}: drop tasks or set "
                             "format: reasoning-gym")
        names = [t.domain for t in self.tasks]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"two tasks give domain {twice[0]!r}: give each task its own domain name")
        if self.format == "reasoning-gym" and self.domains:
            known = self.rg_domains()
            if unknown := [d for d in self.domains if d not in known]:
                raise ValueError(f"domains names {unknown[0]!r}, which is not one of this source's reasoning-gym "
                                 f"domains: {', '.join(known)}")
        return self

    def rg_specs(self) -> tuple:
        """The reasoning-gym domains this source can draw from: its tasks, or the embedded four."""
        from .domains import EMBEDDED_DOMAINS

        return tuple(t.spec() for t in self.tasks) if self.tasks else EMBEDDED_DOMAINS

    def rg_domains(self) -> list[str]:
        return [s.domain for s in self.rg_specs()]

    def resolved_verifier(self) -> str:
        if self.verifier:
            return self.verifier
        if self.format == "reasoning-gym":
            return "marker"
        return {"gsm8k": "numeric", "boxed": "math", "plain": "exact"}[self.answer_format]

    def static_domains(self) -> list[str] | None:
        """The domains this source gives, known before reading it (None: they come from a column)."""
        if self.format == "reasoning-gym":
            return sorted(self.domains or self.rg_domains())
        return None if self.fields.domain else [self.domain]

    def label(self, index: int | None = None) -> str:
        where = "data" if index is None else f"data.sources[{index}]"
        return f"{where} ({self.name or self.path or self.format})"


class DataConfig(SourceConfig):
    """Where the prompts come from: one source (the keys of this section) or several (``sources``)."""

    sources: list[SourceConfig] = Field(default_factory=list, description=(
        "Several sources, each with its own format, path, fields, answer format, verifier, stripping and domain; "
        "their domains train separate experts. Empty: the single source given by this section's other keys."))

    @model_validator(mode="after")
    def _one_way_to_say_it(self) -> "DataConfig":
        if not self.sources:
            return self
        # compared with the defaults, not with the keys given: a dumped and reloaded config names them all
        default = SourceConfig.model_construct()
        beside = [k for k in SourceConfig.model_fields if getattr(self, k) != getattr(default, k)]
        if beside:
            raise ValueError(f"data.sources is set, so data.{beside[0]} has no effect; move it into each source")
        seen: dict[str, int] = {}
        for i, src in enumerate(self.sources):
            for domain in src.static_domains() or []:
                if domain in seen:
                    j = seen[domain]
                    raise ValueError(
                        f"{self.sources[j].label(j)} and {src.label(i)} both give domain {domain!r}; each domain "
                        f"comes from one source: set data.sources[{i}].domain to another name")
                seen[domain] = i
        return self

    @model_validator(mode="after")
    def _verifiers_fit_their_sources(self) -> "DataConfig":
        from polymath.verifiers import VERIFIERS

        for i, src in enumerate(self.resolved_sources()):
            where = src.label(i if self.sources else None)
            name = src.resolved_verifier()
            if name not in VERIFIERS:
                raise ValueError(f"{where}: verifier: {VERIFIERS.unknown(name)}")
            if (why := VERIFIERS[name].fits(src.format, src.answer_format)) is not None:
                raise ValueError(f"{where}: verifier {name!r} does not fit format {src.format!r} with answer_format "
                                 f"{src.answer_format!r}: {why}")
        return self

    def resolved_sources(self) -> list[SourceConfig]:
        """The sources to read: ``sources``, or this section as the only one."""
        if self.sources:
            return list(self.sources)
        return [SourceConfig.model_validate(self.model_dump(exclude={"sources"}))]

    def static_domains(self) -> list[str] | None:
        domains: list[str] = []
        for src in self.resolved_sources():
            if (some := src.static_domains()) is None:
                return None
            domains += some
        return sorted(domains)
