"""Transfer in one run: the adversarial images crafted on one model (the surrogate) evaluated
on other models (the targets, ``--transfer-to CKPT ...``).

Each target is a checkpoint, rebuilt from the checkpoint alone. The attack is crafted once,
at the surrogate's input size, and a target sees every image, clean or adversarial, the same
way: the surrogate's input (the image at the surrogate's size) resized, bilinear and
antialiased, to the target's size when the two differ (``ResizedInput``). Its clean
baseline, computed once, goes through that same path, so the transfer column measures the
perturbation and nothing of the resize; the target's own clean metrics (the images at its
own size) are recorded beside it as ``clean_native`` when the sizes differ. During every
attack run, ``TransferFeatures`` is a hook of ``reid.evaluation.attack_loop.attack_split``:
each batch's adversarial images go through every target there, so there is no second attack
loop and nothing is written to disk. A target computes its features exactly as
``attack_batch`` does for the surrogate (one no-grad forward pass of the perturbed rows,
clean features for the rows the attack leaves alone), so the surrogate as its own target
reproduces the white-box numbers exactly.

An ensemble of surrogates (``--surrogates CKPT ...``) is the attacked model itself: ``Ensemble``
concatenates the members' L2-normalised features scaled by 1/sqrt(N), so the guided loss
(a weighted sum of squared distances) on the ensemble is exactly the mean of the members'
guided losses, each against its own guides. The attack, its guides, the white-box metrics
and the held-out targets (``--transfer-to``) then need nothing of their own.
"""

import hashlib
import math

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


def check_transfer_paths(paths, flag=FLAG):
    """Each checkpoint once, an existing file: one line naming the flag otherwise."""
    seen = set()
    for path in paths:
        if os.path.isdir(path):
            raise ReidError(f"{flag} {path}: is a folder, expected a checkpoint file")
        if not os.path.isfile(path):
            raise ReidError(f"{flag} {path}: no such checkpoint file")
        key = os.path.realpath(path)
        if key in seen:
            raise ReidError(f"{flag} {path}: given twice")
        seen.add(key)


@dataclass
class TransferTarget:
    """One target model with its clean features and what results.json records of it."""

    label: str                    # the --transfer-to argument: its key in results.json
    model: torch.nn.Module
    input_size: tuple             # (H, W) the target reads
    resize_from: tuple = None     # the surrogate's (H, W) when its images are resized for the target
    view: torch.nn.Module = None  # what the evaluation feeds: the model, or ResizedInput(model)
    splits: dict = field(default_factory=dict)   # "query" / "gallery" -> Split (clean features, via view)
    clean: dict = None                           # METRICS of the clean features: the transfer baseline
    native: dict = field(default_factory=dict)   # with resize_from: Split of the images at the target's size
    clean_native: dict = None                    # with resize_from: METRICS of those
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
        native = {"clean_native": self.clean_native} if self.clean_native is not None else {}
        return {"clean": self.clean, **native, "attacks": attacks, **worst}

    def candidates(self, names, eps):
        """The worst case's candidates at budget ``eps``: (attack, run, per-query values)."""
        return [(name, run, values) for name in names for run, values in enumerate(self.per_query[name, eps])]


def load_view(path, input_size, device):
    """A checkpoint's model rebuilt from the checkpoint alone, in eval mode on `device`, and the
    view the surrogate's images (at `input_size`) reach it through; returns (model, its input
    size, the size its images are resized from or None, view, what results.json records)."""
    model, ckpt = load_model(path, map_location="cpu")
    size = tuple(ckpt.get("input_size") or (256, 128))
    check_input_size(model, size, path)
    model.to(device).eval()
    resize_from = None if size == tuple(input_size) else tuple(input_size)
    view = ResizedInput(model, size).eval() if resize_from else model
    info = {"checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
            "checkpoint_epoch": ckpt.get("epoch"), "model": model.config(), "input_size": list(size),
            "adversarial_images_resized_from": list(resize_from) if resize_from else None}
    return model, size, resize_from, view, info


def load_targets(paths, input_size, device):
    """Rebuild every target from its checkpoint alone (before any feature is extracted, so a
    bad file stops the run at once)."""
    targets = []
    for path in paths:
        model, size, resize_from, view, info = load_view(path, input_size, device)
        targets.append(TransferTarget(path, model, size, resize_from, view, info=info))
    return targets


class Ensemble(torch.nn.Module):
    """Models attacked as one: features (B, sum of D_i), the members' L2-normalised features
    concatenated and scaled by 1/sqrt(N). A squared distance between two such features is the
    mean over members of their normalised squared distances, so the guided loss is the mean of
    the members' losses."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x):
        scale = 1 / math.sqrt(len(self.members))
        # float32 at least (members under autocast give bfloat16), float64 kept
        return torch.cat([F.normalize(m(x).to(torch.promote_types(x.dtype, torch.float32)), dim=1) * scale
                          for m in self.members], dim=1)

    def config(self):
        described = [getattr(m, "model", m) for m in self.members]  # a ResizedInput's model
        return {"ensemble": [m.config() if callable(getattr(m, "config", None)) else type(m).__name__
                             for m in described]}


def surrogate_ensemble(model, paths, input_size, device, model_sha256=None):
    """``model`` and the checkpoints ``paths`` as one ``Ensemble`` (each fed the images at
    `input_size`, resized to its own size where it differs); returns (ensemble, the
    results.json record of the surrogates, a SHA-256 of the members' SHA-256s in order)."""
    views, info = [model], {}
    for path in paths:
        *_, view, record = load_view(path, input_size, device)
        views.append(view)
        info[path] = record
    digest = hashlib.sha256(" ".join([str(model_sha256)] + [r["checkpoint_sha256"] for r in info.values()])
                            .encode()).hexdigest()
    return Ensemble(views).eval(), info, digest


class ResizedInput(torch.nn.Module):
    """A target fed the surrogate's input: images at the surrogate's size, resized (bilinear,
    antialiased, clipped to [0, 1]) to the target's ``size`` before its forward pass."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size = model, list(size)

    def forward(self, x):
        x = TF.resize(x, self.size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True).clamp_(0, 1)
        return self.model(x)


def extract_target_features(targets, data, loaders, opts, device, metric):
    """Each target's clean query / gallery features and metrics, once, through the surrogate's
    `loaders` and the target's view (the path its adversarial images take); for a target of
    another input size also at its own size, from its own loaders (``clean_native``)."""
    for target in targets:
        shown = os.path.basename(target.label)
        for name, loader in loaders.items():
            feats, pids, camids = extract_features(target.view, loader, device, f"{shown} {name} features",
                                                   opts.cosine)
            target.splits[name] = Split(name, feats, pids, camids, getattr(data, name))
        target.clean = split_metrics(target.splits["query"], target.splits["gallery"], metric)
        if target.resize_from:
            tf = build_transforms(*target.input_size, train=False)
            for name in loaders:
                loader = eval_loader(getattr(data, name), tf, opts.batch_size, opts.workers)
                feats, pids, camids = extract_features(target.model, loader, device,
                                                       f"{shown} {name} features at its own size", opts.cosine)
                target.native[name] = Split(name, feats, pids, camids, getattr(data, name))
            target.clean_native = split_metrics(target.native["query"], target.native["gallery"], metric)


def clean_arrays(targets):
    """features.npz entries of the targets' clean features: `transfer<k>_query_features`, ... (the
    baseline's), and `transfer<k>_query_features_native`, ... for a target of another size."""
    arrays = {}
    for k, t in enumerate(targets):
        for suffix, splits in (("", t.splits), ("_native", t.native)):
            arrays.update({f"transfer{k}_{name}_features{suffix}": split.feats.cpu().numpy()
                           for name, split in splits.items()})
    return arrays


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
                batch[rows.to(batch.device)] = target.view(adv[rows]).to(batch.dtype).to(batch.device)
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
