"""Benchmark: PolymathGRPOTrainer against plain TRL GRPOTrainer, same tiny model, config and data.

Three trainers run in alternating rounds (so load from other processes hits
them alike) on the demo-sized task: a random ~1M-parameter Qwen2 with a
character tokenizer, ~300-character prompts, 4 prompts x 8 completions of
up to 24 tokens per step, LoRA r=16 on all projections, one CPU thread.

    trl          trl.GRPOTrainer, loss_type="dapo" (the peer)
    polymath     PolymathGRPOTrainer, entropy none, lambda 1 (same objective as the peer)
    polymath+    PolymathGRPOTrainer, AER entropy bonus and entropy-guided PAR
    polymath-m   polymath with the adapter merged while sampling
    polymath-kv  polymath-m sampling with polymath's KV-cached loop (the TrainConfig default): rows leave
                 the batch at their EOS; it draws other completions than generate after the first row ends

Reported per trainer: median CPU and wall seconds per optimizer step
(generation, reward, loss, backward, optimizer, logging), steps/s and the
overhead against the peer (target: at most 5% for polymath and polymath+),
and the mean completion length: polymath+ follows another trajectory (its
objective differs), so its completions, hence its cost, differ too.
With the same seed and objective, polymath and trl sample the same
completions, so their reward curves must match: the max difference is printed
as a parity check.

Run from the repository root:  python bench/train.py [--quick] [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import PrinterCallback, ProgressCallback, TrainerCallback  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from bench.toy_task import build_tiny_model, toy_problems, toy_reward  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.controllers import Controllers  # noqa: E402
from training.expert import _load, _lora_config, build_dataset, grpo_config, make_reward_func  # noqa: E402
from training.grpo import PolymathGRPOTrainer  # noqa: E402
from training.step_record import step_records  # noqa: E402
from polymath.prompting import format_prompt  # noqa: E402

CONTROLS = {
    "entropy": {"mode": "aer", "coef": 0.005, "delta": 0.001, "c_max": 0.05},
    "par": {"schedule": "entropy-guided", "lambda0": 0.5, "step": 0.05, "delta": 0.2},
}
GENERATE = {"merge_lora_for_rollouts": False, "rollout_engine": "generate"}
VARIANTS = {
    "trl": GENERATE,
    "polymath": GENERATE,
    "polymath+": {**GENERATE, **CONTROLS},
    "polymath-m": {"merge_lora_for_rollouts": True, "rollout_engine": "generate"},
    "polymath-kv": {"merge_lora_for_rollouts": True, "rollout_engine": "kv-cache"},
}


class StepClock(TrainerCallback):
    """Wall and CPU (process) seconds of every optimizer step, logging and callbacks included."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self._last[0])
        self.cpu.append(now[1] - self._last[1])
        self._last = now


def run_once(variant: str, model_dir: Path, problems, steps: int, workdir: Path) -> dict:
    config = TrainConfig(
        steps=steps, lr=1e-3, prompts_per_step=4, num_generations=8, max_new_tokens=24, max_prompt_length=512,
        seed=0, lora={"r": 16, "alpha": 32}, **VARIANTS[variant],
    )
    model, tokenizer = _load(model_dir)
    common = dict(
        model=model,
        reward_funcs=[make_reward_func(problems, toy_reward, "bench")],
        args=grpo_config(config, workdir / variant),
        train_dataset=build_dataset(problems, tokenizer),
        processing_class=tokenizer,
        peft_config=_lora_config(config),
    )
    if variant == "trl":
        trainer = GRPOTrainer(**common)
    else:
        trainer = PolymathGRPOTrainer(
            **common,
            controllers=Controllers(config.entropy, config.par, steps),
            max_prompt_length=512,
            merge_adapter_for_generation=config.merge_lora_for_rollouts,
            rollout_engine=config.rollout_engine,
        )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    clock = StepClock()
    trainer.add_callback(clock)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    logs = [e for e in trainer.state.log_history if "step_time" in e]
    rewards = [e["reward"] for e in logs]
    lengths = [e["completions/mean_length"] for e in logs]
    if variant != "trl":
        assert len(step_records(trainer.state.log_history)) == steps
    return {"wall_steps": clock.wall, "cpu_steps": clock.cpu, "wall": wall, "rewards": rewards, "lengths": lengths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="8 steps x 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 8, 2
    torch.set_num_threads(args.threads)

    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="polymath-bench-train-") as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_model(tmp / "model", hidden=128, layers=4)
        n_params = sum(p.numel() for p in _load(model_dir)[0].parameters())
        problems = toy_problems(64, prompt_chars=300)
        tokenizer = _load(model_dir)[1]
        tokens = statistics.mean(len(tokenizer(format_prompt(p, tokenizer))["input_ids"]) for p in problems)
        print(f"tiny Qwen2: {n_params / 1e6:.2f}M params; {len(problems)} prompts of ~300 chars, "
              f"{tokens:.0f} tokens on average; "
              f"4 prompts x 8 completions x <=24 tokens per step; {args.steps} steps x {args.rounds} rounds; "
              f"torch threads {args.threads}", flush=True)
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                res = run_once(name, model_dir, problems, args.steps, tmp / f"round{r}")
                results[name].append(res)
                cpu = sum(res["cpu_steps"])
                print(f"  round {r + 1} {name:<10} {res['wall']:6.2f} s wall, {cpu:6.2f} s cpu", flush=True)

    def steady(name: str, clock: str) -> float:
        # step 1 carries one-off costs (lazy init, first allocation); every round's later steps count
        return statistics.median(t for res in results[name] for t in res[clock][1:])

    print()
    print("median seconds per optimizer step (steps 2..N of every round); CPU = process time, which other")
    print("processes on a shared machine disturb far less than wall time")
    header = ("trainer", "cpu s", "steps/s(cpu)", "overhead", "wall s", "steps/s(wall)", "overhead", "length")
    print("{:<11} {:>7} {:>12} {:>9} {:>7} {:>13} {:>9} {:>7}".format(*header))
    peer_cpu, peer_wall = steady("trl", "cpu_steps"), steady("trl", "wall_steps")
    for name in VARIANTS:
        cpu, wall = steady(name, "cpu_steps"), steady(name, "wall_steps")
        length = statistics.mean(x for res in results[name] for x in res["lengths"])
        print(
            f"{name:<11} {cpu:>7.4f} {1 / cpu:>12.2f} {100 * (cpu / peer_cpu - 1):>8.1f}% "
            f"{wall:>7.4f} {1 / wall:>13.2f} {100 * (wall / peer_wall - 1):>8.1f}% {length:>7.2f}"
        )
    diff = max(
        abs(a - b) for r_trl, r_ours in zip(results["trl"], results["polymath"], strict=True)
        for a, b in zip(r_trl["rewards"], r_ours["rewards"], strict=True)
    )
    print(f"\nreward-curve parity polymath vs trl (same seed, same objective): max |diff| = {diff:.2e}")
    diff_m = max(
        abs(a - b) for r_trl, r_m in zip(results["trl"], results["polymath-m"], strict=True)
        for a, b in zip(r_trl["rewards"], r_m["rewards"], strict=True)
    )
    print(f"reward-curve parity polymath-m (merged sampling) vs trl: max |diff| = {diff_m:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
