"""Adversarial robustness of person re-identification: data, models, metrics, attacks."""

__version__ = "0.1.0"


def __getattr__(name):
    """`reid.evaluate_robustness` without importing torch-heavy modules at `import reid`."""
    if name == "evaluate_robustness":
        from reid.api import evaluate_robustness
        return evaluate_robustness
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
