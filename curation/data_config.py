"""The data section of the config: one source of prompts, or several (``data.sources``)."""

from __future__ import annotations

from typing import Literal

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
    domains: list[str] | None = Field(None, description="Embedded domains to use (None = all four).")
    train_per_domain: int = Field(4000, gt=0, description="Embedded training problems per domain.")
    test_per_domain: int = Field(250, gt=0, description="Embedded test problems per domain.")
    max_problems: int | None = Field(None, gt=0, description="Keep only the first N training problems (smoke runs).")
    seed: int = Field(0, description="Seed of the train/test hold-out split.")

    @model_validator(mode="after")
    def _path_needed(self) -> "SourceConfig":
        if self.format != "reasoning-gym" and not self.path:
            raise ValueError(f"path is required for format {self.format!r} (a file, folder or HF dataset name)")
        return self

    def resolved_verifier(self) -> str:
        if self.verifier:
            return self.verifier
        if self.format == "reasoning-gym":
            return "marker"
        return {"gsm8k": "numeric", "boxed": "math", "plain": "exact"}[self.answer_format]

    def static_domains(self) -> list[str] | None:
        """The domains this source gives, known before reading it (None: they come from a column)."""
        if self.format == "reasoning-gym":
            from .domains import EMBEDDED_DOMAINS

            return sorted(self.domains or [s.domain for s in EMBEDDED_DOMAINS])
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
