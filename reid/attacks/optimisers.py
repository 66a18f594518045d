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

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ._compat import (GradientAttack, GradientSignAttack, LinfPGDAttack, MomentumIterativeAttack,
                      perturb_iterative)
from .blackbox import QUERIES_PER_STEP, QUERY_OPTIMISERS, linf_box, query_losses

# Below this, a gradient counts as zero (advertorch's normalize_by_pnorm uses the same floor).
_TINY = 1e-6


@dataclass(frozen=True)
class Optimiser:
    """``runs[norm](predict, loss_fn, x, x0, y, eps, step, max_iter)`` -> adversarial images.

    eps / step are in [0, 1] pixel units (L-inf: already divided by 255). ``l2`` None: the
    optimiser has no L2 form. ``gradient_free``: it only queries features (``max_iter`` is
    then its query budget per image, spent ``queries_per_step`` at a time, and no backward
    pass is made; ``blackbox.py``). ``random``: it draws
    random numbers as it goes and takes ``generators=`` (one ``torch.Generator`` per image,
    or None for the global RNG). ``own_step``: it ignores ``step`` (APGD's step schedule).
    """

    linf: Callable
    l2: Optional[Callable]
    single_step: bool = False
    gradient_free: bool = False
    random: bool = False
    own_step: bool = False
    queries_per_step: int = 1

    def run(self, norm):
        return {"linf": self.linf, "l2": self.l2}[norm]

    def iterations(self, max_iter):
        """Gradient passes per image, or for a gradient-free optimiser the queries it spends."""
        if self.gradient_free:
            return int(max_iter) // self.queries_per_step * self.queries_per_step
        return 1 if self.single_step else int(max_iter)


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


# APGD (Croce & Hein, ICML 2020): momentum of the step, the step's first size in units of
# eps, the share of increasing steps below which a checkpoint halves the step, and the
# checkpoint fractions' first value, shrink and floor.
APGD_MOMENTUM = 0.75
APGD_FIRST_STEP = 2.0
APGD_RHO = 0.75
_APGD_FRACTIONS = (0.22, 0.03, 0.06)


def apgd_checkpoints(n_iter):
    """The iterations (steps taken, 1-based) after which APGD checks each image's progress:
    ceil(w_j n_iter) for w_0 = 0, w_1 = 0.22, w_{j+1} = w_j + max(w_j - w_{j-1} - 0.03, 0.06),
    below n_iter (a check after the last step would change nothing)."""
    first, shrink, floor = _APGD_FRACTIONS
    fractions = [0.0, first]
    while fractions[-1] + max(fractions[-1] - fractions[-2] - shrink, floor) < 1.0:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - shrink, floor))
    # round() first: 0.22 * 100 is 22.000000000000004 in floats, whose ceil would be 23.
    points = sorted({math.ceil(round(w * n_iter, 9)) for w in fractions[1:]})
    return [p for p in points if 0 < p < n_iter]


def _loss_and_grad(predict, loss_fn, x, y, need_grad=True):
    """Per-image losses (B,) at x, and their input gradient (None when ``need_grad`` is False)."""
    if not need_grad:
        return query_losses(predict, loss_fn, x, y), None
    x = x.detach().requires_grad_(True)
    losses = loss_fn.per_sample(predict(x), y)
    grad, = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), grad.detach()


def _apgd(norm):
    """APGD in ``norm``: ``max_iter`` forward+backward passes (the first at x0), each step
    followed by the loss at its new point (the last one by a forward pass only); the step
    starts at 2 eps and is halved per image at the checkpoints of ``apgd_checkpoints`` when
    fewer than 0.75 of the steps since the last checkpoint raised the loss, or when neither the
    step nor the best loss changed since then; such an image restarts from its best point
    (momentum reset). Returns each image's best iterate. ``trace`` (a list) receives the
    per-image step sizes after every step, for tests."""

    def direction(g):
        return g.sign() if norm == "linf" else l2_directions(g)

    def proj(x, v, eps):
        if norm == "linf":
            lo, hi = linf_box(x, eps)
            return torch.minimum(torch.maximum(v, lo), hi)
        return project_l2(x, v, eps)

    def run(predict, loss_fn, x, x0, y, eps, step, max_iter, trace=None):
        n_iter = int(max_iter)
        shape = (-1,) + (1,) * (x.dim() - 1)
        cur = x0.detach().clone()
        loss, grad = _loss_and_grad(predict, loss_fn, cur, y)
        best, best_loss, best_grad = cur.clone(), loss.clone(), grad.clone()
        prev = cur.clone()
        eta = torch.full((len(x),), APGD_FIRST_STEP * float(eps), dtype=x.dtype, device=x.device)
        checks = set(apgd_checkpoints(n_iter))
        last_check, raised = 0, torch.zeros(len(x), dtype=torch.long, device=x.device)
        eta_then, best_then = eta.clone(), best_loss.clone()
        for k in range(1, n_iter + 1):
            z = proj(x, cur + eta.view(shape) * direction(grad), eps)
            new = z if k == 1 else proj(x, cur + APGD_MOMENTUM * (z - cur) + (1 - APGD_MOMENTUM) * (cur - prev),
                                        eps)
            new_loss, new_grad = _loss_and_grad(predict, loss_fn, new, y, need_grad=k < n_iter)
            raised += (new_loss > loss).long()
            better = new_loss > best_loss
            best[better], best_loss[better] = new[better], new_loss[better]
            if new_grad is not None:
                best_grad[better] = new_grad[better]
            prev, cur, loss, grad = cur, new, new_loss, new_grad
            if k in checks:
                halve = (raised.double() < APGD_RHO * (k - last_check)) | ((eta == eta_then) & (best_loss <= best_then))
                eta = torch.where(halve, eta / 2, eta)
                cur, prev = cur.clone(), prev.clone()
                cur[halve] = prev[halve] = best[halve]
                loss = torch.where(halve, best_loss, loss)
                grad = torch.where(halve.view(shape), best_grad, grad)
                last_check, eta_then, best_then = k, eta.clone(), best_loss.clone()
                raised.zero_()
            if trace is not None:
                trace.append(eta.clone())
        return best

    return run


OPTIMISERS = {
    "fgsm": Optimiser(_fgsm, _fgm_l2, single_step=True),
    "pgd": Optimiser(_pgd, _pgd_l2),
    "momentum": Optimiser(_momentum, _momentum_l2),
    "apgd": Optimiser(_apgd("linf"), _apgd("l2"), own_step=True),
    **{name: Optimiser(run, None, gradient_free=True, random=True, own_step=name == "square",
                       queries_per_step=QUERIES_PER_STEP[name]) for name, run in QUERY_OPTIMISERS.items()},
}
