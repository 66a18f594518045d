"""The per-identity guide pool DATASET/sorted/{train,query,gallery}/<pid>/ (ImageFolder layout) that
GOAT samples its pushing guides from; `sort_dataset.py` builds it. Files are hard links by default
(no extra disk space), falling back to copies across file systems; a second run adds what is missing."""

import os

from reid.data.datasets import load_dataset
from reid.runtime import ReidError, check_input_dir, check_writable_dir, link_or_copy

SPLITS = ("train", "query", "gallery")


def sort_dataset(dataset_folder, dataset="market", mode="link"):
    """Create the sorted/ tree; returns {split: (identities, images, newly placed)}."""
    check_input_dir(dataset_folder, "dataset folder")
    data = load_dataset(dataset_folder, dataset)
    out_root = os.path.join(data.root, "sorted")
    check_writable_dir(out_root, "guide pool")
    counts = {}
    for split in SPLITS:
        samples = getattr(data, split)
        if split == "train":  # folder names are original pids; labels follow their sorted order
            samples = [s._replace(pid=data.train_pids[s.pid]) for s in samples]
        added = 0
        for path, pid, _ in samples:
            folder = os.path.join(out_root, split, f"{pid:04d}" if pid >= 0 else str(pid))
            dst = os.path.join(folder, os.path.basename(path))
            if os.path.lexists(dst):
                continue
            try:
                os.makedirs(folder, exist_ok=True)
                link_or_copy(path, dst, mode)
            except OSError as err:
                raise ReidError(f"cannot write {dst}: {err.strerror}") from None
            added += 1
        counts[split] = (len({s.pid for s in samples}), len(samples), added)
    return out_root, counts
