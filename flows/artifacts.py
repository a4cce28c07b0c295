"""The Prefect artifacts a pipeline run leaves in the UI: curation diversity, training curves, accuracy tables."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.stage import StageRef


def curation(ref: StageRef, strategy: str) -> None:
    summary = ref.manifest()["summary"]
    rows = [
        {"metric": m, strategy: round(v, 4), "random (mean of seeds)": round(summary["random_mean"].get(m, float("nan")), 4)}
        for m, v in summary["metrics"].items()
        if not m.startswith("domain:")
    ]
    create_table_artifact(rows, key="curation-diversity", description=f"Diversity of {summary['k']} selected prompts vs random subsets")
    create_markdown_artifact(
        f"### Curated subset\n{summary['k']} prompts by `{strategy}`.\n\n"
        f"2-D projection (selected highlighted): `{ref.dir / 'projection.png'}`",
        key="curation-projection",
    )


def training_curves(experts: list[StageRef]) -> None:
    rows = []
    for ref in experts:
        s = ref.manifest()["summary"]
        rows.append(
            {
                "expert": s["expert"],
                "initial_entropy": round(s["initial_entropy"], 4),
                "last_half_entropy": round(s["last_half_entropy"] or 0.0, 4),
                "first_reward": round(s["first_reward"] or 0.0, 4),
                "last_half_reward": round(s["last_half_reward"] or 0.0, 4),
                "curves_png": str(ref.dir / "curves.png"),
            }
        )
    create_table_artifact(rows, key="training-curves", description="Entropy and reward per expert")


def accuracy(evals: list[StageRef], key: str) -> None:
    rows = []
    for ref in evals:
        acc = ref.manifest()["summary"]["accuracy"]
        rows.append({"model": ref.label, **acc, "mean": round(sum(acc.values()) / max(1, len(acc)), 4)})
    create_table_artifact(rows, key=key, description="avg@k accuracy per domain")
