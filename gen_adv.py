#!/usr/bin/env python
"""Evaluate a re-ID model clean and under attack (mAP / CMC / mINP):
the command-line layer `reid/cli/attack.py` (`reid-attack` once installed).
`python gen_adv.py --help` lists the flags."""

from reid.cli.attack import main, parse_args, run  # noqa: F401  (scripts and tests call main(argv))


if __name__ == "__main__":
    run()
