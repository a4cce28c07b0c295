import pytest
import torch

from curation.domains import load_embedded
from polymath.errors import ModelError
from polymath.loading import load_model
from training.models import TinyModelConfig, bootstrap_tiny, build_char_tokenizer
from polymath.prompting import PLAIN_SUFFIX, format_prompt

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                       sft_steps=12, sft_batch_size=16, sft_lr=5e-3)


def test_char_tokenizer_round_trips():
    tok = build_char_tokenizer(["hello world", "12 + 3\n"])
    text = "hello 12\nworld"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.eos_token == "<eos>" and tok.pad_token_id == 0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    train, _ = load_embedded(["arithmetic", "reverse"], train_per_domain=60, test_per_domain=1)
    out = tmp_path_factory.mktemp("tiny") / "model"
    summary = bootstrap_tiny(train, TINY, out)
    return out, summary


def test_bootstrap_learns_and_saves_safetensors(tiny_dir):
    out, summary = tiny_dir
    assert summary["loss_is_finite"]
    assert summary["sft_final_loss"] < summary["sft_first_loss"]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_bootstrapped_model_loads_in_transformers_and_peft(tiny_dir):
    from peft import LoraConfig, get_peft_model

    out, _ = tiny_dir
    model, tok = load_model(out)
    assert model.config.model_type == "qwen2"
    assert format_prompt("7 + 1", tok) == "7 + 1" + PLAIN_SUFFIX  # no chat template: plain layout
    enc = tok(["7 + 1" + PLAIN_SUFFIX], return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= enc["input_ids"].shape[1] + 3
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
    wrapped = {n.split(".")[-1] for n, _ in peft_model.named_modules() if hasattr(_, "lora_A")}
    assert set(targets) <= wrapped


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(tmp_path)


@pytest.mark.slow
def test_smollm_converts_from_gguf_and_generates(tmp_path):
    from training.models import convert_gguf, smollm_gguf_path

    out = convert_gguf(smollm_gguf_path(), tmp_path / "smollm")
    model, tok = load_model(out)
    assert model.config.model_type == "llama"
    assert tok.chat_template
    enc = tok(format_prompt("What is 2 + 3?", tok), return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert tok.decode(gen[0, enc["input_ids"].shape[1]:]).strip()
