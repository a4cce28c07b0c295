"""Entry point: merge N LoRA expert folders into one peft adapter folder."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from merging.adapters import atomic_folder, read_adapter, resolve_save_dtype, validate_experts, write_adapter
from merging.config import MergeConfig
from merging.methods import get_method
from merging.report import MergeReport, module_stats
from polymath.errors import MergeError

REPORT_NAME = "merge_report.json"


def _check_overwrite(out_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    """``overwrite`` replaces only a folder that a merge wrote and that no input lives in."""
    if not overwrite or not out_dir.exists() or not any(out_dir.iterdir()):
        return
    out = out_dir.resolve()
    for d in inputs:
        if d.resolve() == out or out in d.resolve().parents:
            raise MergeError(f"{out_dir}: --overwrite would delete the input adapter {d}; choose another --out")
    if not (out_dir / REPORT_NAME).exists():
        raise MergeError(f"{out_dir}: --overwrite replaces only a folder a merge wrote (one with {REPORT_NAME}); "
                         "this one is not: choose another --out, or remove it yourself")


def merge_adapters(
    adapter_dirs: Sequence[Path], out_dir: Path, config: MergeConfig, *, overwrite: bool = False
) -> MergeReport:
    """Merge the experts in ``adapter_dirs`` with ``config.method`` and write a peft adapter to ``out_dir``.

    The folder appears only once complete (written to a temporary sibling, then
    renamed); it also holds ``merge_report.json``. An existing non-empty ``out_dir``
    is a MergeError unless ``overwrite`` is set.
    """
    _check_overwrite(Path(out_dir), [Path(d) for d in adapter_dirs], overwrite)
    method = get_method(config.method)
    start = time.perf_counter()
    experts = [read_adapter(Path(d)) for d in adapter_dirs]
    validate_experts(experts, equal_ranks=method.equal_ranks)
    parameters = method.parameters(config, len(experts))
    merged = method.merge(experts, config)
    factors = {module: f for module, (f, _) in merged.items()}
    errors = {module: e for module, (_, e) in merged.items()}
    stats = module_stats(experts, factors, errors)
    seconds = time.perf_counter() - start

    out_dir = Path(out_dir)
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        written = write_adapter(tmp, factors, experts[0].config, resolve_save_dtype(config.save_dtype, experts))
        report = MergeReport(
            method=method.name,
            parameters=parameters,
            rank=written.r,
            seconds=seconds,
            experts=[str(e.path) for e in experts],
            out_dir=str(out_dir),
            modules=stats,
        )
        (tmp / REPORT_NAME).write_text(report.model_dump_json(indent=2))
    return report
