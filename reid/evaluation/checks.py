"""Sanity checks of an evaluation (in the spirit of AutoAttack's and Carlini et al.'s): signs that
the attacks were fooled rather than the model robust. Run on every evaluation, stored in
results.json["checks"] and printed with their numbers; `python -m reid.report` runs the ones
that need only results.json on old files. Silent on healthy runs.

  random_model         two forward passes of the same images differ: a model random at
                       inference needs --eot K (fires only when --eot is 1);
  zero_gradient        images whose input gradient is exactly zero (rounding, non-differentiable
                       steps): gradient attacks learn nothing there (try --bpda, or Square);
  gradient_free_wins   a gradient-free attack (SQUARE_*, BANDITS_*, RGF_*) gets a lower AP
                       than every gradient attack on a clear share of the queries at the same budget: suspected
                       gradient masking;
  eps_not_monotone     in a sweep, an attack's (or the worst case's) mAP rises with eps;
  large_eps_far        at an L-inf budget >= 32/255, the lowest mAP is still far from zero;
  transfer_wins        images crafted on this model hurt a --transfer-to model more (relative
                       to its clean mAP) than any white-box attack hurts this one.
"""

import numpy as np
import torch

RANDOM_TOLERANCE = 1e-4     # relative difference of two passes that counts as randomness
GRADIENT_FREE_SHARE = 0.10  # share of queries where the gradient-free attack wins alone
MONOTONE_TOLERANCE = 0.01   # mAP may rise by this much with eps (noise of random starts)
LARGE_EPS = 32.0            # /255: from here on the lowest mAP should be near zero ...
LARGE_EPS_SHARE = 0.10      # ... below this share of the clean mAP
TRANSFER_MARGIN = 0.05      # relative mAP by which a transfer attack must beat the white-box ones
CHECKS = ("random_model", "zero_gradient", "gradient_free_wins", "eps_not_monotone", "large_eps_far", "transfer_wins")
FILE_CHECKS = CHECKS[3:]


def _budgets(value):
    """An attack's (or the worst case's) per-budget entries in results.json, either shape."""
    return value["by_eps"] if "by_eps" in value else [value]


def warning(name, message, **numbers):
    return {"check": name, "message": message, **numbers}


def model_checks(model, images, eot, with_gradient, seed=0):
    """The checks that need the model, on one batch of clean images (B, 3, H, W) in [0, 1]:
    randomness at inference (two no-grad passes) and, with ``with_gradient``, the share of
    images whose input gradient (of a fixed random projection of the features) is exactly zero."""
    found = []
    with torch.no_grad():
        first, second = model(images).float(), model(images).float()
    scale = first.abs().max().clamp(min=1e-12)
    relative = float((first - second).abs().max() / scale)
    if relative > RANDOM_TOLERANCE and eot == 1:
        found.append(warning("random_model", f"the model is random at inference (two passes of the same images "
                             f"differ by {relative:.3g} of the largest feature value): attack it with --eot K "
                             f"(e.g. 10), or its robustness is overstated", relative_difference=relative))
    if with_gradient:
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            feats = model(x).float()
            direction = torch.randn(feats.shape[1], generator=torch.Generator().manual_seed(seed)).to(feats.device)
            grad, = torch.autograd.grad((feats @ direction).sum(), x, allow_unused=True)
        zero = len(x) if grad is None else int((grad.flatten(1).abs().amax(1) == 0).sum())
        if zero:
            found.append(warning("zero_gradient", f"{zero} of {len(x)} images have an exactly zero input gradient: "
                                 "gradient attacks cannot move them (a non-differentiable step? try --bpda, and "
                                 "trust the gradient-free SQUARE_* attacks)", images=len(x), zero_gradient=zero))
    return found


def gradient_free_check(candidates, gradient_free, eps, label):
    """``candidates``: (attack, run, per-query values) of one budget; ``gradient_free``: the
    names among them that use no gradient. Fires when those alone reach the lowest AP on a
    clear share of the queries."""
    free = [v["ap"] for n, _, v in candidates if n in gradient_free]
    grad = [v["ap"] for n, _, v in candidates if n not in gradient_free]
    if not free or not grad:
        return []
    free, grad = np.min(free, axis=0), np.min(grad, axis=0)
    valid = ~np.isnan(free)
    share = float(np.mean(free[valid] < grad[valid] - 1e-9)) if valid.any() else 0.0
    if share < GRADIENT_FREE_SHARE:
        return []
    return [warning("gradient_free_wins", f"at eps {label}, a gradient-free attack beats every gradient attack on "
                    f"{100 * share:.1f}% of the queries: suspected gradient masking (the gradient attacks' numbers "
                    "overstate the robustness)", eps=eps, share=share)]


def file_checks(results):
    """The checks that need only a results.json (of any version)."""
    found = []
    norm = results.get("config", {}).get("norm", "linf")
    clean = results["clean"]["mAP"]
    lines = {name: sorted((float(e["eps"]), e["mean"]["mAP"]) for e in _budgets(v) if "eps" in e)
             for name, v in results.get("attacks", {}).items()}
    if "worst" in results:
        lines["worst"] = sorted((float(e["eps"]), e["metrics"]["mAP"]) for e in _budgets(results["worst"]))
    for name, points in lines.items():
        for (e0, m0), (e1, m1) in zip(points, points[1:]):
            if m1 > m0 + MONOTONE_TOLERANCE:
                found.append(warning("eps_not_monotone", f"{name}: mAP rises from {100 * m0:.2f} at eps {e0:g} to "
                                     f"{100 * m1:.2f} at eps {e1:g}: a larger budget must not help the model "
                                     "(a broken or masked attack)", attack=name, eps=[e0, e1], mAP=[m0, m1]))
    if norm == "linf":
        by_eps = {}
        for points in lines.values():
            for e, m in points:
                by_eps[e] = min(m, by_eps.get(e, m))
        for e, m in sorted(by_eps.items()):
            if e >= LARGE_EPS and m > LARGE_EPS_SHARE * clean:
                found.append(warning("large_eps_far", f"at eps {e:g}/255 the lowest mAP is {100 * m:.2f} "
                                     f"({100 * m / clean:.0f}% of the clean {100 * clean:.2f}): at such a budget every "
                                     "model should fall near zero (a masked or too weak attack)", eps=e, mAP=m))
    white = min((m / clean for points in lines.values() for _, m in points), default=None)
    for label, record in results.get("transfer", {}).items():
        target_clean = record.get("clean", {}).get("mAP")
        if white is None or not target_clean:
            continue
        moved = [e["mean"]["mAP"] / target_clean for v in record.get("attacks", {}).values() for e in _budgets(v)]
        if moved and min(moved) < white - TRANSFER_MARGIN:
            found.append(warning("transfer_wins", f"images crafted on this model leave {label} at "
                                 f"{100 * min(moved):.0f}% of its clean mAP, below the {100 * white:.0f}% that the "
                                 "white-box attacks leave this model: its white-box attacks are weaker than they "
                                 "should be (gradient masking?)",
                                 target=label, transfer_relative_mAP=min(moved), white_box_relative_mAP=white))
    return found


def print_warnings(found):
    for item in found:
        print(f"check {item['check']}: {item['message']}")
