"""The GPU path's first-contact check: one script, at most about 10 minutes on one GPU, nothing downloaded.

    python bench/gpu_check.py                  # on a GPU host: a random Qwen2 at Qwen2.5-1.5B's shapes
    python bench/gpu_check.py --shape tiny     # the same sections on CPU in seconds (tests/test_gpu_check.py)

The model is a randomly initialised Qwen2 built from a config (Qwen2.5-1.5B's widths, depth and vocabulary)
with a tokenizer covering every id, so no hub access is needed. Sections, each a row of the summary table:

1. versions: torch, transformers, trl, peft, accelerate, vllm (absent: the HF paths only), the device;
2. train memory: one loss forward and backward at gpu-math's micro-batch shape (4 completions of 2,048
   tokens after 1,024 prompt tokens), peak memory with activation checkpointing off and on, against
   training/memory.py's estimate;
3. GRPO steps: three steps of train_expert (polymath's trainer; vLLM rollouts when installed), generation
   and the rest of each step timed apart;
4. LoRA serving: three rank-32 adapters merged exactly (task arithmetic, rank 96) and scored by teacher
   forcing through HF + peft against the dense weights they stand for (and through vLLM when installed);
5. evaluation twice in one process (evaluate_model; one vLLM engine reused when installed), peak memory;
6. isolation: a stage-like call in a spawned process (tasks/isolation.py), device memory back to where it
   was after it.

Wheels a bare GPU machine (torch, transformers, peft and accelerate only) needs for it: trl, datasets and
their small dependencies (requirements-gpu.lock's versions), pydantic, pandas, pyarrow; vllm only for the
vLLM rows. DuckDB and Prefect are not imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {  # Qwen2.5-1.5B's config.json; tiny: the same structure in miniature, for CPU
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512),
}
# gpu-math's train shape (prompt, completion, micro-batch); tiny: small enough for a CPU test
LENGTHS = {"qwen2.5-1.5b": (1024, 2048, 4), "tiny": (16, 32, 4)}


def build_model(folder: Path, shape: str, dtype: str):
    """A random Qwen2 of ``shape`` and a word-level tokenizer with one token per id (characters first)."""
    import string

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.models import build_char_tokenizer

    dims = SHAPES[shape]
    tokenizer = build_char_tokenizer([string.printable], size=dims["vocab_size"])
    torch.manual_seed(0)
    config = Qwen2Config(**dims, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                         torch_dtype=dtype)
    Qwen2ForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Device:
    """Peak and free memory on CUDA; 'n/a' on CPU."""

    def __init__(self):
        import torch

        self.torch, self.cuda = torch, torch.cuda.is_available()

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        return f"{self.torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if self.cuda else "n/a"

    def used(self) -> float | None:
        if not self.cuda:
            return None
        free, total = self.torch.cuda.mem_get_info()
        return (total - free) / 2**30


def versions(dev: Device, _ctx) -> str:
    names = ("torch", "transformers", "trl", "peft", "accelerate", "vllm")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    where = dev.torch.cuda.get_device_name(0) if dev.cuda else "CPU"
    return ", ".join(found) + f"; {where}"


def _trainer(ctx, checkpointing: bool, steps: int = 1):
    from training.config import TrainConfig
    from training.controllers import Controllers
    from training.expert import _load, _lora_config, build_dataset, grpo_config, make_reward_func
    from training.grpo import PolymathGRPOTrainer

    prompt, completion, micro = ctx["lengths"]
    config = TrainConfig(steps=steps, lr=1e-5, prompts_per_step=micro, num_generations=micro,
                         micro_batch_size=micro, max_new_tokens=completion, max_prompt_length=prompt,
                         bf16=ctx["bf16"], gradient_checkpointing=checkpointing, lora={"r": 32, "alpha": 64})
    model, tokenizer = _load(ctx["model"])
    from bench.toy_task import toy_problems, toy_reward

    problems = toy_problems(64, prompt_chars=min(prompt, 300))
    trainer = PolymathGRPOTrainer(model=model, reward_funcs=[make_reward_func(problems, toy_reward, "check")],
                                  args=grpo_config(config, ctx["tmp"] / f"out-{checkpointing}-{steps}"),
                                  train_dataset=build_dataset(problems, tokenizer), processing_class=tokenizer,
                                  peft_config=_lora_config(config),
                                  controllers=Controllers(config.entropy, config.par, steps))
    return trainer, config


def train_memory(dev: Device, ctx) -> str:
    import torch

    from training.memory import GIB, Shape, estimate

    prompt, completion, micro = ctx["lengths"]
    out = []
    for checkpointing in (False, True):
        trainer, config = _trainer(ctx, checkpointing)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        device = trainer.accelerator.device
        g = torch.Generator().manual_seed(0)
        vocab = SHAPES[ctx["shape"]]["vocab_size"]
        mask = torch.ones(micro, completion, dtype=torch.long)
        inputs = {"prompt_ids": torch.randint(3, vocab, (micro, prompt), generator=g),
                  "prompt_mask": torch.ones(micro, prompt, dtype=torch.long),
                  "completion_ids": torch.randint(3, vocab, (micro, completion), generator=g),
                  "completion_mask": mask, "advantages": torch.randn(micro, generator=g),
                  "num_items_in_batch": mask.sum(), "entropy_weight": torch.ones(micro)}
        inputs = {k: v.to(device) for k, v in inputs.items()}
        dev.reset()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["bf16"]):
            loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        card = dev.torch.cuda.get_device_properties(0).total_memory if dev.cuda else 80 * GIB
        est = estimate(Shape.from_folder(ctx["model"]), config, 2 if ctx["bf16"] else 4, card, vllm=False)
        predicted = (est.weights + est.optimizer + est.activations + est.logits) / GIB
        out.append(f"checkpointing {'on' if checkpointing else 'off'}: peak {dev.peak()} (estimate {predicted:.1f} "
                   "GiB)")
        del trainer, loss
    return f"{micro} x ({prompt} + {completion}) tokens; " + "; ".join(out)


def grpo_steps(dev: Device, ctx) -> str:
    from training.grpo import PolymathGRPOTrainer

    spent = {"generation": 0.0}
    original = PolymathGRPOTrainer._generate_and_score_completions

    def timed(self, inputs):
        start = time.perf_counter()
        try:
            return original(self, inputs)
        finally:
            spent["generation"] += time.perf_counter() - start

    PolymathGRPOTrainer._generate_and_score_completions = timed
    try:
        trainer, config = _trainer(ctx, checkpointing=dev.cuda, steps=3)
        dev.reset()
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    finally:
        PolymathGRPOTrainer._generate_and_score_completions = original
    engine = "vLLM" if trainer.use_vllm else f"HF ({trainer.rollout_engine})"
    return (f"3 steps of {config.completions_per_step} completions <= {config.max_new_tokens} tokens, rollouts "
            f"{engine}: {total:.1f} s, generation {spent['generation']:.1f} s, training "
            f"{total - spent['generation']:.1f} s; peak {dev.peak()}")


def lora_serving(dev: Device, ctx) -> str:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from merging.config import MergeConfig
    from merging.merge import merge_adapters
    from polymath.loading import LoadOptions, load_model

    dtype = "bfloat16" if ctx["bf16"] else "float32"
    experts = []
    for i in range(3):
        model, _ = load_model(ctx["model"], LoadOptions(dtype="float32"))
        peft = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"]))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i * 1000 + len(name))))
        peft.save_pretrained(ctx["tmp"] / f"expert{i}")
        experts.append(ctx["tmp"] / f"expert{i}")
    report = merge_adapters(experts, ctx["tmp"] / "merged", MergeConfig(method="task-arithmetic"))
    device = "cuda" if dev.cuda else None
    ids = torch.randint(3, SHAPES[ctx["shape"]]["vocab_size"], (4, 64), generator=torch.Generator().manual_seed(0))
    base, _ = load_model(ctx["model"], LoadOptions(dtype=dtype), device=device)
    served = PeftModel.from_pretrained(base, str(ctx["tmp"] / "merged"))
    with torch.no_grad():
        logp = torch.log_softmax(served(input_ids=ids.to(served.device)).logits.float(), -1)
        dense = served.merge_and_unload()  # the dense weights W + sum of the experts' B A
        ref = torch.log_softmax(dense(input_ids=ids.to(dense.device)).logits.float(), -1)
    gap = (logp - ref).abs().max().item()
    out = f"rank {report.rank} merged adapter, HF+peft vs dense weights: max |log p gap| {gap:.2e} ({dtype})"
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return out + "; vLLM not installed"
    from evaluation.vllm_engine import lora_request, release_engine, shared_engine
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = shared_engine(ctx["model"], lora_rank=report.rank, max_logprobs=1, dtype=dtype,
                           gpu_memory_utilization=0.5)
    result = engine.generate([TokensPrompt(prompt_token_ids=row.tolist()) for row in ids],
                             SamplingParams(max_tokens=1, prompt_logprobs=0),
                             lora_request=lora_request(ctx["tmp"] / "merged", "merged"))
    worst = 0.0
    for r, row in enumerate(ids):
        for t, entry in enumerate(result[r].prompt_logprobs[1:], start=1):
            token = int(row[t])
            worst = max(worst, abs(entry[token].logprob - ref[r, t - 1, token].item()))
    release_engine()
    return out + f"; vLLM LoRA vs dense: max |log p gap| {worst:.2e}"


def evaluation_twice(dev: Device, ctx) -> str:
    from evaluation import vllm_engine
    from evaluation.config import EvalConfig
    from evaluation.sampling import evaluate_model, resolve_backend
    from polymath.records import Problem

    problems = {"check": [Problem(id=f"p{i}", domain="check", prompt=f"{i} + {i} =", answer=str(2 * i))
                          for i in range(16)]}
    config = EvalConfig(k=4, max_new_tokens=64, batch_size=8)
    builds = []
    original = vllm_engine.load_engine
    vllm_engine.load_engine = lambda *a, **k: builds.append(1) or original(*a, **k)
    try:
        peaks = []
        for _ in range(2):
            dev.reset()
            start = time.perf_counter()
            rows = evaluate_model(str(ctx["model"]), None, problems, config, lambda p, c: (None, 0.0), "base", "check")
            peaks.append(f"{time.perf_counter() - start:.1f} s, peak {dev.peak()}")
    finally:
        vllm_engine.load_engine = original
        vllm_engine.release_engine()
    backend = resolve_backend(config.backend, str(ctx["model"]))
    return f"{len(rows)} samples per call on {backend}; engines built {len(builds)}; " + " / ".join(peaks)


def _hold_memory() -> int:
    import torch

    if torch.cuda.is_available():
        block = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB, as a stage's model would
        return int(block.numel())
    return 0


def isolation(dev: Device, _ctx) -> str:
    from pipeline.execution import Execution
    from tasks import isolation as iso

    before = dev.used()
    held = iso.call(_hold_memory, execution=Execution(gpu=True, visible=1))  # a fresh process, as a GPU run gets
    after = dev.used()
    if before is None:
        return "spawned process ran (no CUDA: nothing to give back)"
    return f"child held {held / 2**30:.1f} GiB; device memory used {before:.2f} GiB before, {after:.2f} GiB after"


SECTIONS = {"versions": versions, "train memory": train_memory, "GRPO steps": grpo_steps,
            "LoRA serving": lora_serving, "evaluation twice": evaluation_twice, "isolation": isolation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: qwen2.5-1.5b with CUDA, "
                        "tiny without")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run these sections only")
    args = parser.parse_args(argv)
    dev = Device()
    shape = args.shape or ("qwen2.5-1.5b" if dev.cuda else "tiny")
    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="polymath-gpu-check-") as tmp:
        bf16 = dev.cuda
        ctx = {"tmp": Path(tmp), "shape": shape, "lengths": LENGTHS[shape], "bf16": bf16}
        ctx["model"] = build_model(Path(tmp) / "model", shape, "bfloat16" if bf16 else "float32")
        for name, section in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            try:
                result = section(dev, ctx)
                state = "ok"
            except Exception as exc:  # a failed section is a row of the table, not the end of the check
                result, state, failed = f"{type(exc).__name__}: {exc}"[:400], "FAILED", failed + 1
            rows.append((name, state, f"{time.perf_counter() - start:.0f} s", result))
            print(f"[{state}] {name}: {result}", flush=True)
    print(f"\n| section | state | time | result |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nshape {shape}; {len(rows) - failed} of {len(rows)} sections ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
