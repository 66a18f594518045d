#!/usr/bin/env python
"""The UAP's learning settings over seeds (issue 19): for each setting (batch size, epochs,
first step) and each seed, one gen_adv.py -a UAP run against the same checkpoint; prints the mAP
under each perturbation, their mean and spread, and writes one JSON file. Runs whose results
exist are skipped (a killed run resumes).

    python benchmarks/uap_seeds.py --checkpoints attacks/transfer-evidence/ckpt \\
        --dataset attacks/transfer-evidence/data --filename resnet50-last.th --seeds 0 1 2 \\
        --settings 64:5 10:10 32:10
"""

import argparse
import json
import os
import statistics
import sys
import time

from reliable_eval_synthetic import save
from universal_synthetic import ROOT, sh


def setting(text):
    """BATCH:EPOCHS[:STEP] -> (batch, epochs, step or None)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text}: expected BATCH:EPOCHS or BATCH:EPOCHS:STEP")
    return int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) == 3 else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--filename", required=True)
    p.add_argument("--settings", type=setting, nargs="+", default=[(64, 5, None), (10, 10, None), (32, 10, None)])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "uap-seeds"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "uap_seeds.json"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    start = time.perf_counter()
    record = {"config": {**vars(args), "settings": [list(s) for s in args.settings]}, "rows": []}
    for batch, epochs, step in args.settings:
        label = f"-b {batch} --uap-epochs {epochs}" + (f" --uap-step {step:g}" if step else "")
        maps, seconds = [], []
        for seed in args.seeds:
            out = os.path.join(work, f"b{batch}-e{epochs}-s{step or 'default'}-seed{seed}")
            if not os.path.isfile(os.path.join(out, "done")):
                sh(["gen_adv.py", args.checkpoints, args.dataset, args.filename, "-a", "UAP", "--eps", args.eps,
                    "-b", batch, "--uap-epochs", epochs, *(["--uap-step", step] if step else []), "--seed", seed,
                    "--device", "cpu", "--workers", args.workers, "--out", out], log)
                open(os.path.join(out, "done"), "w").close()
            with open(os.path.join(out, "results.json")) as f:
                res = json.load(f)
            record["clean"] = res["clean"]
            maps.append(res["attacks"]["UAP"]["mean"]["mAP"])
            seconds.append(res["attacks"]["UAP"]["uap"]["learn_seconds"])
        row = {"setting": label, "seeds": args.seeds, "mAP": maps, "mean": statistics.mean(maps),
               "sd": statistics.stdev(maps) if len(maps) > 1 else 0.0, "seconds": seconds}
        record["rows"].append(row)
        save(record, args.out, start)
        print(f"{label:<40} mAP % {' '.join(f'{100 * m:.2f}' for m in maps)}   mean {100 * row['mean']:.2f}"
              f"  sd {100 * row['sd']:.2f}", flush=True)
    print(f"clean {100 * record['clean']['mAP']:.2f}% mAP; {(time.perf_counter() - start) / 60:.0f} min")


if __name__ == "__main__":
    sys.exit(main())
