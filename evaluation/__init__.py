"""The evaluate stage: sample k completions per problem, score them, and keep
every sample and summary in the DuckDB results database.

- ``evaluation.sampling.evaluate_model``: eval_samples rows for a model (HF or vLLM);
- ``evaluation.metrics``: pass@k, avg@k, maj@k, distinct-n, unique-answer ratio, Spearman;
- ``evaluation.store.Store``: the results database (the only module that talks to DuckDB);
- ``evaluation.report.write_report``: markdown and plots from the database.

Submodules are imported where used, so that reading results needs neither torch nor transformers.
"""
