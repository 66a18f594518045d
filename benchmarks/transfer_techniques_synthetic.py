#!/usr/bin/env python
"""Attacks that cross models (issue 23), on synthetic data at 64x32: the transfer techniques,
an ensemble of surrogates, the UAP, and the query-based black-box attacks.

Uses the models of `transfer_synthetic.py` (the same `--work` folder: its dataset and its three
classification models, trained as it trains them if missing). Then, at each budget:

  transfer   on one query image of each of 100 identities (--query-ids; the gallery whole), for
             every model as the surrogate: FNA plain, + DI (--input-diversity 0.5), + TI
             (--translation-invariance 7), + DI + TI, FGSM (one step of eps: do the iterations fit
             the surrogate's own directions?), the Mis-Ranking generator (-a MisRank, trained
             against the surrogate) and the UAP (-a UAP), each evaluated on the other two
             (--transfer-to); and for every model held out, the ensemble of the other two
             (--surrogates) under FNA + DI + TI, evaluated on it. Rows: technique; columns: target
             (the mean over its surrogates), clean, uniform noise (-a noise) and white-box alongside.
  black-box  on the first model, at eps 8 (--black-box-eps), on one query image of each of 8
             identities (--black-box-ids: a query costs a forward pass of them all): SQUARE_FNA,
             BANDITS_FNA and RGF_FNA at each --queries budget, beside white-box FNA on the same
             queries.

The query subsets are folders of links beside the dataset. The first transfer table comes
before the black-box runs (the long ones), the other tables after; every gen_adv.py run is
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

TECHNIQUES = {"FNA": ("FNA", []), "FNA + DI": ("FNA", ["--input-diversity", 0.5]),
              "FNA + TI": ("FNA", ["--translation-invariance", 7]),
              "FNA + DI + TI": ("FNA", ["--input-diversity", 0.5, "--translation-invariance", 7]),
              # the hypothesis that iterations fit the surrogate's own directions: one step of eps
              "FGSM (one step)": ("FGSM", []),
              # learned once against the surrogate (a universal perturbation and the generator run once)
              "MisRank": ("MisRank", []), "UAP": ("UAP", [])}
ENSEMBLE = "ensemble of the other two (FNA + DI + TI)"


def query_subset(data, out, ids):
    """A dataset folder `out` with the training split and gallery of `data` and, as queries, the first
    image (by name) of each of the first `ids` query identities (links, not copies), made unless done."""
    if os.path.isdir(out):
        return out
    tmp = out + ".partial"
    os.makedirs(os.path.join(tmp, "query"), exist_ok=True)
    for split in ("bounding_box_train", "bounding_box_test"):
        if not os.path.exists(os.path.join(tmp, split)):
            os.symlink(os.path.join(data, split), os.path.join(tmp, split))
    first = {}
    for name in sorted(os.listdir(os.path.join(data, "query"))):
        first.setdefault(name.split("_")[0], name)
    for name in [first[pid] for pid in sorted(first)][:ids]:
        link = os.path.join(tmp, "query", name)
        if not os.path.exists(link):
            os.symlink(os.path.join(data, "query", name), link)
    os.replace(tmp, out)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "transfer-evidence"))
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--epochs", type=int, default=6, help="of the models, if transfer_synthetic.py has not trained them")
    p.add_argument("--eps", type=float, nargs="+", default=[8.0, 5.0], help="budgets of the transfer tables")
    p.add_argument("--query-ids", type=int, default=100,
                   help="transfer: one query image for each of this many identities (0: every query)")
    p.add_argument("--black-box-eps", type=float, nargs="+", default=[8.0])
    p.add_argument("--black-box-ids", type=int, default=8, help="black-box: queries of this many identities")
    p.add_argument("--queries", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--runs", type=int, default=1, help="runs of the random attacks (-n)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "transfer_techniques_synthetic.json"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    log = os.path.join(work, "log.txt")
    common = ["--device", "cpu", "--workers", args.workers]
    start = time.perf_counter()
    os.makedirs(work, exist_ok=True)
    data, ckpts, names = train_models(work, args.archs, args.epochs, common, log)
    transfer_data = query_subset(data, f"{data}-q{args.query_ids}", args.query_ids) if args.query_ids else data
    black_data = query_subset(data, f"{data}-q{args.black_box_ids}", args.black_box_ids)

    def ckpt(name):
        return os.path.join(ckpts, f"{name}-last.th")

    def run(tag, surrogate, flags, dataset):
        out = os.path.join(work, "techniques", tag)
        if not os.path.isfile(os.path.join(out, "done")):
            sh(["gen_adv.py", ckpts, dataset, f"{surrogate}-last.th", *flags, "--out", out, *common], log)
            open(os.path.join(out, "done"), "w").close()
        with open(os.path.join(out, "results.json")) as f:
            return json.load(f)

    def transferred(res, target, attack):
        by_path = {os.path.abspath(k): v for k, v in res["transfer"].items()}
        return by_path[ckpt(target)]["attacks"][attack]["mean"]

    record = {"config": vars(args), "models": names, "clean": {}, "white_box": {}, "transfer": {}, "black_box": {}}

    def transfer_table(eps):
        key = f"{eps:g}"
        cells = {row: {t: [] for t in names} for row in [*TECHNIQUES, ENSEMBLE]}
        seconds = {"FNA": [], "MisRank": []}
        for s in names:
            others = [ckpt(t) for t in names if t != s]
            for row, (attack, flags) in TECHNIQUES.items():
                tag = f"{s}-{row.split(' (')[0].replace(' + ', '-').replace(' ', '')}-eps{key}"
                res = run(tag, s, ["-a", attack, "--eps", eps, "-n", args.runs, *flags, "--transfer-to", *others],
                          transfer_data)
                record["clean"][s] = res["clean"]
                if row in seconds:  # white-box FNA, and the generator's own numbers, beside its attack time
                    recorded = "white_box" if row == "FNA" else "misrank_white_box"
                    record.setdefault(recorded, {}).setdefault(key, {})[s] = res["attacks"][attack]["mean"]
                    seconds[row].append(res["attacks"][attack]["attack_seconds"])
                for t in names:
                    if t != s:
                        cells[row][t].append(transferred(res, t, attack))
        for held_out in names:
            first, *rest = [n for n in names if n != held_out]
            res = run(f"ensemble-to-{held_out}-eps{key}", first,
                      ["-a", "FNA", "--eps", eps, "-n", args.runs, *TECHNIQUES["FNA + DI + TI"][1],
                       "--surrogates", *map(ckpt, rest), "--transfer-to", ckpt(held_out)], transfer_data)
            cells[ENSEMBLE][held_out].append(transferred(res, held_out, "FNA"))
        res = run(f"noise-eps{key}", names[0], ["-a", "noise", "--eps", eps, "-n", args.runs, "--transfer-to",
                                                *[ckpt(t) for t in names[1:]]], transfer_data)
        record.setdefault("noise", {})[key] = {names[0]: res["attacks"]["noise"]["mean"],
                                               **{t: transferred(res, t, "noise") for t in names[1:]}}
        record["transfer"][key] = {row: {t: {m: statistics.mean(v[m] for v in values) for m in ("mAP", "rank1")}
                                         for t, values in by_target.items() if values}
                                   for row, by_target in cells.items()}
        record.setdefault("attack_seconds", {})[key] = {k: statistics.mean(v) for k, v in seconds.items()}

    def black_box(eps):
        key = f"{eps:g}"
        model = names[0]
        res = run(f"{model}-FNA-q{args.black_box_ids}-eps{key}", model, ["-a", "FNA", "noise", "--eps", eps],
                  black_data)
        black = {"clean": res["clean"], "uniform noise": res["attacks"]["noise"]["mean"],
                 "white-box FNA": res["attacks"]["FNA"]["mean"]}
        for attack in ("SQUARE_FNA", "BANDITS_FNA", "RGF_FNA"):
            for q in args.queries:
                res = run(f"{model}-{attack}-q{q}-ids{args.black_box_ids}-eps{key}", model,
                          ["-a", attack, "--eps", eps, "--queries", q], black_data)
                entry = res["attacks"][attack]
                black[f"{attack} @ {q}"] = {**entry["mean"], "queries": entry["queries"]["per_image"],
                                            "seconds": entry.get("attack_seconds")}
        record["black_box"][key] = black

    # the first transfer table, the black-box runs (the long ones), then the other tables
    steps = [(transfer_table, args.eps[0]), *((black_box, e) for e in args.black_box_eps),
             *((transfer_table, e) for e in args.eps[1:])]
    for step, eps in steps:
        step(eps)
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
                  "| uniform noise (no model) | " + " | ".join(f"{100 * record['noise'][key][t]['mAP']:.2f}"
                                                             for t in names) + " |",
                  "| white-box FNA | " + " | ".join(f"{100 * record['white_box'][key][t]['mAP']:.2f}"
                                                  for t in names) + " |"]
        for row, cells in rows.items():
            lines.append(f"| {row} | " + " | ".join(f"{100 * cells[t]['mAP']:.2f}" if t in cells else "-"
                                                    for t in names) + " |")
        t = record["attack_seconds"][key]
        lines += ["", f"Attack time over the queries (mean over the surrogates): FNA {t['FNA']:.1f} s, the "
                      f"Mis-Ranking generator {t['MisRank']:.1f} s ({t['FNA'] / t['MisRank']:.0f}x faster; its "
                      "training not counted)."]
        lines.append("")
    for key, rows in record["black_box"].items():
        ids = record["config"]["black_box_ids"]
        lines += [f"Black-box on {names[0]} at eps {key}/255 (one query image of each of {ids} identities), "
                  "mAP / rank-1 %:", "", "| attack @ queries per image | mAP | rank-1 |", "|---|---|---|"]
        for label, m in rows.items():
            lines.append(f"| {label} | {100 * m['mAP']:.2f} | {100 * m['rank1']:.2f} |")
        lines.append("")
    lines.append(f"{record.get('seconds', 0) / 60:.0f} min on this machine.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
