"""A tiny random Qwen2 with a character tokenizer, the problems and the scorer the sampling tests share."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from polymath.records import Problem

CHARS = "0123456789+-=?: abcdefghijklmnopqrstuvwxyz\nA"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in sorted(set(CHARS)):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model(tokenizer) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


PROBLEMS = {
    "arith": [Problem(f"a{i}", "arith", f"{i}+{i}=?", str(2 * i)) for i in range(5)],
    "words": [Problem("w0", "words", "abc", "cba"), Problem("w1", "words", "xyz", "zyx")],
}


def first_char_scorer(problem: Problem, completion: str) -> tuple[str | None, float]:
    answer = completion.strip()[:1] or None
    return answer, float(answer is not None and answer in "02468")
