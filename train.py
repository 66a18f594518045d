#!/usr/bin/env python
"""Train a re-ID model (classification or triplet), clean or defended:
the command-line layer `reid/cli/train.py` (`reid-train` once installed).
`python train.py --help` lists the flags."""

from reid.cli.train import main, parse_args, run  # noqa: F401  (scripts and tests call main(argv))


if __name__ == "__main__":
    run()
