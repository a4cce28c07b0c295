"""polymath: reasoning RL that stays exploratory.

The ground floor every stage shares: errors, the problem record, prompt formatting, answer extraction,
text normalization, model loading, registries, the workspace layout. The stage packages (curation,
training, evaluation, merging) depend on this package only; pipeline/ composes them (the whole config,
one module per stage), and flows/ runs the pipeline in Prefect.
"""

__version__ = "0.1.0"
