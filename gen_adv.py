#!/usr/bin/env python
"""Evaluate a re-ID checkpoint clean and under metric attacks (mAP / CMC / mINP).

Reference usage:
  python gen_adv.py models/checkpoints DATA model.th --dataset market --classif -a FNA --eps 5
"""

import argparse
import datetime
import json
import os
import platform
from dataclasses import asdict

import numpy as np
import scipy.io
import torch
import torchvision
from PIL import Image

import reid
from reid.attacks import (ATTACK_NAMES, UAP_LOSSES, UNIVERSAL_ATTACKS, WEIGHTINGS, UapConfig, load_uap,
                          save_uap, universal_plan)
from reid.attacks import check_attack_args
from reid.checkpoint import file_sha256, load_model
from reid.data import DATASET_NAMES, build_transforms, eval_loader, load_dataset, read_image
from reid.engine import Split, attack_split, learn_universal, metrics_table, split_metrics, summarize_runs
from reid.features import extract_features
from reid.metrics import pairwise_distance
from reid.utils import (MAX_SEED, ReidError, atomic_path, check_input_dir, check_number, check_writable_dir,
                        cli_main, link_or_copy, resolve_device, seed_everything)
from reid.viz import perturbation_figure, ranking_figure

DATASET_FOLDERS = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints_folder")
    p.add_argument("dataset_folder")
    p.add_argument("filename", help="checkpoint file name inside checkpoints_folder")
    p.add_argument("--dataset", default="market", choices=DATASET_NAMES)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--classif", dest="kind", action="store_const", const="classif",
                      help="expect a classification checkpoint (checked; read from the checkpoint if omitted)")
    kind.add_argument("--triplet", dest="kind", action="store_const", const="triplet",
                      help="expect a triplet checkpoint (checked)")
    p.add_argument("-e", "--embedding_size", type=int, help="expected triplet embedding size (checked)")
    p.add_argument("--cosine", action="store_true", help="L2-normalised features in the attack loss and ranking")
    p.add_argument("-a", "--attack", nargs="+", default=["clean"], metavar="NAME",
                   help=f"one or several of {', '.join(ATTACK_NAMES + tuple(UNIVERSAL_ATTACKS))}, clean, "
                        "or all (every per-image attack; default clean)")
    p.add_argument("--eps", type=float, default=5.0, help="L-inf budget in /255 (default 5)")
    p.add_argument("--step", type=float, default=1.0, help="step of iterative attacks in /255 (default 1)")
    p.add_argument("--max_iter", type=int, default=15, help="iterations of iterative attacks (default 15)")
    p.add_argument("--single", action="store_true", help="FGSM/IFGSM/MIFGSM: one random same-identity guide")
    p.add_argument("--guide-weights", default="reference", choices=WEIGHTINGS,
                   help="pushing-guide weights: reference (default: each 1, plus the own feature padded "
                        "to the largest identity, as the paper's code) or mean (sharing a total of 1)")
    p.add_argument("--gallery", action="store_true", help="attack the gallery instead of the queries")
    p.add_argument("--cross_attack", action="store_true", help="take the guides from the other set")
    p.add_argument("-n", "--nb_repeat", type=int, default=1, help="runs per attack (new random guides / starts)")
    p.add_argument("-b", "--batch_size", type=int, default=64)
    p.add_argument("--gpu", type=int, help="alias of --device cuda:N")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, help="input height (default: the checkpoint's, else 256)")
    p.add_argument("--width", type=int, help="input width (default: the checkpoint's, else 128)")
    p.add_argument("--workers", type=int, default=4, help="data loading processes (default 4)")
    p.add_argument("--out", help="output folder (default attacks/<checkpoint>-<dataset>-<time>/)")
    p.add_argument("--save-features", action="store_true", help="write features.npz and features.mat")
    p.add_argument("--save-images", action="store_true", help="write the adversarial images as PNG")
    p.add_argument("--visualize", type=int, default=0, metavar="K",
                   help="ranking pictures for K queries and a perturbation grid per attack")
    uap = p.add_argument_group("universal perturbations (-a UAP / noise; see reid/attacks/universal.py)")
    uap.add_argument("--uap", metavar="FILE", help="evaluate this uap.pt instead of learning one")
    uap.add_argument("--uap-loss", default="centroid", choices=UAP_LOSSES,
                     help="objective when learning (default centroid, MetaAttack's)")
    uap.add_argument("--uap-epochs", type=int, default=5, help="epochs over the source training split (default 5)")
    uap.add_argument("--uap-step", type=float, help="first MI-SGD step in /255 (default eps / 10)")
    uap.add_argument("--uap-source", metavar="DIR", help="learn on this dataset's training split (default: the evaluated one)")
    uap.add_argument("--uap-source-kind", choices=DATASET_NAMES, help="its layout (default: --dataset)")
    uap.add_argument("--meta-dataset", metavar="DIR", help="meta-learn with this (virtual) dataset's training split")
    uap.add_argument("--meta-dataset-kind", choices=DATASET_NAMES, help="its layout (default: --dataset)")
    args = p.parse_args(argv)
    for flag, value in (("--eps", args.eps), ("--step", args.step)):
        check_number(flag, value)  # finite; their ranges are checked with the attacks
    names = [n for a in args.attack for n in a.split(",") if n.strip() and n.strip().lower() != "clean"]
    args.attack = check_attack_args(names, args.single, args.eps, args.step, args.max_iter) if names else []
    for flag, value, low in (("-n", args.nb_repeat, 1), ("-b", args.batch_size, 1), ("--workers", args.workers, 0),
                             ("--visualize", args.visualize, 0), ("--height", args.height, 16),
                             ("--width", args.width, 16), ("-e", args.embedding_size, 1)):
        check_number(flag, value, low)  # None (--height, --width, -e not given) passes
    check_number("--seed", args.seed, 0, MAX_SEED)
    check_input_dir(args.checkpoints_folder, "checkpoints_folder")
    check_input_dir(args.dataset_folder, "dataset folder")
    return args


def versions():
    return {"reid": reid.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


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
    plus the perturbation rounded to whole /255 steps and clipped to the budget, so
    the saved file keeps |adv - clean| <= eps in the 8-bit values a later reader sees.
    The splits that were not attacked are linked from the dataset, so the folder
    loads with `--dataset market` as it is.
    """

    def __init__(self, out, attack, split, data, eps):
        self.root = os.path.join(out, "images", attack)
        self.folder = os.path.join(self.root, DATASET_FOLDERS[split.name])
        self.samples, self.budget = split.samples, int(np.floor(eps + 1e-6))
        os.makedirs(self.folder, exist_ok=True)
        for other, folder in DATASET_FOLDERS.items():
            if other != split.name and data.name in ("market", "duke"):
                self._link_originals(data.root, folder)

    def _link_originals(self, dataset_root, folder):
        dst = os.path.join(self.root, folder)
        os.makedirs(dst, exist_ok=True)
        for fname in os.listdir(os.path.join(dataset_root, folder)):
            if not os.path.lexists(os.path.join(dst, fname)):
                link_or_copy(os.path.join(dataset_root, folder, fname), os.path.join(dst, fname))

    def __call__(self, clean, adv, indices):
        base = (clean * 255).round().short()
        delta = ((adv - clean) * 255).round().clamp(-self.budget, self.budget).short()
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
    """

    def __init__(self, out, attack, query, gallery, picked, transform, query_attacked, grid_size=8):
        self.out, self.attack, self.query, self.gallery = out, attack, query, gallery
        self.picked, self.transform, self.grid_size = set(picked), transform, grid_size
        self.query_attacked = query_attacked
        self.clean, self.adv, self.adv_queries = [], [], {}

    def __call__(self, clean, adv, indices):
        """`attack_split`'s per-batch hook: keep what the pictures need."""
        have = sum(len(c) for c in self.clean)
        if have < self.grid_size:
            self.clean.append(clean[: self.grid_size - have].cpu())
            self.adv.append(adv[: self.grid_size - have].cpu())
        for j, i in enumerate(indices.tolist() if self.query_attacked else []):
            if i in self.picked:
                self.adv_queries[i] = adv[j].cpu()

    def _load(self, samples):
        return torch.stack([self.transform(read_image(s.path)) for s in samples])

    def write(self, clean_dist, adv_dist):
        perturbation_figure(torch.cat(self.clean), torch.cat(self.adv),
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


def check_uap_flags(args):
    """Universal-perturbation flags make sense only with -a UAP; their values are checked now."""
    given = [flag for flag, value in (("--uap", args.uap), ("--uap-source", args.uap_source),
                                      ("--meta-dataset", args.meta_dataset)) if value]
    if "UAP" not in args.attack:
        if given:
            raise ReidError(f"{given[0]}: only used with -a UAP")
        return
    if args.uap and len(given) > 1:
        raise ReidError(f"--uap and {given[1]}: a saved perturbation is evaluated as it is, not learned again")
    uap_config(args)


def uap_config(args):
    """The UapConfig of the flags (checked before any heavy work)."""
    return UapConfig(loss=args.uap_loss, eps=args.eps, epochs=args.uap_epochs, step=args.uap_step, seed=args.seed)


def uap_picture(delta, eps, path):
    """The delta amplified to the full range (grey = 0, black / white = -eps / +eps), 4x."""
    img = ((delta / (eps / 255.0) + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pic = Image.fromarray(img)
    with atomic_path(path) as tmp:
        pic.resize((pic.width * 4, pic.height * 4), Image.NEAREST).save(tmp, format="PNG")


def obtain_uap(args, model, data, input_size, device, out, ckpt_sha256):
    """The universal perturbation of this run: `--uap FILE` loaded, or learned and saved as
    uap.pt / uap.png in `out`. Returns (delta, the results.json description)."""
    if args.uap:
        delta, record = load_uap(args.uap, input_size)
        info = {"file": os.path.abspath(args.uap), "learned": False, "resized_from": record.get("resized_from"),
                "file_eps": record["eps"], **{k: record.get(k) for k in ("source_checkpoint_sha256", "dataset",
                                                                        "meta_dataset", "config")}}
        if record["eps"] > args.eps + 1e-6:
            raise ReidError(f"--uap {args.uap}: its budget {record['eps']:g}/255 exceeds --eps {args.eps:g}")
        return delta, info
    config = uap_config(args)
    source = load_dataset(args.uap_source, args.uap_source_kind or args.dataset) if args.uap_source else data
    meta = load_dataset(args.meta_dataset, args.meta_dataset_kind or args.dataset) if args.meta_dataset else None
    print(f"learning a universal perturbation on {source.root} ({len(source.train)} training images, "
          f"loss {config.loss}, eps {config.eps:g}/255, {config.epochs} epochs"
          f"{', meta dataset ' + meta.root if meta else ''})")
    delta, history, seconds = learn_universal(model, source, config, input_size, meta=meta,
                                              batch_size=args.batch_size, workers=args.workers, device=device)
    info = {"file": os.path.abspath(os.path.join(out, "uap.pt")), "learned": True, "resized_from": None,
            "source_checkpoint_sha256": ckpt_sha256, "dataset": source.root,
            "meta_dataset": meta.root if meta else None, "config": asdict(config), "history": history,
            "learn_seconds": seconds}
    save_uap(info["file"], delta, config, source_checkpoint_sha256=ckpt_sha256, dataset=source.root,
             meta_dataset=info["meta_dataset"])
    uap_picture(delta, config.eps, os.path.join(out, "uap.png"))
    return delta, info


def run_attack(args, name, model, loader, query, gallery, data, out, device, picked, transform, arrays,
               delta=None):
    """`-n` runs of one attack; returns its results.json entry. `delta`: the UAP's."""
    target, other = (gallery, query) if args.gallery else (query, gallery)
    metric = "cosine" if args.cosine else "euclidean"
    runs, stats = [], []
    # A learned delta is the same in every run: one run; noise is redrawn per run.
    for run in range(1 if name == "UAP" else args.nb_repeat):
        first = run == 0
        saver = ImageSaver(out, name, target, data, args.eps) if first and args.save_images else None
        pictures = (Pictures(out, name, query, gallery, picked, transform, query_attacked=not args.gallery)
                    if first and picked else None)
        generator = torch.Generator().manual_seed(args.seed * 1000003 + run)
        attack = name
        if name in UNIVERSAL_ATTACKS:
            attack = universal_plan(name, target.feats, target.pids, delta if name == "UAP" else None, args.eps,
                                    args.seed * 1000003 + run)
        adv_feats, st = attack_split(model, loader, target, attack, guides=other if args.cross_attack else None,
                                     single=args.single, cosine=args.cosine, eps=args.eps, step=args.step,
                                     max_iter=args.max_iter, generator=generator, device=device,
                                     weighting=args.guide_weights,
                                     on_batch=chain(saver, pictures))
        adv = {"gallery_feats" if args.gallery else "query_feats": adv_feats}
        runs.append(split_metrics(query, gallery, metric, **adv))
        stats.append(st)
        if first:
            arrays[f"{target.name}_features_adv_{name}"] = adv_feats.cpu().numpy()
        if pictures is not None:
            qf = adv.get("query_feats", query.feats)
            gf = adv.get("gallery_feats", gallery.feats)
            pictures.write(pairwise_distance(query.feats, gallery.feats, metric).cpu(),
                           pairwise_distance(qf, gf, metric).cpu())
    return {**summarize_runs(runs), "runs": runs,
            "max_perturbation": max(s["max_perturbation"] for s in stats),
            "attack_seconds": float(np.mean([s["attack_seconds"] for s in stats])),
            "images_attacked": stats[0]["images_attacked"], "fallback_images": stats[0]["fallback_images"],
            "iterations": stats[0]["iterations"], "target": target.name, "eps": args.eps, "step": args.step}


def default_out(args):
    stem = os.path.splitext(os.path.basename(args.filename))[0]
    return os.path.join("attacks", f"{stem}-{args.dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def main(argv=None):
    args = parse_args(argv)
    check_uap_flags(args)
    out = args.out or default_out(args)
    check_writable_dir(out, "--out")  # now, not after extracting every feature
    device = resolve_device(args.device, args.gpu)
    seed_everything(args.seed)
    ckpt_path = os.path.join(args.checkpoints_folder, args.filename)
    model, ckpt = load_model(ckpt_path, args.kind, args.embedding_size)
    ckpt_sha256 = file_sha256(ckpt_path)
    model.to(device).eval()
    data = load_dataset(args.dataset_folder, args.dataset)
    height, width = ckpt.get("input_size") or (256, 128)
    height, width = args.height or height, args.width or width
    metric = "cosine" if args.cosine else "euclidean"

    delta = uap_info = None
    if "UAP" in args.attack:  # loaded (and checked) or learned before the evaluation
        os.makedirs(out, exist_ok=True)
        delta, uap_info = obtain_uap(args, model, data, (height, width), device, out, ckpt_sha256)

    tf = build_transforms(height, width, train=False)
    loaders = {name: eval_loader(getattr(data, name), tf, args.batch_size, args.workers)
               for name in ("query", "gallery")}
    splits = {}
    for name, loader in loaders.items():
        feats, pids, camids = extract_features(model, loader, device, f"{name} features", args.cosine)
        splits[name] = Split(name, feats, pids, camids, getattr(data, name))
    query, gallery = splits["query"], splits["gallery"]
    clean = split_metrics(query, gallery, metric)

    os.makedirs(out, exist_ok=True)
    config = {**vars(args), "checkpoint": ckpt_path, "checkpoint_sha256": ckpt_sha256,
              "checkpoint_epoch": ckpt.get("epoch"), "model": model.config(), "input_size": [height, width],
              "dataset_root": data.root, "metric": metric, "device": str(device), "versions": versions()}
    results = {"config": config, "clean": clean, "attacks": {}}
    arrays = {"query_features": query.feats.cpu().numpy(), "query_pids": query.pids, "query_camids": query.camids,
              "gallery_features": gallery.feats.cpu().numpy(), "gallery_pids": gallery.pids,
              "gallery_camids": gallery.camids}

    picked = []
    if args.visualize:
        rng = np.random.default_rng(args.seed)
        picked = rng.choice(len(query.pids), min(args.visualize, len(query.pids)), replace=False).tolist()
    loader = loaders["gallery" if args.gallery else "query"]
    for name in args.attack:
        entry = run_attack(args, name, model, loader, query, gallery, data, out, device, picked, tf, arrays, delta)
        if name == "UAP":
            entry["uap"] = uap_info
        results["attacks"][name] = entry
        write_json(os.path.join(out, "results.json"), results)  # after each attack: nothing lost
        print(f"{name}: mAP {100 * entry['mean']['mAP']:.2f} ({entry['images_attacked']} images attacked, "
              f"{entry['attack_seconds']:.1f} s)")
    write_json(os.path.join(out, "results.json"), results)
    if args.save_features:
        write_features(out, arrays)
    print(data.summary())
    rows = [("clean", clean)] + [(n, r["mean"]) for n, r in results["attacks"].items()]
    print(f"\n{'query' if not args.gallery else 'gallery'} attacks, eps {args.eps:g}/255, "
          f"{args.max_iter} iterations, {args.nb_repeat} run(s), {metric} distance")
    print(metrics_table(rows))
    print(f"results -> {os.path.join(out, 'results.json')}")


if __name__ == "__main__":
    cli_main(main)
