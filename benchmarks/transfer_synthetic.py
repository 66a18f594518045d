#!/usr/bin/env python
"""Transfer between backbones, on synthetic data at 64x32: a full transfer matrix.

Builds, with the toolkit's own CLIs: the default synthetic dataset (generator seed 0);
classification models on three backbones (ResNet50, DenseNet121, ResNeXt50-32x4d by
default; `--archs` takes any of train.py's, timm:<name> included) with the same budget
(`-n EPOCHS -b 32 --classif`, seed 0, from scratch); then, for every model as the
surrogate and every budget, one gen_adv.py run per attack set that crafts FNA and SMA on it
and evaluates the same adversarial queries on every other model (`--transfer-to`). Rows:
surrogate; columns: target; the diagonal is white-box. Every step is skipped when its
output exists, so an interrupted run resumes (an interrupted training continues with
--resume). Writes one JSON file and prints Markdown tables (mAP %, rank-1 %).

    python benchmarks/transfer_synthetic.py --work /tmp/transfer --epochs 6 --workers 1
"""

import argparse
import json
import os
import sys
import time

from universal_synthetic import ROOT, SIZE, sh

ARCHS = ("resnet50", "densenet121", "resnext50_32x4d")
ATTACKS = ("FNA", "SMA")


def markdown(record):
    """One table per (attack, eps): rows surrogate, columns target, cells mAP / rank-1 in %."""
    names = record["models"]
    lines = []
    head = "| surrogate \\ target | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    clean = record["clean"]
    lines += ["clean (no attack), mAP / rank-1 %:", "", "| | " + " | ".join(names) + " |", rule,
              "| clean | " + " | ".join(f"{100 * clean[n]['mAP']:.2f} / {100 * clean[n]['rank1']:.2f}"
                                        for n in names) + " |", ""]
    for attack in record["attacks"]:
        for eps in record["eps"]:
            cells = record["matrix"][attack][str(eps)]
            lines += [f"{attack} at eps {eps:g}/255, mAP / rank-1 % (diagonal: white-box):", "", head, rule]
            for s in names:
                row = [f"{100 * cells[s][t]['mAP']:.2f} / {100 * cells[s][t]['rank1']:.2f}" for t in names]
                row = [f"**{c}**" if s == t else c for c, t in zip(row, names)]
                lines.append(f"| {s} | " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)


def train_models(work, archs, epochs, common, log):
    """The dataset (`work`/data) and one classification model per backbone (`work`/ckpt/<name>-last.th,
    the same budget for each), made unless done; returns (data, ckpts, names)."""
    data = os.path.join(work, "data")
    if not os.path.isdir(data):
        sh(["-m", "reid.data.synthetic", data + ".partial", "--seed", 0], log)
        os.replace(data + ".partial", data)
    ckpts = os.path.join(work, "ckpt")
    names = [a.replace(":", "_") for a in archs]  # file names and table labels
    for arch, name in zip(archs, names):
        if not os.path.isfile(os.path.join(ckpts, f"{name}.done")):
            resume = ["--resume"] if os.path.isfile(os.path.join(ckpts, f"{name}-last.th")) else []
            sh(["train.py", data, "--classif", "--arch", arch, "-n", epochs, "-b", 32, "-f", f"{name}.th",
                *SIZE, "--seed", 0, "--checkpoint-dir", ckpts, *common, *resume], log)
            open(os.path.join(ckpts, f"{name}.done"), "w").close()
    return data, ckpts, names


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "transfer-evidence"))
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 5.0])
    p.add_argument("--runs", type=int, default=2, help="runs per attack (-n; random starts and guides)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "transfer_synthetic.json"))
    args = p.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.txt")
    common = ["--device", args.device, "--workers", args.workers]
    start = time.perf_counter()

    data, ckpts, names = train_models(work, args.archs, args.epochs, common, log)

    def ckpt(name):
        return os.path.join(ckpts, f"{name}-last.th")  # every model after the same budget

    matrix = {a: {str(e): {s: {} for s in names} for e in args.eps} for a in ATTACKS}
    clean = {}
    for eps in args.eps:
        for s in names:
            out = os.path.join(work, "eval", f"{s}-eps{eps:g}")
            if not os.path.isfile(os.path.join(out, "done")):
                others = [ckpt(t) for t in names if t != s]
                sh(["gen_adv.py", ckpts, data, f"{s}-last.th", "-a", *ATTACKS, "--eps", eps, "-n", args.runs,
                    "--out", out, *common, "--transfer-to", *others], log)
                open(os.path.join(out, "done"), "w").close()
            with open(os.path.join(out, "results.json")) as f:
                res = json.load(f)
            clean[s] = res["clean"]
            by_name = {os.path.abspath(k): v for k, v in res.get("transfer", {}).items()}
            for attack in ATTACKS:
                for t in names:
                    entry = res["attacks"][attack] if t == s else by_name[ckpt(t)]["attacks"][attack]
                    m = entry["mean"]
                    matrix[attack][str(eps)][s][t] = {"mAP": m["mAP"], "rank1": m["rank1"],
                                                      "mAP_std": entry["std"]["mAP"]}
    record = {"models": names, "archs": args.archs, "epochs": args.epochs, "eps": args.eps, "runs": args.runs,
              "attacks": list(ATTACKS), "clean": {n: {"mAP": clean[n]["mAP"], "rank1": clean[n]["rank1"]}
                                                  for n in names},
              "matrix": matrix, "seconds": time.perf_counter() - start,
              "command": " ".join(["python", "benchmarks/transfer_synthetic.py", *sys.argv[1:]])}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(markdown(record))


if __name__ == "__main__":
    main()
