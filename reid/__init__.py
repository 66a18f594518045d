"""Adversarial robustness of person re-identification: data, models, metrics, attacks."""

__version__ = "0.1.0"
