"""The optimisers: advertorch's attacks, run in pixel space on the guided loss, in two norms.

Every optimiser gets the clean images x, a *start point* x0 inside the ball around x (x
itself, or a random point of the ball on the rows that need a random start: SMA, and the
fallback images of the other attacks), the budget eps and step in [0, 1] pixel units, and
returns adversarial images; ``core.py`` projects them onto (ball around x) ∩ [0, 1] once more
at the end, so the budget holds exactly whatever the optimiser does.

L-inf (``--norm linf``). advertorch's L-inf attacks either start every sample at x (FGSM,
momentum) or draw their own random start for every sample from the global RNG (PGD). We hand
them x0 and encode the eps-ball around the *original* x in their clip bounds, which advertorch
accepts as per-element tensors:

    clip_min = max(0, x - eps),   clip_max = min(1, x + eps).

Clamping to this box is exactly the projection onto (eps-ball around x) ∩ [0, 1], so for rows
with x0 = x every step is identical to the textbook attack; advertorch's own eps (relative to
x0) is set to 2 eps, a superset of the box that never binds before it. One advertorch call per
batch, whatever mix of random and clean starts it holds. FGSM's step from a random start
(fallback images) is one signed step of size eps, projected back into the box.

L2 (``--norm l2``). An L2 ball is no box, so the start is passed as advertorch's initial
perturbation instead:
  ``fgsm``      advertorch's ``GradientAttack`` (fast gradient method): one step of L2 length
                eps along the normalised gradient, from x0.
  ``pgd``       advertorch's ``perturb_iterative`` with ord=2, the loop of its ``L2PGDAttack``,
                with delta_init = x0 - x: steps of L2 length ``step`` along the normalised
                gradient, each followed by the clip to [0, 1] and the projection onto the ball.
  ``momentum``  MI-FGSM in L2 (Dong et al. 2018): g <- g + grad / ||grad||_1, a step of L2 length
                ``step`` along g / ||g||_2, then the clip to [0, 1] and the projection onto the
                ball. Our own loop: advertorch 0.2.3's ``MomentumIterativeAttack(ord=2)`` projects
                with eps * (delta / ||delta||) / delta, which is 0 / 0 = NaN on every value whose
                perturbation is exactly 0 (a value the gradient never reaches).
"""

from dataclasses import dataclass
from typing import Callable

import torch

from ._compat import (GradientAttack, GradientSignAttack, LinfPGDAttack, MomentumIterativeAttack,
                      perturb_iterative)

# Below this, a gradient counts as zero (advertorch's normalize_by_pnorm uses the same floor).
_TINY = 1e-6

# The optimisers that draw nothing at random (a random start is the plan's ``rand_start``): an
# attack on one of them with no random start or guide is the same every run. One not listed
# counts as random (``-n`` runs it every time).
DETERMINISTIC = frozenset({"fgsm", "pgd", "momentum"})


@dataclass(frozen=True)
class Optimiser:
    """``runs[norm](predict, loss_fn, x, x0, y, eps, step, max_iter)`` -> adversarial images.

    eps / step are in [0, 1] pixel units (L-inf: already divided by 255).
    """

    linf: Callable
    l2: Callable
    single_step: bool = False

    def run(self, norm):
        return {"linf": self.linf, "l2": self.l2}[norm]

    def iterations(self, max_iter):
        return 1 if self.single_step else int(max_iter)


def linf_box(x, eps):
    """The per-element bounds of (L-inf ball of radius eps around x) ∩ [0, 1]."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def l2_directions(v):
    """v / ||v||_2 per sample (zero where v is zero)."""
    norms = v.flatten(1).norm(dim=1).clamp(min=_TINY)
    return v / norms.view(-1, *([1] * (v.dim() - 1)))


def _fgsm(predict, loss_fn, x, x0, y, eps, step, max_iter):
    lo, hi = linf_box(x, eps)
    attack = GradientSignAttack(predict, loss_fn, eps=eps, clip_min=lo, clip_max=hi, targeted=False)
    return attack.perturb(x0, y)


def _pgd(predict, loss_fn, x, x0, y, eps, step, max_iter):
    lo, hi = linf_box(x, eps)
    attack = LinfPGDAttack(predict, loss_fn, eps=2 * eps, nb_iter=max_iter, eps_iter=step,
                           rand_init=False, clip_min=lo, clip_max=hi, targeted=False)
    return attack.perturb(x0, y)


def _momentum(predict, loss_fn, x, x0, y, eps, step, max_iter):
    lo, hi = linf_box(x, eps)
    attack = MomentumIterativeAttack(predict, loss_fn, eps=2 * eps, nb_iter=max_iter,
                                     decay_factor=1.0, eps_iter=step, clip_min=lo, clip_max=hi,
                                     targeted=False)
    return attack.perturb(x0, y)


def _fgm_l2(predict, loss_fn, x, x0, y, eps, step, max_iter):
    attack = GradientAttack(predict, loss_fn, eps=float(eps), clip_min=0.0, clip_max=1.0, targeted=False)
    return attack.perturb(x0, y)


def _pgd_l2(predict, loss_fn, x, x0, y, eps, step, max_iter):
    delta = (x0 - x).detach().clone()
    return perturb_iterative(x, y, predict, nb_iter=int(max_iter), eps=float(eps), eps_iter=float(step),
                             loss_fn=loss_fn, delta_init=delta, minimize=False, ord=2,
                             clip_min=0.0, clip_max=1.0)


def project_l2(x, adv, radius):
    """(ball of L2 radius ``radius`` around x) ∩ [0, 1]: shrink adv - x to the radius, then clip
    (the clip only shortens each value's move, so the result stays in the ball). In float64."""
    delta = adv.double() - x.double()
    norms = delta.flatten(1).norm(dim=1)
    factor = (radius / norms.clamp(min=1e-300)).clamp(max=1.0)
    return (x.double() + delta * factor.view(-1, *([1] * (x.dim() - 1)))).clamp_(0.0, 1.0).to(x.dtype)


def _momentum_l2(predict, loss_fn, x, x0, y, eps, step, max_iter, decay=1.0):
    delta = (x0 - x).detach()
    g = torch.zeros_like(x)
    for _ in range(int(max_iter)):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(predict(x + delta), y), delta)
        l1 = grad.flatten(1).abs().sum(1).clamp(min=_TINY)
        g = decay * g + grad / l1.view(-1, *([1] * (x.dim() - 1)))
        delta = project_l2(x, x + delta.detach() + step * l2_directions(g), eps) - x
    return x + delta


OPTIMISERS = {
    "fgsm": Optimiser(_fgsm, _fgm_l2, single_step=True),
    "pgd": Optimiser(_pgd, _pgd_l2),
    "momentum": Optimiser(_momentum, _momentum_l2),
}
