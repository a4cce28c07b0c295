"""polymath: reasoning RL that stays exploratory.

Core pieces shared by every stage: errors, configuration, workspace layout.
The stage packages (curation, training, evaluation, merging) depend on this
package only; Prefect lives in tasks/ and flows/.
"""

__version__ = "0.1.0"
