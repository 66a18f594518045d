"""The one attack path: every image of a split perturbed by any attack or ready plan, its
adversarial features and run statistics; each batch handed to the caller's hooks."""

import time

import torch
import torch.nn.functional as F

from reid.attacks import attack_batch, plan_attack
from reid.runtime import distributed, progress


def attack_split(model, loader, target, name, *, guides=None, single=False, cosine=False, eps=None,
                 step=None, max_iter=15, generator=None, device="cpu", on_batch=None, weighting="reference",
                 norm="linf", ranked_against=None, rank_k=1, rank_m=1, rank_w=1, restarts=1, eot=1, diversity=0.0,
                 smoothing=0):
    """Attack every image of the split `target` (a `Split`, `loader` yields its images in order).

    `name` is an attack of the registry, or a ready plan (e.g. a universal perturbation's
    `AdditivePlan`). Guides come from `target` itself, or from the `guides` split
    (`--cross_attack`); the ranking-loss and targeted attacks rank `target` against the split
    `ranked_against` (its clean features; `rank_k`: see `RankingLoss`; `rank_m`, `rank_w`: see
    `reid.attacks.targeted`). `restarts`, `eot`: see `reid.attacks.core`; `diversity`,
    `smoothing`: the transfer techniques of `reid.attacks.diversity`.
    `max_iter` is the query budget of a gradient-free attack.
    `on_batch(clean, adv, indices, attacked)` sees each batch: its clean
    and adversarial images, their rows of `target`, and which of them the attack perturbed
    (a (B,) bool mask; the others come back unchanged, with their clean features), to save
    images or pictures, or to feed other models (transfer). Returns the adversarial features
    (N, D) and run statistics; the statistic `max_perturbation` is in the norm's units
    (L-inf: /255; L2: [0, 1] pixel units); `embedding_shift` is the mean L2 distance between the
    attacked images' clean and adversarial L2-normalised features (RobRank's ES distance, 0 to 2);
    a targeted attack adds its metrics (`TargetedPlan.measure`) as `goal` and `goal_clean`.

    Under torchrun every process plans the whole split (the same plan), attacks its block of
    it (``on_batch`` runs in the process that attacked the batch) and gets every process's
    adversarial features back.
    """
    plan = name if not isinstance(name, str) else plan_attack(
        name, target.feats, target.pids, None if guides is None else guides.feats,
        None if guides is None else guides.pids, single=single, cosine=cosine, generator=generator,
        weighting=weighting, m=rank_m, w=rank_w, ranking=None if ranked_against is None else (
            target.camids, (ranked_against.feats, ranked_against.pids, ranked_against.camids), rank_k))
    plan, name = plan.to(device), plan.name
    adv_feats = torch.empty_like(target.feats)
    largest = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for images, _, _, idx in progress(distributed.shard_loader(loader), name):
        images = images.to(device, non_blocking=True)
        adv, feats = attack_batch(model, images, plan, idx, eps=eps, step=step, max_iter=max_iter,
                                  generator=generator, norm=norm, restarts=restarts, eot=eot, diversity=diversity,
                                  smoothing=smoothing)
        adv_feats[idx.to(adv_feats.device)] = F.normalize(feats, dim=1) if cosine else feats
        moved = (adv - images).abs().amax() if norm == "linf" else (
            adv.double() - images.double()).flatten(1).norm(dim=1).amax()
        largest = torch.maximum(largest, moved.double())
        if on_batch is not None:
            on_batch(images, adv, idx, plan.attacked[idx.to(plan.device)].to(device))
    adv_feats = distributed.gather_rows(adv_feats, loader)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    attacked = plan.attacked.to(adv_feats.device)
    shift = (F.normalize(adv_feats[attacked].float(), dim=1) - F.normalize(target.feats[attacked].float().to(
        adv_feats.device), dim=1)).norm(dim=1)
    stats = {"max_perturbation": distributed.all_max(largest) * (255.0 if norm == "linf" else 1.0),
             "attack_seconds": time.perf_counter() - start,
             "images_attacked": plan.num_attacked, "fallback_images": plan.num_fallback,
             "iterations": plan.iterations(max_iter), "random": plan.random,
             "embedding_shift": float(shift.mean()) if shift.numel() else 0.0}
    if hasattr(plan, "measure"):  # a targeted attack's own metrics, of the clean and the adversarial images
        stats["goal_clean"], stats["goal"] = plan.measure(target.feats), plan.measure(adv_feats)
    return adv_feats, stats


def chain(*hooks):
    """One per-batch hook calling each of `hooks` that is not None."""
    hooks = [h for h in hooks if h is not None]
    return (lambda *a: [h(*a) for h in hooks]) if hooks else None
