#!/usr/bin/env python
"""Build the per-identity guide pool DATASET/sorted/ that GOAT samples its guides from: the
command-line layer `reid/cli/sort.py` (`reid-sort` once installed).
`python sort_dataset.py --help` lists the flags."""

from reid.cli.sort import main, run  # noqa: F401  (scripts and tests call main(argv))


if __name__ == "__main__":
    run()
