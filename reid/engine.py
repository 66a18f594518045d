"""Training and evaluation loops shared by the CLIs.

Evaluation has one path for every attack and target set: `attack_split` perturbs
every image of one split (query or gallery) with any attack of `reid.attacks`, and
`retrieval_metrics` ranks whichever pair of clean / adversarial features results.
"""

import json
import os
import time
from dataclasses import dataclass
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from reid import distributed
from reid.attacks import UniversalGuides, attack_batch, learn_uap, plan_attack
from reid.data import Sample, build_transforms, eval_loader, train_loader
from reid.features import extract_features
from reid.losses import batch_hard_triplet_loss
from reid.metrics import evaluate_rank, pairwise_distance
from reid.utils import ReidError, atomic_path, progress

METRIC_NAMES = ("mAP", "rank1", "rank5", "rank10", "mINP")


def retrieval_metrics(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, metric="euclidean",
                      per_query=False):
    """The METRICS dict of DESIGN.md (fractions) for one query / gallery feature pair; with
    `per_query`, (METRICS, evaluate_rank's per-query AP / INP / first-hit rank arrays).
    Under torchrun, computed once by rank 0 and sent to the other ranks."""
    if not distributed.is_main():
        return distributed.broadcast_object(None)
    distmat = pairwise_distance(query_features, gallery_features, metric)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10, per_query=per_query)
    return distributed.broadcast_object((as_metrics(result), result["per_query"]) if per_query
                                        else as_metrics(result))


def as_metrics(result):
    """The METRICS dict of an `evaluate_rank` (or `rank_summary`) result."""
    cmc = result["cmc"]
    return {"mAP": float(result["mAP"]), "rank1": float(cmc[0]), "rank5": float(cmc[4]),
            "rank10": float(cmc[9]), "mINP": float(result["mINP"])}


def evaluate(model, query_loader, gallery_loader, device, metric="euclidean"):
    """Clean retrieval metrics of `model` on a query / gallery split."""
    qf, q_pids, q_camids = extract_features(model, query_loader, device, desc="query features")
    gf, g_pids, g_camids = extract_features(model, gallery_loader, device, desc="gallery features")
    return retrieval_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, metric)


def format_metrics(metrics):
    return "  ".join(f"{k} {100 * metrics[k]:5.1f}" for k in METRIC_NAMES)


def metrics_table(rows):
    """A plain-text table, one row per (name, METRICS), values in percent."""
    width = max(12, *(len(name) for name, _ in rows))
    lines = [f"{'':<{width}}" + "".join(f"{k:>8}" for k in METRIC_NAMES)]
    for name, m in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{100 * m[k]:8.2f}" for k in METRIC_NAMES))
    return "\n".join(lines)


def side_by_side(rows, columns, keys=("mAP", "rank1")):
    """A plain-text table with a row per name of `rows` and, per (title, {name: METRICS})
    of `columns`, the `keys` in percent joined by " / " (missing entries blank)."""
    cells = [[" / ".join(f"{100 * col[name][k]:.2f}" for k in keys) if name in col else "" for _, col in columns]
             for name in rows]
    width = max(12, *(len(name) for name in rows))
    widths = [max(len(title), *(len(row[j]) for row in cells)) + 2 for j, (title, _) in enumerate(columns)]
    lines = [f"{'':<{width}}" + "".join(f"{title:>{w}}" for (title, _), w in zip(columns, widths))]
    for name, row in zip(rows, cells):
        lines.append(f"{name:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    return "\n".join(lines)


class Objective:
    """The training loss of a model kind: cross-entropy on logits or batch-hard triplet."""

    def __init__(self, kind, soft_margin=False, margin=10.0):
        self.kind, self.soft_margin, self.margin = kind, soft_margin, margin

    def __call__(self, model, images, labels):
        features = model(images)
        if self.kind == "classif":
            logits = model.fc(features)
            return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()
        return batch_hard_triplet_loss(features, labels, self.margin, self.soft_margin), None


def train_epoch(model, loader, optimizer, objective, device, epoch, prepare_batch=None):
    """One epoch; `prepare_batch(model, images, labels, *companions)` may replace the batch
    (GOAT), where `companions` are the loader's extra per-sample images, if any: it returns
    the new images, or (images, labels) when the batch changes size (``reid.defence``).
    Under torchrun ``model`` is the DistributedDataParallel one and the loader yields this
    process's part of each batch; ``prepare_batch`` gets the module inside, so GOAT's attack
    runs on this process's images without synchronising anything."""
    model.train()
    total_loss, total_acc, n = 0.0, 0.0, 0
    bar = progress(loader, f"epoch {epoch}")
    for images, labels, _, _, *companions in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if prepare_batch is not None:
            companions = [c.to(device, non_blocking=True) for c in companions]
            images = prepare_batch(distributed.unwrap(model), images, labels, *companions)
            if isinstance(images, tuple):
                images, labels = images
        loss, acc = objective(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += 1
        total_loss += loss.item()
        total_acc += acc.item() if acc is not None else 0.0
        bar.set_postfix(loss=f"{total_loss / n:.3f}")
    stats = {"loss": total_loss / max(n, 1)}
    if objective.kind == "classif":
        stats["accuracy"] = total_acc / max(n, 1)
    return stats


def lr_schedule(kind, optimizer, last_epoch=-1):
    """The reference schedules: classification steps at 20 and 40; triplet decays after 50."""
    if kind == "classif":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[20, 40], gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 if e < 50 else 0.001 ** ((e - 50) / 100))


def append_jsonl(path, record):
    """Append one line; a line is small enough to be written whole."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _logged_epoch(line):
    """The epoch of one line of a training log; None if the line is not an epoch record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) else None


def keep_log_epochs(path, epochs):
    """Keep the records of the first `epochs` epochs of a training log, drop the rest (atomically).

    train.py logs an epoch before checkpointing it, so a run stopped in between has logged one
    epoch more than its last checkpoint holds: ``--resume`` redoes that epoch and must not log it
    twice; a fresh run (``epochs`` 0) starts an empty log. A torn last line (a process killed in
    the middle of writing it) is dropped; a bad line elsewhere is an error naming the file.
    """
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    logged = [_logged_epoch(line) for line in lines]
    for i, epoch in enumerate(logged[:-1]):
        if epoch is None:
            raise ReidError(f"{path}: line {i + 1} is not an epoch record (expected one JSON line per epoch)")
    kept = [line for line, epoch in zip(lines, logged) if epoch is not None and epoch < epochs]
    if len(kept) == len(lines):
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.writelines(line + "\n" for line in kept)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


@dataclass
class Split:
    """Clean features of one split with the samples they come from."""

    name: str  # "query" or "gallery"
    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    samples: List[Sample]


def split_metrics(query, gallery, metric="euclidean", query_feats=None, gallery_feats=None, per_query=False):
    """METRICS of `query` against `gallery`, with either side's features optionally replaced
    (and the per-query values with `per_query`, see `retrieval_metrics`)."""
    qf = query.feats if query_feats is None else query_feats
    gf = gallery.feats if gallery_feats is None else gallery_feats
    return retrieval_metrics(qf, gf, query.pids, gallery.pids, query.camids, gallery.camids, metric, per_query)


def attack_split(model, loader, target, name, *, guides=None, single=False, cosine=False, eps=None,
                 step=None, max_iter=15, generator=None, device="cpu", on_batch=None, weighting="reference",
                 norm="linf"):
    """Attack every image of the split `target` (a `Split`, `loader` yields its images in order).

    `name` is an attack of the registry, or a ready plan (e.g. a universal perturbation's
    `AdditivePlan`). Guides come from `target` itself, or from the `guides` split
    (`--cross_attack`). `on_batch(clean, adv, indices, attacked)` sees each batch: its clean
    and adversarial images, their rows of `target`, and which of them the attack perturbed
    (a (B,) bool mask; the others come back unchanged, with their clean features), to save
    images or pictures, or to feed other models (transfer). Returns the adversarial features
    (N, D) and run statistics; the statistic `max_perturbation` is in the norm's units
    (L-inf: /255; L2: [0, 1] pixel units).

    Under torchrun every process plans the whole split (the same plan), attacks its block of
    it (``on_batch`` runs in the process that attacked the batch) and gets every process's
    adversarial features back.
    """
    plan = name if not isinstance(name, str) else plan_attack(
        name, target.feats, target.pids, None if guides is None else guides.feats,
        None if guides is None else guides.pids, single=single, cosine=cosine, generator=generator,
        weighting=weighting)
    plan, name = plan.to(device), plan.name
    adv_feats = torch.empty_like(target.feats)
    largest = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for images, _, _, idx in progress(distributed.shard_loader(loader), name):
        images = images.to(device, non_blocking=True)
        adv, feats = attack_batch(model, images, plan, idx, eps=eps, step=step, max_iter=max_iter,
                                  generator=generator, norm=norm)
        adv_feats[idx.to(adv_feats.device)] = F.normalize(feats, dim=1) if cosine else feats
        moved = (adv - images).abs().amax() if norm == "linf" else (
            adv.double() - images.double()).flatten(1).norm(dim=1).amax()
        largest = torch.maximum(largest, moved.double())
        if on_batch is not None:
            on_batch(images, adv, idx, plan.attacked[idx.to(plan.device)].to(device))
    adv_feats = distributed.gather_rows(adv_feats, loader)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    stats = {"max_perturbation": distributed.all_max(largest) * (255.0 if norm == "linf" else 1.0),
             "attack_seconds": time.perf_counter() - start,
             "images_attacked": plan.num_attacked, "fallback_images": plan.num_fallback,
             "iterations": plan.iterations(max_iter)}
    return adv_feats, stats


def summarize_runs(runs):
    """mean / std / min / max over repeated runs of an attack (METRICS dicts)."""
    table = {k: np.array([r[k] for r in runs]) for k in METRIC_NAMES}
    return {stat: {k: float(fn(v)) for k, v in table.items()}
            for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}


def universal_source(model, data, input_size, batch_size, workers, device, config):
    """What learning a universal perturbation needs from one dataset's training split:
    its guides (clean features, k-means centroids; computed once) and a training loader
    (P x K batches for the ``batch`` loss, shuffled batches otherwise, in an order that
    depends only on ``config.seed``). Images are not augmented, as in MetaAttack's code:
    the delta meets the queries as they are, and learning on flipped / shifted images
    measured weaker (benchmarks/RESULTS.md)."""
    transform = build_transforms(*input_size, train=False)
    loader = eval_loader(data.train, transform, batch_size, workers)
    feats, labels, _ = extract_features(model, loader, device, f"{data.name} training features")
    guides = UniversalGuides.build(feats, labels, config.max_clusters, config.seed)
    batch = min(batch_size, len(data.train))
    instances = None
    if config.loss == "batch":
        instances = 4
        batch = max(instances, min(batch // instances, data.num_train_pids) * instances)
    learn_loader = train_loader(data.train, transform, batch, instances, workers, seed=config.seed)
    return learn_loader, guides


def learn_universal(model, source, config, input_size, *, meta=None, batch_size=64, workers=0,
                    device="cpu", log=print):
    """Learn a universal perturbation on ``source.train`` (first-order meta-learning with
    ``meta.train`` if given). Returns (delta (3, H, W) on CPU, per-epoch history, seconds)."""
    loader, guides = universal_source(model, source, input_size, batch_size, workers, device, config)
    meta_loader = meta_guides = None
    if meta is not None:
        meta_loader, meta_guides = universal_source(model, meta, input_size, batch_size, workers, device, config)
    start = time.perf_counter()
    delta, history = learn_uap(model, loader, guides, config, input_size, meta_loader=meta_loader,
                               meta_guides=meta_guides, device=device, log=log,
                               progress=progress)
    return delta, history, time.perf_counter() - start
