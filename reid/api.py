"""Evaluate any re-ID model clean and under attack: the one evaluation path of the toolkit.

`evaluate_robustness(model, dataset_folder, attacks=[...], ...)` takes any `torch.nn.Module`
that maps images in [0, 1] of shape (B, 3, H, W) to features (B, D) (normalising inside),
extracts the clean query / gallery features once, runs every requested attack through
`reid.engine.attack_split`, writes results.json (and, on request, features, adversarial
images and pictures) into `out`, and returns the results.json dict. With `transfer_to`
(checkpoints), the same adversarial images are also evaluated on each of those models
(`reid.transfer`). `gen_adv.py` is the command-line layer over `run_evaluation`: it loads a
checkpoint (or calls a user's model factory, `model_from_factory`) and passes its options.
"""

import datetime
import importlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Union

import numpy as np
import scipy.io
import torch
import torchvision
from PIL import Image

import reid
from reid import amp, distributed
from reid.attacks import (DEFAULT_EPS, DEFAULT_STEP, UNIVERSAL_ATTACKS, UapConfig, check_attack_args, check_budget,
                          check_norm, load_uap, parse_step, resolve_step, save_uap, universal_plan)
from reid.data import build_transforms, eval_loader, load_dataset, read_image
from reid.engine import (Split, attack_split, learn_universal, metrics_table, side_by_side, split_metrics,
                         summarize_runs)
from reid.features import extract_features
from reid.metrics import pairwise_distance
from reid.report import budget_rows, worst_entry, write_report
from reid.transfer import TransferFeatures, check_transfer_paths, clean_arrays, extract_target_features, load_targets
from reid.utils import (MAX_SEED, ReidError, _first_message_line, atomic_path, check_input_dir, check_number,
                        check_writable_dir, link_or_copy, load_torch_file, resolve_device, seed_everything)
from reid.viz import perturbation_figure, ranking_figure

DATASET_FOLDERS = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}


@dataclass
class Options:
    """Every evaluation option, named as gen_adv.py's flags (``attack`` = ``-a``,
    ``nb_repeat`` = ``-n``, ``batch_size`` = ``-b``); the defaults are the CLI's."""

    attack: List[str] = field(default_factory=list)  # attack names; [] = clean only
    dataset: str = "market"
    cosine: bool = False
    eps: Union[None, float, List[float]] = None  # one budget, or several (a sweep); None: the norm's default
    step: Union[None, float, str] = None  # a number, "auto" (2.5 eps / max_iter) or None (the norm's default)
    max_iter: int = 15
    norm: str = "linf"  # threat model: "linf" (eps in /255) or "l2" (an L2 radius in [0, 1] pixel units)
    single: bool = False
    guide_weights: str = "reference"
    gallery: bool = False
    cross_attack: bool = False
    nb_repeat: int = 1
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    workers: int = 4
    out: Optional[str] = None
    save_features: bool = False
    save_images: bool = False
    visualize: int = 0
    uap: Optional[str] = None
    uap_loss: str = "centroid"
    uap_epochs: int = 5
    uap_step: Optional[float] = None
    uap_source: Optional[str] = None
    uap_source_kind: Optional[str] = None
    meta_dataset: Optional[str] = None
    meta_dataset_kind: Optional[str] = None
    amp: bool = False
    transfer_to: List[str] = field(default_factory=list)  # checkpoints the adversarial images are also fed to

    @classmethod
    def from_namespace(cls, namespace):
        """The options of an argparse namespace (its other entries are ignored)."""
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)})


OPTION_NAMES = tuple(f.name for f in fields(Options))


def eps_values(eps, norm="linf"):
    """The budgets of an ``eps`` option: a number, a list (a sweep) or None (the norm's default)."""
    if eps is None:
        return [DEFAULT_EPS[norm]]
    given = list(eps) if isinstance(eps, (list, tuple)) else [eps]
    if not given:
        raise ReidError("--eps: expected at least one budget")
    values = []
    for value in given:
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ReidError(f"--eps {value!r}: expected a number") from None
        check_number("--eps", values[-1])
    if len(set(values)) < len(values):
        raise ReidError(f"--eps {' '.join(f'{v:g}' for v in values)}: give each budget once")
    return values


def eps_text(eps, norm):
    """A budget as printed: 2/255 (L-inf) or 0.5 (L2)."""
    return f"{eps:g}/255" if norm == "linf" else f"{eps:g} (L2)"


def eps_label(name, eps):
    """The name of a run's files in a sweep: FNA_eps2, FNA_eps0p5 (a MATLAB-safe variable name too)."""
    return f"{name}_eps{eps:g}".replace(".", "p").replace("-", "m").replace("+", "")


def check_options(opts):
    """Validate every option before any heavy work; names the CLI flag in the one-line error.
    Returns the options with the attack names canonical, ``eps`` a number (one budget) or a
    list (a sweep) and ``step`` a number or "auto". An L2 radius is checked against the image
    diameter by `run_evaluation`, which knows the input size."""
    opts.norm = check_norm(opts.norm)
    opts.step = parse_step("--step", opts.step)  # finite; its range is checked with the attacks
    budgets = eps_values(opts.eps, opts.norm)
    names = [n for a in opts.attack for n in str(a).split(",") if n.strip() and n.strip().lower() != "clean"]
    opts.attack = check_attack_args(names, opts.single, budgets, opts.step, opts.max_iter, opts.norm) if names else []
    opts.eps = budgets[0] if len(budgets) == 1 else budgets  # results.json keeps its one-budget shape
    opts.step = DEFAULT_STEP[opts.norm] if opts.step is None else opts.step
    for flag, value, low in (("-n", opts.nb_repeat, 1), ("-b", opts.batch_size, 1), ("--workers", opts.workers, 0),
                             ("--visualize", opts.visualize, 0)):
        check_number(flag, value, low)
    check_number("--seed", opts.seed, 0, MAX_SEED)
    check_uap_flags(opts)
    level = 1.0 if opts.norm == "linf" else 1.0 / 255  # one 8-bit step, in the budget's units
    small = [e for e in budgets if e < level - 1e-9]
    if opts.save_images and opts.attack and small:
        raise ReidError(f"--save-images: eps {eps_text(small[0], opts.norm)} is below one 8-bit level "
                        f"({eps_text(level, opts.norm)}), so a PNG would hold the clean image; drop "
                        "--save-images or use a larger --eps")
    opts.transfer_to = [str(p) for p in (opts.transfer_to or [])]
    check_transfer_paths(opts.transfer_to)
    return opts


def versions():
    return {"reid": reid.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@distributed.main_only
def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


@distributed.main_only
def write_features(out, arrays):
    """features.npz for Python and features.mat (scipy.io) for MATLAB users."""
    with atomic_path(os.path.join(out, "features.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    with atomic_path(os.path.join(out, "features.mat")) as tmp:
        scipy.io.savemat(tmp, arrays, do_compression=True)


class ImageSaver:
    """Adversarial images as PNG under images/<attack>/, a dataset in the input's layout.

    The pixels are the clean image at the model's input size, quantised to 8 bits,
    plus the perturbation in whole /255 steps: L-inf, rounded and clipped to the budget;
    L2, each value rounded towards zero, which can only shorten the perturbation. The
    saved file keeps |adv - clean| <= eps (L-inf) or ||adv - clean||_2 <= eps (L2) in the
    8-bit values a later reader sees.
    The splits that were not attacked are linked from the dataset, so the folder
    loads with `--dataset market` as it is. Under torchrun each process saves the images
    it attacked, and rank 0 links the other splits.
    """

    def __init__(self, out, attack, split, data, eps, norm="linf"):
        self.root = os.path.join(out, "images", attack)
        self.folder = os.path.join(self.root, DATASET_FOLDERS[split.name])
        self.samples, self.budget, self.norm = split.samples, int(np.floor(eps + 1e-6)), norm
        os.makedirs(self.folder, exist_ok=True)
        for other, folder in DATASET_FOLDERS.items():
            if other != split.name and data.name in ("market", "duke") and distributed.is_main():
                self._link_originals(data.root, folder)

    def _link_originals(self, dataset_root, folder):
        dst = os.path.join(self.root, folder)
        os.makedirs(dst, exist_ok=True)
        for fname in os.listdir(os.path.join(dataset_root, folder)):
            if not os.path.lexists(os.path.join(dst, fname)):
                link_or_copy(os.path.join(dataset_root, folder, fname), os.path.join(dst, fname))

    def __call__(self, clean, adv, indices, attacked):
        base = (clean * 255).round().short()
        if self.norm == "linf":
            delta = ((adv - clean) * 255).round().clamp(-self.budget, self.budget).short()
        else:
            delta = ((adv.double() - clean.double()) * 255).trunc().short()
        pixels = (base + delta).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for img, i in zip(pixels, indices.tolist()):
            stem = os.path.splitext(os.path.basename(self.samples[i].path))[0]
            Image.fromarray(img).save(os.path.join(self.folder, stem + ".png"))


class Pictures:
    """`--visualize K`: what a researcher looks at after an attack.

    A perturbation grid (clean / adversarial / amplified perturbation) of the first
    attacked images, and for K queries their top-10 gallery before and after the
    attack. For query attacks the attacked query is shown; for gallery attacks the
    ranking is the attacked one but the thumbnails are the clean gallery images.
    Under torchrun every process keeps what it attacked, `gather` merges it and rank 0
    draws: the same pictures as one process.
    """

    def __init__(self, out, attack, query, gallery, picked, transform, query_attacked, grid_size=8):
        self.out, self.attack, self.query, self.gallery = out, attack, query, gallery
        self.picked, self.transform, self.grid_size = set(picked), transform, grid_size
        self.query_attacked = query_attacked
        self.grid, self.adv_queries = {}, {}  # index -> (clean, adv); index -> adv

    def __call__(self, clean, adv, indices, attacked):
        """`attack_split`'s per-batch hook: keep what the pictures need."""
        for j, i in enumerate(indices.tolist()):
            if len(self.grid) < self.grid_size:  # the first images attacked, in split order
                self.grid[i] = (clean[j].cpu(), adv[j].cpu())
            if self.query_attacked and i in self.picked:
                self.adv_queries[i] = adv[j].cpu()

    def gather(self):
        """Every process's kept images (under torchrun; nothing to do otherwise)."""
        parts = distributed.all_gather_object((self.grid, self.adv_queries))
        if len(parts) > 1:
            grid = {i: pair for g, _ in parts for i, pair in g.items()}
            self.grid = {i: grid[i] for i in sorted(grid)[: self.grid_size]}
            self.adv_queries = {i: a for _, q in parts for i, a in q.items()}

    def _load(self, samples):
        return torch.stack([self.transform(read_image(s.path)) for s in samples])

    @distributed.main_only
    def write(self, clean_dist, adv_dist):
        pairs = [self.grid[i] for i in sorted(self.grid)]
        perturbation_figure(torch.stack([c for c, _ in pairs]), torch.stack([a for _, a in pairs]),
                            os.path.join(self.out, f"perturbation_{self.attack}.png"))
        os.makedirs(os.path.join(self.out, "rankings"), exist_ok=True)
        for q in sorted(self.picked):
            rows = []
            for label, dist in (("clean", clean_dist), (self.attack, adv_dist)):
                top = torch.argsort(dist[q])[:10].tolist()
                rows.append((label, self._load([self.gallery.samples[i] for i in top]),
                             [self.gallery.pids[i] == self.query.pids[q] for i in top]))
            clean_query = self._load([self.query.samples[q]])[0]
            adv_query = self.adv_queries.get(q, clean_query)
            name = os.path.splitext(os.path.basename(self.query.samples[q].path))[0]
            ranking_figure([clean_query, adv_query], rows,
                           os.path.join(self.out, "rankings", f"{self.attack}_{name}.png"))


def chain(*hooks):
    """One per-batch hook calling each of `hooks` that is not None."""
    hooks = [h for h in hooks if h is not None]
    return (lambda *a: [h(*a) for h in hooks]) if hooks else None


def check_uap_flags(opts):
    """Universal-perturbation options make sense only with -a UAP; their values are checked now."""
    given = [flag for flag, value in (("--uap", opts.uap), ("--uap-source", opts.uap_source),
                                      ("--meta-dataset", opts.meta_dataset)) if value]
    if "UAP" not in opts.attack:
        if given:
            raise ReidError(f"{given[0]}: only used with -a UAP")
        return
    if opts.uap and len(given) > 1:
        raise ReidError(f"--uap and {given[1]}: a saved perturbation is evaluated as it is, not learned again")
    for eps in eps_values(opts.eps, opts.norm):
        uap_config(opts, eps)


def uap_config(opts, eps):
    """The UapConfig of the options at budget `eps` (checked before any heavy work)."""
    return UapConfig(loss=opts.uap_loss, eps=eps, epochs=opts.uap_epochs, step=opts.uap_step, seed=opts.seed)


def uap_picture(delta, eps, path):
    """The delta amplified to the full range (grey = 0, black / white = -eps / +eps), 4x."""
    img = ((delta / (eps / 255.0) + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pic = Image.fromarray(img)
    with atomic_path(path) as tmp:
        pic.resize((pic.width * 4, pic.height * 4), Image.NEAREST).save(tmp, format="PNG")


def obtain_uap(opts, eps, model, data, input_size, device, out, model_sha256, stem="uap"):
    """The universal perturbation of this run at budget `eps`: `--uap FILE` loaded, or learned
    and saved as `stem`.pt / `stem`.png in `out`. Returns (delta, the results.json description).
    Under torchrun every process learns it (the same computation: learning is not sharded)
    and rank 0's delta, which it alone saves, is the one every process evaluates."""
    if opts.uap:
        delta, record = load_uap(opts.uap, input_size)
        info = {"file": os.path.abspath(opts.uap), "learned": False, "resized_from": record.get("resized_from"),
                "file_eps": record["eps"], **{k: record.get(k) for k in ("source_checkpoint_sha256", "dataset",
                                                                        "meta_dataset", "config")}}
        if record["eps"] > eps + 1e-6:
            raise ReidError(f"--uap {opts.uap}: its budget {record['eps']:g}/255 exceeds --eps {eps:g}")
        return delta, info
    config = uap_config(opts, eps)
    source = load_dataset(opts.uap_source, opts.uap_source_kind or opts.dataset) if opts.uap_source else data
    meta = load_dataset(opts.meta_dataset, opts.meta_dataset_kind or opts.dataset) if opts.meta_dataset else None
    print(f"learning a universal perturbation on {source.root} ({len(source.train)} training images, "
          f"loss {config.loss}, eps {config.eps:g}/255, {config.epochs} epochs"
          f"{', meta dataset ' + meta.root if meta else ''})")
    delta, history, seconds = learn_universal(model, source, config, input_size, meta=meta,
                                              batch_size=opts.batch_size, workers=opts.workers, device=device)
    delta = distributed.broadcast_tensor(delta)
    info = {"file": os.path.abspath(os.path.join(out, stem + ".pt")), "learned": True, "resized_from": None,
            "source_checkpoint_sha256": model_sha256, "dataset": source.root,
            "meta_dataset": meta.root if meta else None, "config": asdict(config), "history": history,
            "learn_seconds": seconds}
    if distributed.is_main():
        save_uap(info["file"], delta, config, source_checkpoint_sha256=model_sha256, dataset=source.root,
                 meta_dataset=info["meta_dataset"])
        uap_picture(delta, config.eps, os.path.join(out, stem + ".png"))
    return delta, info


def run_attack(opts, name, eps, model, loader, query, gallery, data, out, device, picked, transform, arrays,
               delta=None, label=None, targets=()):
    """`-n` runs of one attack at budget `eps`; returns its results.json entry and, per run,
    the per-query values of `evaluate_rank` (the worst case's candidates). `delta`: the UAP's;
    `label`: the name of its files and of its transfer entries (default `name`). Each run's
    adversarial images also go through the transfer `targets` (their runs are appended)."""
    label = label or name
    step = resolve_step(opts.step, eps, opts.max_iter, opts.norm)
    target, other = (gallery, query) if opts.gallery else (query, gallery)
    metric = "cosine" if opts.cosine else "euclidean"
    runs, stats, per_query = [], [], []
    # A learned delta is the same in every run: one run; noise is redrawn per run.
    for run in range(1 if name == "UAP" else opts.nb_repeat):
        first = run == 0
        saver = ImageSaver(out, label, target, data, eps, opts.norm) if first and opts.save_images else None
        pictures = (Pictures(out, label, query, gallery, picked, transform, query_attacked=not opts.gallery)
                    if first and picked else None)
        transfer = TransferFeatures(targets, target.name, opts.cosine, loader) if targets else None
        generator = torch.Generator().manual_seed(opts.seed * 1000003 + run)
        attack = name
        if name in UNIVERSAL_ATTACKS:
            attack = universal_plan(name, target.feats, target.pids, delta if name == "UAP" else None, eps,
                                    opts.seed * 1000003 + run)
        adv_feats, st = attack_split(model, loader, target, attack, guides=other if opts.cross_attack else None,
                                     single=opts.single, cosine=opts.cosine, eps=eps, step=step,
                                     max_iter=opts.max_iter, generator=generator, device=device,
                                     weighting=opts.guide_weights, norm=opts.norm,
                                     on_batch=chain(saver, pictures, transfer))
        adv = {"gallery_feats" if opts.gallery else "query_feats": adv_feats}
        metrics, values = split_metrics(query, gallery, metric, per_query=True, **adv)
        runs.append(metrics)
        per_query.append(values)
        stats.append(st)
        if transfer is not None:
            transfer.record(name, eps, metric)
        if first:
            arrays[f"{target.name}_features_adv_{label}"] = adv_feats.cpu().numpy()
            arrays.update(transfer.arrays(label) if transfer is not None else {})
        if pictures is not None:
            pictures.gather()
            qf = adv.get("query_feats", query.feats)
            gf = adv.get("gallery_feats", gallery.feats)
            pictures.write(pairwise_distance(query.feats, gallery.feats, metric).cpu(),
                           pairwise_distance(qf, gf, metric).cpu())
    entry = {**summarize_runs(runs), "runs": runs,
             "max_perturbation": max(s["max_perturbation"] for s in stats),
             "attack_seconds": float(np.mean([s["attack_seconds"] for s in stats])),
             "images_attacked": stats[0]["images_attacked"], "fallback_images": stats[0]["fallback_images"],
             "iterations": stats[0]["iterations"], "target": target.name, "eps": eps, "step": step}
    return entry, per_query


def default_out(stem, dataset):
    return os.path.join("attacks", f"{stem}-{dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def run_evaluation(model, dataset_folder, opts, input_size, device, *, model_sha256=None, config=None):
    """The evaluation of `model` (on `device`, in eval mode) on a dataset, with checked
    `opts` (an `Options`, `opts.out` set). `config`: extra entries of results.json's
    config (e.g. the checkpoint's). Runs every attack at every budget of `opts.eps`; with
    more than one candidate (attacks x runs) adds the worst case per query at each budget
    (`reid.report`), and with a sweep or a worst case writes robustness.csv / .png. Writes
    and returns the results.json dict.

    Under torchrun (``reid.distributed``) every process runs it: features and attacks are
    shared out and gathered, metrics computed by rank 0, which alone writes (per-batch
    adversarial images excepted: each process saves those it made). ``opts.amp``: the model
    in bfloat16 autocast (``reid.amp``, CUDA only)."""
    out = opts.out
    budgets = eps_values(opts.eps, opts.norm)
    sweep = len(budgets) > 1
    for eps in budgets if opts.attack else ():  # an L2 radius against this input size's diameter
        check_budget(eps, opts.step, opts.max_iter, norm=opts.norm, input_size=input_size)
    model = amp.wrap(model, opts.amp, device)
    seed_everything(opts.seed)
    data = load_dataset(dataset_folder, opts.dataset)
    height, width = input_size
    metric = "cosine" if opts.cosine else "euclidean"
    targets = load_targets(opts.transfer_to, (height, width), device)  # a bad checkpoint stops the run now

    deltas = {}
    if "UAP" in opts.attack:  # loaded (and checked) or learned before the evaluation
        os.makedirs(out, exist_ok=True)
        for eps in budgets:
            deltas[eps] = obtain_uap(opts, eps, model, data, (height, width), device, out, model_sha256,
                                     stem=eps_label("uap", eps) if sweep else "uap")

    tf = build_transforms(height, width, train=False)
    loaders = {name: eval_loader(getattr(data, name), tf, opts.batch_size, opts.workers)
               for name in ("query", "gallery")}
    splits = {}
    for name, loader in loaders.items():
        feats, pids, camids = extract_features(model, loader, device, f"{name} features", opts.cosine)
        splits[name] = Split(name, feats, pids, camids, getattr(data, name))
    query, gallery = splits["query"], splits["gallery"]
    clean = split_metrics(query, gallery, metric)
    extract_target_features(targets, data, loaders, opts, device, metric)

    os.makedirs(out, exist_ok=True)
    describe = getattr(model, "config", None)
    config = {**asdict(opts), "dataset_folder": dataset_folder, **(config or {}),
              "model": describe() if callable(describe) else type(model).__name__,
              "input_size": [height, width], "dataset_root": data.root, "metric": metric, "device": str(device),
              "processes": distributed.world_size(), "threads": torch.get_num_threads(),
              "versions": versions()}
    if targets:
        config["transfer_targets"] = {t.label: t.info for t in targets}
    results = {"config": config, "clean": clean, "attacks": {}}
    if targets:
        results["transfer"] = {t.label: t.results(sweep) for t in targets}
    arrays = {"query_features": query.feats.cpu().numpy(), "query_pids": query.pids, "query_camids": query.camids,
              "gallery_features": gallery.feats.cpu().numpy(), "gallery_pids": gallery.pids,
              "gallery_camids": gallery.camids, **clean_arrays(targets)}

    picked = []
    if opts.visualize:
        rng = np.random.default_rng(opts.seed)
        picked = rng.choice(len(query.pids), min(opts.visualize, len(query.pids)), replace=False).tolist()
    loader = loaders["gallery" if opts.gallery else "query"]
    target = "gallery" if opts.gallery else "query"
    worst = []
    for eps in budgets:
        candidates = []
        for name in opts.attack:
            delta, uap_info = deltas.get(eps, (None, None))
            label = eps_label(name, eps) if sweep else name
            entry, per_query = run_attack(opts, name, eps, model, loader, query, gallery, data, out, device, picked,
                                          tf, arrays, delta, label=label, targets=targets)
            if name == "UAP":
                entry["uap"] = uap_info
            if sweep:
                results["attacks"].setdefault(name, {"by_eps": []})["by_eps"].append(entry)
            else:
                results["attacks"][name] = entry
            if targets:
                results["transfer"] = {t.label: t.results(sweep) for t in targets}
            candidates += [(name, run, values) for run, values in enumerate(per_query)]
            write_json(os.path.join(out, "results.json"), results)  # after each attack: nothing lost
            moved = "".join(f", on {os.path.basename(t.label)} "
                            f"{100 * np.mean([r['mAP'] for r in t.runs[name, eps]]):.2f}" for t in targets)
            print(f"{name}{f' at eps {eps_text(eps, opts.norm)}' if sweep else ''}: mAP "
                  f"{100 * entry['mean']['mAP']:.2f}{moved} ({entry['images_attacked']} images attacked, "
                  f"{entry['attack_seconds']:.1f} s)")
        if len(candidates) > 1:
            worst.append(worst_entry(candidates, eps, target))
            results["worst"] = {"by_eps": worst} if sweep else worst[0]
            for t in targets:  # the same rule on each target, over the same candidates
                t.worst.append(worst_entry(t.candidates(opts.attack, eps), eps, target))
                results["transfer"][t.label] = t.results(sweep)
    write_json(os.path.join(out, "results.json"), results)
    if opts.save_features:
        write_features(out, arrays)
    print(data.summary())
    print_tables(results, opts, budgets if opts.attack else budgets[:1], target, targets)
    print(f"results -> {os.path.join(out, 'results.json')}")
    if sweep or worst:
        write_robustness(results, out)
    return results


def print_tables(results, opts, budgets, target, targets):
    """The metrics at each budget, and white-box beside each transfer target's."""
    metric = results["config"]["metric"]
    for eps in budgets:
        rows = budget_rows(results, eps)
        print(f"\n{target} attacks, eps {eps_text(eps, opts.norm)}, {opts.max_iter} iterations, "
              f"{opts.nb_repeat} run(s), {metric} distance")
        print(metrics_table(rows))
        if targets:
            columns = [("white-box", dict(rows))] + [
                (os.path.basename(t.label), dict(budget_rows(results["transfer"][t.label], eps))) for t in targets]
            print("\nwhite-box (this model) and transfer (the same adversarial images on each --transfer-to model), "
                  "mAP / rank-1 in %")
            print(side_by_side([n for n, _ in rows], columns))


@distributed.main_only
def write_robustness(results, out):
    """robustness.csv / robustness.png (`reid.report`), written once."""
    print(f"report -> {', '.join(write_report(results, out))}")



def check_feature_model(model, input_size, device, what):
    """One probe pass: `model` must map a (B, 3, H, W) batch in [0, 1] to features (B, D).
    `what` names the model in the one-line error."""
    height, width = input_size
    probe = torch.full((2, 3, height, width), 0.5, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as err:  # the user's model: any error is about it
        raise ReidError(f"{what}: the model fails on a (2, 3, {height}, {width}) batch "
                        f"({_first_message_line(err)})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        found = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ReidError(f"{what}: the model maps a (2, 3, {height}, {width}) batch to {found}, "
                        "expected features of shape (B, D)")


def _state_dict_of(obj):
    """The state dict inside a weights file: itself, or under 'net' (our checkpoints) or
    'state_dict' (torchreid's, fast-reid's 'model'); a 'module.' prefix (DataParallel) dropped."""
    for key in ("net", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def model_from_factory(spec, weights=None):
    """`--model-factory MODULE:FUNCTION [--weights FILE]`: the torch.nn.Module that
    FUNCTION() returns, MODULE imported from the current directory or PYTHONPATH, with the
    state dict of FILE (read with weights_only=True) loaded strictly. One-line errors."""
    flag = f"--model-factory {spec}"
    module_name, _, function = str(spec).partition(":")
    if not module_name or not function:
        raise ReidError(f"{flag}: expected MODULE:FUNCTION (e.g. my_models:build)")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # as `python -m` would: the current directory first, for the import and the call
        sys.path.insert(0, cwd)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            where = " from the current directory or PYTHONPATH" if err.name == module_name.split(".")[0] else ""
            raise ReidError(f"{flag}: cannot import {module_name}{where} ({err})") from None
        except Exception as err:  # the user's module failed while importing
            raise ReidError(f"{flag}: importing {module_name} failed ({_first_message_line(err)})") from None
        factory = getattr(module, function, None)
        if not callable(factory):
            raise ReidError(f"{flag}: {module_name} ({getattr(module, '__file__', '?')}) has no function {function}")
        try:
            model = factory()
        except Exception as err:  # the user's function
            raise ReidError(f"{flag}: {function}() failed ({_first_message_line(err)})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    if not isinstance(model, torch.nn.Module):
        raise ReidError(f"{flag}: {function}() returned a {type(model).__name__}, expected a torch.nn.Module")
    if weights:
        state = _state_dict_of(load_torch_file(weights, "weights file"))
        if state is None:
            raise ReidError(f"--weights {weights}: expected a state dict (or a checkpoint holding one under "
                            "'net', 'state_dict' or 'model')")
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ReidError(f"--weights {weights}: does not fit the model of {spec} "
                            f"({str(err).strip().splitlines()[0]})") from None
    return model


def evaluate_robustness(model, dataset_folder, attacks=(), dataset="market", eps=None, input_size=(256, 128),
                        out=None, **options):
    """Evaluate any `torch.nn.Module` mapping images in [0, 1] (B, 3, H, W) to features (B, D)
    clean and under `attacks` (names of gen_adv.py's `-a`), on the dataset at
    `dataset_folder` (layout `dataset`), at `input_size` (H, W), at budget `eps` (a number,
    or a list for a sweep; default 5/255, or 0.5 with norm="l2"). `options`: the other
    gen_adv.py options by their long names with underscores (see `Options`: step, norm,
    max_iter, nb_repeat, seed, device, save_images, uap, transfer_to, ...). Writes results.json into `out` (default
    attacks/<model class>-<dataset>-<time>/) and returns its dict."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ReidError(f"evaluate_robustness: unknown option {unknown[0]!r}; expected one of "
                        f"{', '.join(OPTION_NAMES)}")
    if not isinstance(model, torch.nn.Module):
        raise ReidError(f"evaluate_robustness: model must be a torch.nn.Module, got {type(model).__name__}")
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    opts = check_options(Options(attack=attacks, dataset=dataset, eps=eps, out=out, **options))
    height, width = (int(v) for v in input_size)
    for flag, value in (("height", height), ("width", width)):
        check_number(f"input_size {flag}", value, 16)
    check_input_dir(dataset_folder, "dataset folder")
    opts.out = opts.out or default_out(type(model).__name__, opts.dataset)
    check_writable_dir(opts.out, "out")
    device = resolve_device(opts.device)
    model.to(device).eval()
    check_feature_model(model, (height, width), device, "evaluate_robustness")
    return run_evaluation(model, dataset_folder, opts, (height, width), device)
