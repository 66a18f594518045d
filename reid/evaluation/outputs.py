"""What an evaluation writes besides pictures: results.json, features.npz / .mat and the adversarial
images as a dataset (`--save-images`)."""

import glob
import json
import os
import platform
import shutil

import numpy as np
import scipy.io
import torch
import torchvision
from PIL import Image

import reid
from reid.data import OPENREID_NAMES, write_openreid_like
from reid.runtime import atomic_path, distributed, link_or_copy

DATASET_FOLDERS = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}
PARTIAL = ".partial"  # the suffix of a --save-images folder still being written


def versions():
    return {"reid": reid.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


# What an evaluation writes in its --out folder (besides the `perturbation_<NAME>.png` pictures).
OUTPUT_FILES = ("results.json", "robustness.csv", "robustness.png", "features.npz", "features.mat")
OUTPUT_PATTERNS = ("uap*.pt", "uap*.png", "generator*.pt", "perturbation_*.png")
OUTPUT_FOLDERS = ("rankings", "images")


@distributed.main_only
def clear_outputs(out, keep=()):
    """A run replaces a folder's outputs as a set: before it writes, what an earlier run wrote
    in `out` (the names above only, and their temporary files left by a kill) is removed, so
    no old robustness.csv, features.mat or uap.pt sits beside the new results.json. `keep`:
    this run's inputs (a --uap file, the dataset), never removed, nor a folder holding one.
    Returns the names removed."""
    if not os.path.isdir(out):
        return []
    kept = [os.path.realpath(k) for k in keep if k]
    found = [os.path.join(out, n) for n in OUTPUT_FILES + OUTPUT_FOLDERS]
    found += [p for pattern in OUTPUT_PATTERNS for p in glob.glob(os.path.join(out, pattern))]
    found += glob.glob(os.path.join(out, ".*.tmp"))  # atomic_path's temporary files of a killed run
    removed = []
    for path in sorted(set(found)):
        real = os.path.realpath(path)
        if not os.path.lexists(path) or any(k == real or k.startswith(real + os.sep) for k in kept):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(os.path.basename(path))
    return removed


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
    The images that were not attacked are linked from the dataset, so the folder loads
    as it is: Market / DukeMTMC-reID, the other splits' folders (`--dataset market`);
    open-reid, every other image beside the PNGs in images/, meta.json, and a splits.json
    that lists query and gallery by file name (`--dataset openreid`).
    The folder is written as images/<attack>.partial/ and takes its name in `finish`, once
    every image is saved: a killed run leaves a `.partial` folder, never one that looks
    complete. Under torchrun each process saves the images it attacked, and rank 0 links
    the others and renames the folder (after the attack's gather: every process is done).
    """

    def __init__(self, out, attack, split, data, eps, norm="linf"):
        self.final = os.path.join(out, "images", attack)
        self.root = self.final + PARTIAL
        self.samples, self.budget, self.norm = split.samples, int(np.floor(eps + 1e-6)), norm
        if data.name in OPENREID_NAMES:
            self.folder = os.path.join(self.root, "images")
            if distributed.is_main():
                write_openreid_like(data, self.root, split.name, [self._name(s) for s in self.samples])
        else:
            self.folder = os.path.join(self.root, DATASET_FOLDERS[split.name])
        os.makedirs(self.folder, exist_ok=True)
        for other, folder in DATASET_FOLDERS.items():
            if other != split.name and data.name in ("market", "duke") and distributed.is_main():
                self._link_originals(data.root, folder)

    @staticmethod
    def _name(sample):
        return os.path.splitext(os.path.basename(sample.path))[0] + ".png"

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
            Image.fromarray(img).save(os.path.join(self.folder, self._name(self.samples[i])))

    @distributed.main_only
    def finish(self):
        """Every image is saved: images/<attack>.partial/ becomes images/<attack>/."""
        if os.path.lexists(self.final):
            shutil.rmtree(self.final)
        os.replace(self.root, self.final)
