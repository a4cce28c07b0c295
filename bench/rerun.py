"""An unchanged rerun of a finished pipeline, as a ratio to the cold run that filled the workspace.

    make demo                                   # the cold run (fills ./workspace)
    .venv/bin/python bench/rerun.py             # then: polymath run again, timed, 3 times

The cold run's wall time is read from the workspace itself (first stage start to last stage end in the
``runs`` table, for the runs the plan lists); the rerun is the command a user types, in a subprocess.
Target: at most 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from evaluation.store import Store
from pipeline.config import load_config
from pipeline.plan import plan_runs
from polymath.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ws = Workspace(Path(args.workspace))
    rows = plan_runs(load_config(args.config), ws)
    if not rows or any(r.state != "finished" for r in rows):
        sys.exit(f"{ws.root}: not every run of {args.config} is finished; run `polymath run -c {args.config}` first")
    keys = ", ".join(f"'{r.key}'" for r in rows)
    span = Store(ws.db_path).query(
        f"SELECT epoch(max(finished_at)) - epoch(min(started_at)) AS s FROM runs WHERE run_key IN ({keys})")
    cold = float(span.s.iloc[0])

    polymath = Path(sys.executable).with_name("polymath")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([str(polymath), "run", "-c", args.config, "-w", str(ws.root)], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    rerun = statistics.median(times)
    print(f"{len(rows)} stage runs, all finished")
    print(f"cold run (from the runs table): {cold:8.1f} s")
    print(f"unchanged rerun (median of {args.repeats}): {rerun:8.2f} s   ({', '.join(f'{t:.2f}' for t in times)})")
    print(f"rerun / cold: {rerun / cold:.4f}   target: rerun <= 10 s -> {'met' if rerun <= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
