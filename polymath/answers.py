"""Answer extraction: the answer a completion or a reference solution commits to.

Shared by the data stage (reference answers in ``\\boxed{}`` or GSM8K form), the verifiers and the
reports, so that one parser reads every answer.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
# Scientific notation counts: reasoning-gym's number_format writes candidates as 5.930480000000000e+02.
_NUMBER = re.compile(r"(?:-?\d[\d,]*(?:\.\d+)?|-?\.\d+)(?:[eE][+-]?\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


#: A completion this short, on one line, is its own answer (the tiny model and short-answer models answer bare).
BARE_ANSWER_CHARS = 40


def extract_answer(completion: str) -> str | None:
    """The answer a completion commits to; None when it commits to none (it scores 0, counted as no_answer).

    Looks, in order, for ``<answer>..</answer>``, ``\\boxed{..}``, ``#### ..`` and the last ``Answer: ..``
    (or ``final answer is: ..``) line. Without any of them, the documented fallback: a completion of one line
    of at most ``BARE_ANSWER_CHARS`` characters is its own answer; otherwise the last number in it; otherwise
    none (free text without an answer is not an answer).
    """
    if not completion:
        return None
    found = _TAG.findall(completion)
    if found:
        return found[-1].strip()
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    hashes = _HASHES.findall(completion)
    if hashes:
        return (hashes[-1].strip().splitlines() or [""])[0].strip()  # "#### " alone: an empty answer
    lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        m = _ANSWER_LINE.search(line)
        if m:
            return m.group(1).strip()
    if len(lines) == 1 and len(lines[0]) <= BARE_ANSWER_CHARS:
        return lines[0]
    numbers = _NUMBER.findall(completion)
    return numbers[-1].replace(",", "") if numbers else None


ANSWER_MARKER = "Answer:"


def final_answer(completion: str, marker: str = ANSWER_MARKER) -> str | None:
    """The rest of the line after the last ``marker``, stripped; None when the marker is missing or nothing follows."""
    if not completion or marker not in completion:
        return None
    tail = completion.rsplit(marker, 1)[1]
    lines = tail.splitlines()
    answer = lines[0].strip() if lines else ""
    return answer or None


def to_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


#: ``data.answer_instruction`` presets: the answer format a source's prompts ask for, in words a chat model follows.
INSTRUCTIONS = {
    "none": "",
    "answer-line": "\n\nWork it out step by step, then end with one line: Answer: <your final answer>",
    "answer-tag": "\n\nWork it out step by step, then give your final answer inside <answer></answer> tags.",
}


def instruction_text(name_or_text: str) -> str:
    """The text a preset names, or ``name_or_text`` itself (appended to prompts as written)."""
    return INSTRUCTIONS.get(name_or_text, name_or_text)
