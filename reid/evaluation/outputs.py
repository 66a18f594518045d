"""What an evaluation writes besides pictures: results.json, features.npz / .mat and the adversarial
images as a dataset (`--save-images`)."""

import json
import os
import platform

import numpy as np
import scipy.io
import torch
import torchvision
from PIL import Image

import reid
from reid.runtime import atomic_path, distributed, link_or_copy

DATASET_FOLDERS = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}


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
