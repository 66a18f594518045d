"""Transfer in one run: the adversarial images crafted on one model (the surrogate) evaluated
on other models (the targets, ``--transfer-to CKPT ...``).

Each target is a checkpoint, rebuilt from the checkpoint alone. Its clean query / gallery
features are computed once, at its own input size. During every attack run,
``TransferFeatures`` is a hook of ``reid.evaluation.attack_loop.attack_split``: each batch's adversarial
images go through every target there (resized to the target's input size when it differs
from the surrogate's), so there is no second attack loop and nothing is written to disk.
A target computes its features exactly as ``attack_batch`` does for the surrogate (one
no-grad forward pass of the perturbed rows, clean features for the rows the attack leaves
alone), so the surrogate as its own target reproduces the white-box numbers exactly.
"""

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from reid.data import build_transforms, eval_loader
from reid.evaluation.features import extract_features
from reid.evaluation.splits import Split, split_metrics
from reid.metrics import summarize_runs
from reid.models import check_input_size, load_model
from reid.runtime import ReidError, distributed, file_sha256

FLAG = "--transfer-to"


def check_transfer_paths(paths):
    """Each target once, an existing file: one line naming the flag otherwise."""
    seen = set()
    for path in paths:
        if os.path.isdir(path):
            raise ReidError(f"{FLAG} {path}: is a folder, expected a checkpoint file")
        if not os.path.isfile(path):
            raise ReidError(f"{FLAG} {path}: no such checkpoint file")
        key = os.path.realpath(path)
        if key in seen:
            raise ReidError(f"{FLAG} {path}: given twice")
        seen.add(key)


@dataclass
class TransferTarget:
    """One target model with its clean features and what results.json records of it."""

    label: str                    # the --transfer-to argument: its key in results.json
    model: torch.nn.Module
    input_size: tuple             # (H, W) the target reads
    resize_from: tuple = None     # the surrogate's (H, W) when adversarial images are resized
    splits: dict = field(default_factory=dict)   # "query" / "gallery" -> Split (clean features)
    clean: dict = None                           # METRICS of the clean features
    runs: dict = field(default_factory=dict)       # (attack, eps) -> [METRICS per run]
    per_query: dict = field(default_factory=dict)  # (attack, eps) -> [per-query values per run]
    worst: list = field(default_factory=list)      # the worst case on this target, per budget
    info: dict = field(default_factory=dict)

    def results(self, sweep=False):
        """Its results.json entry, shaped as the surrogate's results: {"clean": METRICS,
        "attacks": {NAME: {"mean", "std", "runs", "eps"}}} (with a sweep NAME: {"by_eps":
        [...]}), plus "worst" once computed; so ``reid.evaluation.report`` reads it as it reads those."""
        attacks = {}
        for (name, eps), runs in self.runs.items():
            summary = summarize_runs(runs)
            entry = {"mean": summary["mean"], "std": summary["std"], "runs": runs, "eps": eps}
            if sweep:
                attacks.setdefault(name, {"by_eps": []})["by_eps"].append(entry)
            else:
                attacks[name] = entry
        worst = {"worst": {"by_eps": self.worst} if sweep else self.worst[0]} if self.worst else {}
        return {"clean": self.clean, "attacks": attacks, **worst}

    def candidates(self, names, eps):
        """The worst case's candidates at budget ``eps``: (attack, run, per-query values)."""
        return [(name, run, values) for name in names for run, values in enumerate(self.per_query[name, eps])]


def load_targets(paths, input_size, device):
    """Rebuild every target from its checkpoint alone (before any feature is extracted, so a
    bad file stops the run at once)."""
    targets = []
    for path in paths:
        model, ckpt = load_model(path, map_location="cpu")
        size = tuple(ckpt.get("input_size") or (256, 128))
        check_input_size(model, size, path)
        model.to(device).eval()
        resize_from = None if size == tuple(input_size) else tuple(input_size)
        info = {"checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
                "checkpoint_epoch": ckpt.get("epoch"), "model": model.config(), "input_size": list(size),
                "adversarial_images_resized_from": list(resize_from) if resize_from else None}
        targets.append(TransferTarget(path, model, size, resize_from, info=info))
    return targets


def extract_target_features(targets, data, loaders, opts, device, metric):
    """Each target's clean query / gallery features and metrics, once: through the
    surrogate's `loaders` where the input size is the same, its own loaders otherwise."""
    for target in targets:
        own = loaders
        if target.resize_from:
            tf = build_transforms(*target.input_size, train=False)
            own = {name: eval_loader(getattr(data, name), tf, opts.batch_size, opts.workers) for name in loaders}
        for name, loader in own.items():
            feats, pids, camids = extract_features(target.model, loader, device,
                                                   f"{os.path.basename(target.label)} {name} features", opts.cosine)
            target.splits[name] = Split(name, feats, pids, camids, getattr(data, name))
        target.clean = split_metrics(target.splits["query"], target.splits["gallery"], metric)


def clean_arrays(targets):
    """features.npz entries of the targets' clean features: `transfer<k>_query_features`, ..."""
    return {f"transfer{k}_{name}_features": split.feats.cpu().numpy()
            for k, t in enumerate(targets) for name, split in t.splits.items()}


class TransferFeatures:
    """`attack_split`'s per-batch hook: the adversarial features of every target for one run.
    `loader`: the loader of the attacked split; under torchrun each process fills the rows
    of its batches, and `record` puts them together."""

    def __init__(self, targets, split, cosine, loader):
        self.targets, self.split, self.cosine, self.loader = targets, split, cosine, loader
        self.feats = [torch.empty_like(t.splits[split].feats) for t in targets]

    @torch.no_grad()
    def __call__(self, clean, adv, indices, attacked):
        rows = attacked.nonzero().squeeze(1)
        for target, out in zip(self.targets, self.feats):
            idx = indices.to(out.device)
            batch = target.splits[self.split].feats[idx].clone()  # unattacked rows: clean features
            if rows.numel():
                x = adv[rows]
                if target.resize_from:
                    x = TF.resize(x, list(target.input_size), interpolation=TF.InterpolationMode.BILINEAR,
                                  antialias=True).clamp_(0, 1)
                batch[rows.to(batch.device)] = target.model(x).to(batch.dtype).to(batch.device)
            out[idx] = F.normalize(batch, dim=1) if self.cosine else batch

    def arrays(self, name):
        """features.npz entries of this run: `transfer<k>_<split>_features_adv_<name>`, k the
        target's position in --transfer-to."""
        return {f"transfer{k}_{self.split}_features_adv_{name}": f.cpu().numpy() for k, f in enumerate(self.feats)}

    def record(self, name, eps, metric):
        """At the end of the run: every process's rows gathered (under torchrun), and this
        run's metrics (and per-query values, the worst case's candidates) appended to each
        target's runs of attack `name` at budget `eps`."""
        self.feats = [distributed.gather_rows(f, self.loader) for f in self.feats]
        for target, feats in zip(self.targets, self.feats):
            adv = {f"{self.split}_feats": feats}
            metrics, values = split_metrics(target.splits["query"], target.splits["gallery"], metric,
                                            per_query=True, **adv)
            target.runs.setdefault((name, eps), []).append(metrics)
            target.per_query.setdefault((name, eps), []).append(values)
