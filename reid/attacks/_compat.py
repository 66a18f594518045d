"""advertorch compatibility shim: the only place in the project that imports advertorch.

advertorch 0.2.3 (its last release) does ``from torch.autograd.gradcheck import
zero_gradients`` at import time (fast_adaptive_boundary.py), and torch removed that helper
in 1.9, so a plain ``import advertorch`` fails on any current torch. We put a small
replacement on ``torch.autograd.gradcheck`` *before* importing advertorch, then re-export
the few attack classes the project uses. Keeping the shim and the imports in one module
means the patch is always applied first and nobody else needs to know about it.
"""

import importlib
from collections.abc import Iterable

import torch

# ``import torch.autograd.gradcheck as m`` would bind the *function* gradcheck (torch.autograd
# re-exports it under the module's name), so fetch the module itself.
_gradcheck = importlib.import_module("torch.autograd.gradcheck")


def _zero_gradients(x):
    """Zero the ``.grad`` of a tensor or of every tensor in a (nested) iterable."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, Iterable):
        for item in x:
            _zero_gradients(item)


if not hasattr(_gradcheck, "zero_gradients"):
    _gradcheck.zero_gradients = _zero_gradients

from advertorch.attacks import (  # noqa: E402  (must follow the shim)
    GradientAttack,
    GradientSignAttack,
    L2PGDAttack,
    LinfPGDAttack,
    MomentumIterativeAttack,
)
# The loop of advertorch's PGD attacks, which takes an initial perturbation (per-sample starts).
from advertorch.attacks.iterative_projected_gradient import perturb_iterative  # noqa: E402

__all__ = ["GradientAttack", "GradientSignAttack", "L2PGDAttack", "LinfPGDAttack", "MomentumIterativeAttack",
           "perturb_iterative"]
