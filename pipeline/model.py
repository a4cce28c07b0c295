"""The model stage: the base model folder, bootstrapped (tiny), converted (smollm) or referenced (path)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PolymathConfig
from polymath.keys import key_section
from polymath.workspace import Workspace

from .data import train_problems
from .stage import StageRef, file_inputs, key_of, progress, ref, reusable, stage


@stage("model", code=("training/models.py", "training/warm_start.py", "polymath/verifiers.py",
                                          "evaluation/hf_engine.py", "evaluation/samples.py"))
def run(cfg: PolymathConfig, ws: Workspace, *, data: StageRef, force: bool = False) -> StageRef:
    from training.models import bootstrap_tiny, convert_gguf, smollm_gguf_path

    section = key_section(cfg.model)
    # only the tiny model is made from the data (its warm start); a converted or given model is not
    inputs = {"data": data.key} if cfg.model.source == "tiny" else {}
    if cfg.model.source != "tiny":
        section.pop("tiny")
    if cfg.model.source == "path":
        inputs.update(file_inputs(ws, [cfg.model.path]))  # new weights at the same path: a new base model
    elif cfg.model.source == "smollm":
        inputs.update(file_inputs(ws, [smollm_gguf_path()]))
    key = key_of("model", section, inputs)
    if done := reusable(ws, "model", key, "base", force):
        return done
    with ws.stage_run("model", key, section, inputs) as out:
        folder = out.tmp / "model"
        if cfg.model.source == "tiny":
            summary = bootstrap_tiny(
                train_problems(data), cfg.model.tiny, folder, progress=progress("warm start"), sampler=_probe_sampler
            )
        elif cfg.model.source == "smollm":
            gguf = smollm_gguf_path()
            convert_gguf(gguf, folder)
            summary = {"gguf": gguf.name}
        else:
            from polymath.loading import load_model

            load_model(cfg.model.path, cfg.model.load_options())  # fail early on a bad folder
            (out.tmp / "model_path.txt").write_text(str(Path(cfg.model.path).resolve()))
            summary = {"path": str(Path(cfg.model.path).resolve())}
        out.summary.update(summary)
    return ref(ws, "model", key, "base")


def _probe_sampler(model, tokenizer, prompts: list[str], samples: int, max_new_tokens: int, seed: int):
    """The warm start's band check sampled like the evaluation: each row dropped at its EOS."""
    from evaluation.config import EvalConfig
    from evaluation.hf_engine import hf_generate

    config = EvalConfig(k=samples, temperature=1.0, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    return [[s.text for s in group] for group in hf_generate(model, tokenizer, prompts, config, seed=seed)]


def model_dir(model: StageRef) -> Path:
    """The base model's folder: the stage's own copy, or the local path it points to."""
    pointer = model.dir / "model_path.txt"
    return Path(pointer.read_text().strip()) if pointer.exists() else model.dir / "model"
