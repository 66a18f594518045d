"""Build the per-identity guide pool DATASET/sorted/{train,query,gallery}/<pid>/.

GOAT samples its pushing guides per identity from sorted/train (ImageFolder
layout). Files are hard links by default (no extra disk space), falling back to
copies across file systems. Running it again brings the pool up to date with the
dataset: what is missing is added, a replaced image placed again, what is gone removed.
"""

import argparse

from reid.data import DATASET_NAMES, sort_dataset
from reid.runtime import cli_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_folder")
    p.add_argument("--dataset", default="market", choices=DATASET_NAMES)
    p.add_argument("--mode", default="link", choices=("link", "copy", "symlink"),
                   help="hard links (default; copies across file systems), copies or symbolic links")
    args = p.parse_args(argv)
    out_root, counts = sort_dataset(args.dataset_folder, args.dataset, args.mode)
    print(f"guide pool in {out_root}")
    for split, (ids, images, added, replaced, removed) in counts.items():
        print(f"  {split:<8} {ids:>6} identities {images:>8} images ({added} new, {replaced} replaced, "
              f"{removed} removed)")


def run():
    """The console command (`reid-sort` after `pip install .`), as `python sort_dataset.py`."""
    cli_main(main)


if __name__ == "__main__":
    run()
