#!/usr/bin/env python
"""Build the per-identity guide pool DATASET/sorted/{train,query,gallery}/<pid>/.

GOAT samples its pushing guides per identity from sorted/train (ImageFolder
layout). Files are hard links by default (no extra disk space), falling back to
copies across file systems. Running it again only adds what is missing.
"""

import argparse
import os

from reid.data import DATASET_NAMES, load_dataset
from reid.utils import ReidError, check_input_dir, check_writable_dir, cli_main, link_or_copy

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_folder")
    p.add_argument("--dataset", default="market", choices=DATASET_NAMES)
    p.add_argument("--mode", default="link", choices=("link", "copy", "symlink"),
                   help="hard links (default; copies across file systems), copies or symbolic links")
    args = p.parse_args(argv)
    out_root, counts = sort_dataset(args.dataset_folder, args.dataset, args.mode)
    print(f"guide pool in {out_root}")
    for split, (ids, images, added) in counts.items():
        print(f"  {split:<8} {ids:>6} identities {images:>8} images ({added} new)")


if __name__ == "__main__":
    cli_main(main)
