"""The ``polymath`` command line."""

from __future__ import annotations

import flows  # noqa: F401  (its import sets the process defaults: offline, no analytics, the CPU kernel set)
import json  # noqa: E402
import sys  # noqa: E402
from enum import Enum  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from polymath.errors import PolymathError  # noqa: E402
from polymath.quiet import quiet_console  # noqa: E402
from polymath.workspace import Workspace  # noqa: E402

from . import merge_command  # noqa: E402
from .progress_display import all_in_database as _all_in_database, stage_progress as _stage_progress  # noqa: E402

app = typer.Typer(
    name="polymath",
    help="Reasoning RL that stays exploratory: curate, train, evaluate, merge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
experiment_app = typer.Typer(help="Experiments that reproduce published findings in miniature.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
config_app = typer.Typer(help="The configuration: every key, its default and help.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()
err_console = Console(stderr=True)


class Stage(str, Enum):
    curate = "curate"
    train = "train"
    evaluate = "evaluate"
    merge = "merge"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class Runner(str, Enum):
    local = "local"
    ray = "ray"


#: Exit status of a user error (bad config, bad data, bad SQL): the message says what to fix.
USER_ERROR = 2


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    raise typer.Exit(code=USER_ERROR)


def _workspace(workspace: Optional[Path]) -> Workspace:
    return Workspace(workspace)


def _frame_table(frame, title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for col in frame.columns:
        table.add_column(str(col), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


@app.command()
def run(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file or profile name (default: demo)."),
    stage: Optional[Stage] = typer.Option(None, "--stage", help="Run one stage (its missing upstream runs too)."),
    force: bool = typer.Option(False, "--force", help="Rerun even when a finished run exists."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Default ./workspace or $POLYMATH_HOME."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a key: section.key=value (repeatable)."),
    runner: Runner = typer.Option(Runner.local, "--runner", help="local, or ray (prefect-ray) for parallel tasks."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (--runner ray)."),
    debug: bool = typer.Option(False, "--debug", help="Show library warnings, loading bars and full tracebacks."),
) -> None:
    """Run the pipeline (or one stage) and print the accuracy table and the report's path."""
    quiet_console(debug)
    from pipeline.config import load_config
    from pipeline.preflight import preflight

    try:
        cfg = load_config(config, overrides)
        preflight(cfg)
        ws = _workspace(workspace)
        planned = None
        if stage is None and not force:
            from pipeline.plan import plan_runs

            planned = plan_runs(cfg, ws)
            console.print(_plan_line(planned) + "  (polymath status lists them)")
            if (finished := _all_in_database(ws, planned)) is not None:
                # Nothing to run or ingest: no Prefect server, no flow; the results as the flow would print them.
                console.print("every run is finished and in the database: nothing to run (--force reruns)")
                from pipeline.graph import Runs

                _print_results(ws, Runs(evals=tuple(r for r in finished if r.stage == "evaluate")), None)
                return
        from flows.stage_flows import select_flow  # Prefect: imported only when something runs
        from pipeline.execution import execution_policy

        quiet_console(debug)  # again: Prefect's console handlers exist from here on

        ws.root.mkdir(parents=True, exist_ok=True)
        root = str(ws.root.resolve())
        execution = execution_policy(cfg, runner.value, ray_address)
        flow_fn, force_set = select_flow(stage.value if stage else None, force, execution)
        with _stage_progress(planned, err_console):
            result = flow_fn(cfg, root, force_set, execution)
        _print_results(ws, result, stage)
    except PolymathError as exc:
        _fail(exc)


def _print_results(ws: Workspace, result, stage: Optional[Stage]) -> None:
    from evaluation.report import write_report
    from evaluation.store import Store

    store = Store(ws.db_path)
    evals = result.evals
    if evals:
        keys = ", ".join(f"'{r.key}'" for r in evals)
        frame = store.query(
            f"SELECT model_label, benchmark, avg_at_k FROM eval_summary WHERE eval_run IN ({keys})"
        )
        wide = frame.pivot_table(index="model_label", columns="benchmark", values="avg_at_k")
        wide["mean"] = wide.mean(axis=1)
        order = [r.label for r in evals if r.label in wide.index]
        wide = wide.loc[order].reset_index().rename(columns={"model_label": "model"})
        console.print(_frame_table(wide.round(4), title="avg@k accuracy per domain (test split)"))
    elif result.experts:
        rows = [r.manifest()["summary"] for r in result.experts]
        console.print(_frame_table(_summaries(rows), title="experts"))
    elif result.curate:
        s = result.curate.manifest()["summary"]
        console.print(f"selected {s['k']} prompts with {s['strategy']}: {result.curate.dir}")
    if stage is None or stage in (Stage.evaluate, Stage.merge):
        path = write_report(store, ws.reports_dir, if_changed=True)
        console.print(f"report: {path}")
    console.print(f"results: {ws.db_path}  (polymath sql \"SELECT * FROM eval_summary\")")


def _summaries(rows: list[dict]):
    import pandas as pd

    keep = ["expert", "problems", "initial_entropy", "last_half_entropy", "first_reward", "last_half_reward", "train_seconds"]
    return pd.DataFrame([{k: r.get(k) for k in keep} for r in rows])


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL to run read-only against the results database."),
    format: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w"),
) -> None:
    """Query the results database (read-only)."""
    from evaluation.store import Store

    try:
        frame = Store(_workspace(workspace).db_path).query(query)
    except PolymathError as exc:
        _fail(exc)
    if format is Format.csv:
        sys.stdout.write(frame.to_csv(index=False))
    elif format is Format.json:
        sys.stdout.write(frame.to_json(orient="records", date_format="iso", default_handler=str) + "\n")
    else:
        console.print(_frame_table(frame))


@app.command()
def status(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file or profile name (default: demo)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Default ./workspace or $POLYMATH_HOME."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a key: section.key=value (repeatable)."),
    gpu_gib: float = typer.Option(80.0, help="GPU memory the training estimate plans for when no GPU is visible."),
) -> None:
    """Each stage run of the pipeline's plan: finished, stale (and what changed) or missing; runs nothing."""
    from pipeline.config import load_config
    from pipeline.plan import memory_lines, plan_runs, version_changes

    try:
        cfg = load_config(config, overrides)
        rows = plan_runs(cfg, _workspace(workspace))
        drift = version_changes(_workspace(workspace), rows)
    except PolymathError as exc:
        _fail(exc)
    table = Table(title=f"plan of {cfg.name} in {_workspace(workspace).root}")
    for col in ("stage", "label", "state", "what changed"):
        table.add_column(col, overflow="fold")
    colors = {"finished": "green", "partial": "yellow", "stale": "yellow", "missing": "red"}
    for r in rows:
        table.add_row(r.stage, r.label, f"[{colors[r.state]}]{r.state}[/]", r.why)
    console.print(table)
    console.print("\n".join([_plan_line(rows), *(f"[yellow]versions differ:[/] {line}" for line in drift),
                             *memory_lines(cfg, gpu_gib)]), highlight=False)


def _plan_line(rows) -> str:
    counts = {state: sum(r.state == state for r in rows) for state in ("finished", "partial", "stale", "missing")}
    if counts["finished"] == len(rows):
        return f"plan: all {len(rows)} stage runs are up to date"
    return "plan: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n or state != "partial") + \
        f" of {len(rows)}"


@app.command()
def tables(workspace: Optional[Path] = typer.Option(None, "--workspace", "-w")) -> None:
    """List tables and views with row counts and what they hold."""
    from evaluation.store import Store

    try:
        frame = Store(_workspace(workspace).db_path).tables()  # read-only: the database is not changed
    except PolymathError as exc:
        _fail(exc)
    console.print(_frame_table(frame))


@app.command()
def report(workspace: Optional[Path] = typer.Option(None, "--workspace", "-w")) -> None:
    """Write the markdown report with plots from DuckDB alone and print its path."""
    from evaluation.report import write_report
    from evaluation.store import Store

    try:
        ws = _workspace(workspace)
        path = write_report(Store(ws.db_path), ws.reports_dir)  # reads the database only
    except PolymathError as exc:
        _fail(exc)
    console.print(str(path))


app.command(name="merge")(merge_command.merge)


@experiment_app.command("entropy")
def experiment_entropy(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file or profile name (default: demo)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Training seeds, comma-separated; every arm runs once "
                                        "per seed (default 0,1,2,3,4)."),
    arms: Optional[str] = typer.Option(None, "--arms", help="Comma-separated arms to run (default: the default run's; "
                                       "grpo always)."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Training domain; its test split is the held-out set "
                                         "(default gcd)."),
    ood_domain: Optional[str] = typer.Option(None, "--ood-domain", help="A domain every arm is also evaluated on "
                                             "and never trained on (default arithmetic; 'none': no such column)."),
    k: Optional[int] = typer.Option(None, "--k", help="Prompts kept by each selected data variant (default 100)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Rollout batches per arm (default 100)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Default ./workspace or $POLYMATH_HOME."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a profile key for every arm."),
    debug: bool = typer.Option(False, "--debug", help="Show library warnings, loading bars and full tracebacks."),
) -> None:
    """Reproduce the entropy findings of arXiv 2511.05993 in miniature; writes a markdown report."""
    quiet_console(debug)
    from experiments.entropy import experiment_from_options
    from flows.experiment import entropy_experiment_flow
    from pipeline.config import load_config
    from polymath.errors import ConfigError

    quiet_console(debug)  # Prefect's console handlers exist from here on
    try:
        cfg = load_config(config, overrides)
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds is not None else None
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r}: expected integers separated by commas, e.g. 0,1,2") from None
        arm_list = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
        experiment = experiment_from_options(seed_list, arm_list, domain, k, ood_domain, steps)
        ws = _workspace(workspace)
        ws.root.mkdir(parents=True, exist_ok=True)
        path = entropy_experiment_flow(cfg, str(ws.root.resolve()), experiment)
    except PolymathError as exc:
        _fail(exc)
    console.print(f"report: {path}")


@config_app.command("reference")
def config_reference() -> None:
    """Print every config key with its default and help (the text of configs/reference.yaml)."""
    from pipeline.reference import reference_yaml

    sys.stdout.write(reference_yaml())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
