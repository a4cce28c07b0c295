"""The Prefect task layer between the flows and the stages: flows -> tasks -> stages.

:mod:`tasks.stage_tasks` wraps every stage's ``run()`` in one Prefect task (logging, the DuckDB ingest with its
retries), :mod:`tasks.isolation` decides where a heavy stage run executes (in the flow's process, a worker pool,
a fresh process per GPU run) and :mod:`tasks.progress` tells listeners (the CLI's display) of finished runs.
Only ``flows/`` and this package import Prefect; the stage packages below stay usable from a notebook.
"""
