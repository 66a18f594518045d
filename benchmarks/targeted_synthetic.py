#!/usr/bin/env python
"""Evidence for the targeted ranking attacks and ERS (issue 21), on synthetic data at 64x32.

The dataset and the models are those of `reliable_eval_synthetic.py` (made here if missing, in
the same `--work` folder, so the two scripts share them): `clean` and `goat` (GOAT SMA). At
each budget, `-a ers` (CA+, CA-, QA+, QA-, TMA, SMA, LTM, GTM, GTT: PGD, 32 iterations, step
3/8 of eps, i.e. RobRank's 3/255 at 8/255) with `-n` runs (the targets of QA, CA and TMA are
drawn anew in each run). Every step is skipped when its output exists. Writes one JSON file and
prints a Markdown table: each targeted attack's metric clean -> attacked, and the ERS.

    python benchmarks/targeted_synthetic.py --work /tmp/reliable --eps 8 2 5
"""

import json
import os
import time

from reliable_eval_synthetic import model_arguments, prepare, save
from universal_synthetic import ROOT, sh, work_folder


def main():
    p = model_arguments(__doc__)
    p.add_argument("--eps", type=float, nargs="+", default=[8.0, 2.0, 5.0])
    p.add_argument("--runs", type=int, default=3, help="-n of each evaluation (one already made keeps its own)")
    p.add_argument("--models", nargs="+", default=["clean", "goat"], choices=["clean", "goat"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "targeted_synthetic.json"))
    args = p.parse_args()
    work, log, common = work_folder(args)
    start = time.perf_counter()
    data = prepare(args, work, log, common, args.models)
    record = {"config": vars(args), "ers": {}}
    for model in args.models:
        for eps in args.eps:
            out = os.path.join(work, f"eval-{model}-ers-eps{eps:g}")
            done = os.path.join(out, "results.json")
            if not (os.path.isfile(done) and json.load(open(done)).get("complete")):
                sh(["gen_adv.py", work, data, f"{model}-last.th", "-a", "ers", "--eps", eps, "--step", 3 * eps / 8,
                    "-n", args.runs, "--out", out, *common], log)
            with open(done) as f:
                r = json.load(f)
            record["ers"].setdefault(model, {})[f"{eps:g}"] = {
                "clean": r["clean"], "ers": r["ers"], "runs": r["config"]["nb_repeat"],
                "attacks": {n: {k: e[k] for k in ("mean", "std", "goal", "embedding_shift", "attack_seconds")
                                if k in e} for n, e in r["attacks"].items()}}
            save(record, args.out, start)
    print(markdown(record))


def markdown(record):
    lines = ["Targeted ranking attacks (PGD, 32 iterations, step 3/8 eps; mean of -n runs), clean -> attacked, %; "
             "normalised rank 0 = top, 100 = bottom:", "",
             "| model | eps | -n | CA+ rank | CA- rank | QA+ rank | QA- rank | QA+ top-10 | TMA cosine | SMA rank-1 | "
             "LTM rank-1 | GTM rank-1 | GTT retain@4 | ERS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, by_eps in record["ers"].items():
        for eps, c in by_eps.items():
            a = c["attacks"]

            def goal(name, key):
                g = a[name]["goal"]
                return f"{100 * g['clean'][key]:.1f} -> {100 * g['mean'][key]:.1f}"

            def rank1(name):
                return f"{100 * c['clean']['rank1']:.1f} -> {100 * a[name]['mean']['rank1']:.1f}"
            cells = [goal("CA+", "prank"), goal("CA-", "prank"), goal("QA+", "prank"), goal("QA-", "prank"),
                     goal("QA+", "top10"), goal("TMA", "cosine"), rank1("SMA"), rank1("LTM"), rank1("GTM"),
                     goal("GTT", "retain4"), f"{c['ers']['score']:.1f}"]
            lines.append(f"| {model} | {eps} | {c['runs']} | " + " | ".join(cells) + " |")
    lines.append(f"\n{record.get('seconds', 0) / 60:.0f} min on this machine.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
