#!/usr/bin/env python
"""Attacks that cross models (issue 23), on synthetic data at 64x32: the transfer techniques,
an ensemble of surrogates, the UAP, and the query-based black-box attacks.

Uses the models of `transfer_synthetic.py` (the same `--work` folder: its dataset and its three
classification models, trained as it trains them if missing). Then, at each budget:

  transfer   for every model as the surrogate, FNA plain, + DI (--input-diversity 0.5), + TI
             (--translation-invariance 7), + DI + TI, the Mis-Ranking generator (-a MisRank, trained
             against the surrogate) and the UAP (-a UAP), each evaluated on the
             other two (--transfer-to); and for every model held out, the ensemble of the other two
             (--surrogates) under FNA + DI + TI, evaluated on it. Rows: technique; columns: target
             (the mean over its surrogates), clean and white-box alongside.
  black-box  on the first model: SQUARE_FNA, BANDITS_FNA and RGF_FNA at each --queries budget,
             beside white-box FNA on the same model.

Every transfer table comes before the black-box runs (the long ones); every gen_adv.py run is
skipped when its results exist (a killed run resumes). Writes one JSON file after each table and
prints Markdown tables (mAP %).

    python benchmarks/transfer_techniques_synthetic.py --work attacks/transfer-evidence --workers 1
"""

import argparse
import json
import os
import statistics
import sys
import time

from reliable_eval_synthetic import save
from transfer_synthetic import ARCHS, train_models
from universal_synthetic import ROOT, sh

TECHNIQUES = {"FNA": [], "FNA + DI": ["--input-diversity", 0.5], "FNA + TI": ["--translation-invariance", 7],
              "FNA + DI + TI": ["--input-diversity", 0.5, "--translation-invariance", 7]}
ENSEMBLE = "ensemble of the other two (FNA + DI + TI)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "transfer-evidence"))
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--epochs", type=int, default=6, help="of the models, if transfer_synthetic.py has not trained them")
    p.add_argument("--eps", type=float, nargs="+", default=[5.0, 8.0])
    p.add_argument("--queries", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--runs", type=int, default=2, help="runs of the random attacks (-n)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "transfer_techniques_synthetic.json"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    log = os.path.join(work, "log.txt")
    common = ["--device", "cpu", "--workers", args.workers]
    start = time.perf_counter()
    os.makedirs(work, exist_ok=True)
    data, ckpts, names = train_models(work, args.archs, args.epochs, common, log)

    def ckpt(name):
        return os.path.join(ckpts, f"{name}-last.th")

    def run(tag, surrogate, flags):
        out = os.path.join(work, "techniques", tag)
        if not os.path.isfile(os.path.join(out, "done")):
            sh(["gen_adv.py", ckpts, data, f"{surrogate}-last.th", *flags, "--out", out, *common], log)
            open(os.path.join(out, "done"), "w").close()
        with open(os.path.join(out, "results.json")) as f:
            return json.load(f)

    def transferred(res, target, attack):
        by_path = {os.path.abspath(k): v for k, v in res["transfer"].items()}
        return by_path[ckpt(target)]["attacks"][attack]["mean"]

    record = {"config": vars(args), "models": names, "clean": {}, "white_box": {}, "transfer": {}, "black_box": {}}
    for eps in args.eps:
        key = f"{eps:g}"
        cells = {row: {t: [] for t in names} for row in [*TECHNIQUES, "MisRank", "UAP", ENSEMBLE]}
        seconds = {"FNA": [], "MisRank": []}
        for s in names:
            others = [ckpt(t) for t in names if t != s]
            for row, flags in TECHNIQUES.items():
                tag = f"{s}-{row.replace(' + ', '-').replace(' ', '')}-eps{key}"
                res = run(tag, s, ["-a", "FNA", "--eps", eps, "-n", args.runs, *flags, "--transfer-to", *others])
                record["clean"][s] = res["clean"]
                if row == "FNA":
                    record["white_box"].setdefault(key, {})[s] = res["attacks"]["FNA"]["mean"]
                    seconds["FNA"].append(res["attacks"]["FNA"]["attack_seconds"])
                for t in names:
                    if t != s:
                        cells[row][t].append(transferred(res, t, "FNA"))
            for added in ("MisRank", "UAP"):
                res = run(f"{s}-{added}-eps{key}", s, ["-a", added, "--eps", eps, "--transfer-to", *others])
                for t in names:
                    if t != s:
                        cells[added][t].append(transferred(res, t, added))
                if added == "MisRank":
                    seconds["MisRank"].append(res["attacks"]["MisRank"]["attack_seconds"])
                    own = record.setdefault("misrank_white_box", {}).setdefault(key, {})
                    own[s] = res["attacks"]["MisRank"]["mean"]
        for held_out in names:
            first, *rest = [n for n in names if n != held_out]
            res = run(f"ensemble-to-{held_out}-eps{key}", first,
                      ["-a", "FNA", "--eps", eps, "-n", args.runs, *TECHNIQUES["FNA + DI + TI"],
                       "--surrogates", *map(ckpt, rest), "--transfer-to", ckpt(held_out)])
            cells[ENSEMBLE][held_out].append(transferred(res, held_out, "FNA"))
        record["transfer"][key] = {row: {t: {m: statistics.mean(v[m] for v in values) for m in ("mAP", "rank1")}
                                         for t, values in by_target.items() if values}
                                   for row, by_target in cells.items()}
        record.setdefault("attack_seconds", {})[key] = {k: statistics.mean(v) for k, v in seconds.items()}
        save(record, args.out, start)
    for eps in args.eps:  # after every transfer table: the black-box runs are the long ones
        key = f"{eps:g}"
        model = names[0]
        black = {}
        for attack in ("SQUARE_FNA", "BANDITS_FNA", "RGF_FNA"):
            for q in args.queries:
                res = run(f"{model}-{attack}-q{q}-eps{key}", model, ["-a", attack, "--eps", eps, "--queries", q])
                entry = res["attacks"][attack]
                black[f"{attack} @ {q}"] = {**entry["mean"], "queries": entry["queries"]["per_image"],
                                            "seconds": entry.get("attack_seconds")}
        record["black_box"][key] = black
        save(record, args.out, start)
    print(markdown(record))


def markdown(record):
    names = record["models"]
    lines = []
    for key, rows in record["transfer"].items():
        lines += [f"Transfer at eps {key}/255, mAP % on each target (the mean over its surrogates); the ensemble row "
                  "attacks the other two models together:", "",
                  "| technique | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
                  "| clean | " + " | ".join(f"{100 * record['clean'][t]['mAP']:.2f}" for t in names) + " |",
                  "| white-box FNA | " + " | ".join(f"{100 * record['white_box'][key][t]['mAP']:.2f}"
                                                  for t in names) + " |"]
        for row, cells in rows.items():
            lines.append(f"| {row} | " + " | ".join(f"{100 * cells[t]['mAP']:.2f}" if t in cells else "-"
                                                    for t in names) + " |")
        t = record["attack_seconds"][key]
        lines += ["", f"Attack time over the queries (mean over the surrogates): FNA {t['FNA']:.1f} s, the "
                      f"Mis-Ranking generator {t['MisRank']:.1f} s ({t['FNA'] / t['MisRank']:.0f}x faster; its "
                      "training not counted)."]
        model = names[0]
        if key not in record["black_box"]:
            continue
        lines += ["", f"Black-box on {model} at eps {key}/255 (white-box FNA: "
                      f"{100 * record['white_box'][key][model]['mAP']:.2f}; clean "
                      f"{100 * record['clean'][model]['mAP']:.2f}), mAP %:", "",
                  "| attack @ queries per image | mAP | rank-1 |", "|---|---|---|"]
        for label, m in record["black_box"][key].items():
            lines.append(f"| {label} | {100 * m['mAP']:.2f} | {100 * m['rank1']:.2f} |")
        lines.append("")
    lines.append(f"{record.get('seconds', 0) / 60:.0f} min on this machine.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
