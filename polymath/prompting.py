"""How a problem becomes the text a model is conditioned on.

Chat models get their own chat template (so SmolLM2-Instruct or Qwen see the
format they were tuned on); the embedded tiny model has no template and gets a
plain ``question + "\\nAnswer: "`` layout, the same one its warm start used.
"""

from __future__ import annotations

from polymath.records import Problem

PLAIN_SUFFIX = "\n"


def format_prompt(problem: Problem | str, tokenizer) -> str:
    text = problem.prompt if isinstance(problem, Problem) else problem
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text + PLAIN_SUFFIX
