"""Adversarial robustness of person re-identification: data, models, metrics, attacks, defences, evaluation.

The package is laid out by stage (docs/DESIGN.md): `runtime`, `data`, `models`, `metrics`,
`attacks`, `training`, `defences`, `evaluation`, and the command lines in `cli`.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """`reid.evaluate_robustness` and `reid.ReidError` without importing torch-heavy modules at `import reid`."""
    if name == "evaluate_robustness":
        from reid.evaluation import evaluate_robustness
        return evaluate_robustness
    if name == "ReidError":
        from reid.runtime import ReidError
        return ReidError
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
