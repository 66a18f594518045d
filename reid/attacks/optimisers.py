"""The optimisers: advertorch's L-inf attacks, run in pixel space on the guided loss.

Per-sample random starts without touching advertorch. Some images of a batch need a random
start (SMA, and the fallback images of the other attacks) and the rest must start from the
clean image, but advertorch's attacks either start every sample at x (FGSM, momentum) or
draw their own random start for every sample from the global RNG (PGD). We therefore hand
advertorch the *start point* x0 (x + uniform noise on the rows that need it, x elsewhere)
and encode the eps-ball around the *original* x in its clip bounds, which advertorch accepts
as per-element tensors:

    clip_min = max(0, x - eps),   clip_max = min(1, x + eps).

Clamping to this box is exactly the projection onto (eps-ball around x) ∩ [0, 1], so for
rows with x0 = x every step is identical to the textbook attack; advertorch's own eps
(relative to x0) is set to 2 eps, a superset of the box that never binds before it. One
advertorch call per batch, whatever mix of random and clean starts it holds, and the same
mechanism for all three optimisers. FGSM's step from a random start (fallback images) is one
signed step of size eps, projected back into the box.
"""

from dataclasses import dataclass
from typing import Callable

from ._compat import GradientSignAttack, LinfPGDAttack, MomentumIterativeAttack


@dataclass(frozen=True)
class Optimiser:
    """``run(predict, loss_fn, x0, y, lo, hi, eps, step, max_iter)`` -> adversarial images.

    eps / step are fractions of 1 (already divided by 255); lo / hi are the per-element box.
    """

    run: Callable
    single_step: bool = False

    def iterations(self, max_iter):
        return 1 if self.single_step else int(max_iter)


def _fgsm(predict, loss_fn, x0, y, lo, hi, eps, step, max_iter):
    attack = GradientSignAttack(predict, loss_fn, eps=eps, clip_min=lo, clip_max=hi,
                                targeted=False)
    return attack.perturb(x0, y)


def _pgd(predict, loss_fn, x0, y, lo, hi, eps, step, max_iter):
    attack = LinfPGDAttack(predict, loss_fn, eps=2 * eps, nb_iter=max_iter, eps_iter=step,
                           rand_init=False, clip_min=lo, clip_max=hi, targeted=False)
    return attack.perturb(x0, y)


def _momentum(predict, loss_fn, x0, y, lo, hi, eps, step, max_iter):
    attack = MomentumIterativeAttack(predict, loss_fn, eps=2 * eps, nb_iter=max_iter,
                                     decay_factor=1.0, eps_iter=step, clip_min=lo, clip_max=hi,
                                     targeted=False)
    return attack.perturb(x0, y)


OPTIMISERS = {
    "fgsm": Optimiser(_fgsm, single_step=True),
    "pgd": Optimiser(_pgd),
    "momentum": Optimiser(_momentum),
}
