#!/usr/bin/env python
"""Our attacks on one checkpoint, for the parity table against the paper's reference code.

Runs gen_adv.py (query attacks, 15 iterations of 1/255) at each budget for FGSM, IFGSM
(multi-guide and --single), MIFGSM, FNA, FNA_pull, FNA_rand, ODFA and SMA (3 seeds), with
both pushing-guide weightings (--guide-weights reference, the default, and mean) for the
attacks they concern, and writes every mAP to a JSON file (rows already in it are kept,
so an interrupted run resumes). The reference code's numbers,
and how they were obtained, are in benchmarks/parity_reference.md.

    python benchmarks/parity_reference.py CKPT_DIR DATA parity.th --out benchmarks/parity_reference.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FGSM is left out: its one step starts at the clean image, where the own-feature term of
# the reference weighting has no gradient, so both weightings give the same images.
WEIGHTED = ("IFGSM", "MIFGSM", "FNA", "FNA_rand")


def run(args, attack, eps, extra=(), seeds=(0,)):
    """mAP (%) of one attack per seed, through the CLI as a user runs it."""
    maps = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, os.path.join(ROOT, "gen_adv.py"), args.checkpoints, args.dataset, args.filename,
                   "-a", attack, "--eps", str(eps), "--max_iter", "15", "--step", "1", "--seed", str(seed),
                   "--device", "cpu", "--workers", "0", "--out", out, *extra]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            with open(os.path.join(out, "results.json")) as f:
                results = json.load(f)
        maps.append(round(100 * results["attacks"][attack]["mean"]["mAP"], 2))
    return maps, round(100 * results["clean"]["mAP"], 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints")
    p.add_argument("dataset")
    p.add_argument("filename")
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 5.0])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "parity_reference.json"))
    args = p.parse_args()
    rows, done = [], {}
    if os.path.isfile(args.out):  # resume: rows already measured are kept
        with open(args.out) as f:
            done = {(r["eps"], r["attack"], r["options"]): r for r in json.load(f)}
    jobs = [(eps, a, (), (0,)) for eps in args.eps
            for a in ("FGSM", "IFGSM", "MIFGSM", "FNA", "FNA_pull", "FNA_rand", "ODFA")]
    jobs += [(eps, *job) for eps in args.eps for job in (("IFGSM", ("--single",), (0,)), ("SMA", (), (0, 1, 2)))]
    jobs += [(eps, a, ("--guide-weights", "mean"), (0,)) for eps in args.eps for a in WEIGHTED]
    # the defaults at every budget first, then the "before" rows
    for eps, attack, extra, seeds in jobs:
        key = (eps, attack, " ".join(extra))
        if key in done:
            rows.append(done[key])
            continue
        maps, clean = run(args, attack, eps, extra, seeds)
        row = {"eps": eps, "attack": attack, "options": " ".join(extra), "mAP": maps, "clean": clean}
        print(json.dumps(row), flush=True)
        rows.append(row)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
