#!/usr/bin/env python
"""Evidence for universal perturbations and their defence, on synthetic data at 64x32.

Builds, with the toolkit's own CLIs:
  datasets  S (the source, generator seed 0), T (a target dataset, generator seed 1) and
            V (a virtual meta dataset: --style virtual --layout openreid, seed 2);
  models    A (on S, seed 0), B (on S, seed 1), C (on T, seed 0), all classification
            ResNet50s with the same budget; defended models on S: Dfix (--uap-adv with A's
            UAP) and Donline (--uap-adv online);
and evaluates with gen_adv.py at eps 8/255: clean; noise; UAP(A) white-box on A; UAP(A) on
B; UAP(A) on C's dataset and model; the same three with a UAP meta-learned with V; the
defended models under UAP(A) and under a fresh UAP learned against each (adaptive).
Every step is skipped when its output exists, so an interrupted run resumes. Writes one
JSON file with every row (mAP / rank-1 as fractions) and prints a Markdown table.

    python benchmarks/universal_synthetic.py --work /tmp/uap-evidence --epochs 8
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = ["--height", "64", "--width", "32"]


def sh(args, log):
    """Run one of the toolkit's CLIs; its output goes to `log`."""
    cmd = [sys.executable, *map(str, args)]
    print("$", " ".join(map(str, args)), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, args)) + "\n")
        f.flush()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT)


def work_folder(args):
    """The evidence scripts' folder (`--work`, made), its log file and the CLI flags they share."""
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    return work, os.path.join(work, "log.txt"), ["--device", "cpu", "--workers", args.workers]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "universal-evidence"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--uap-epochs", type=int, default=5)
    p.add_argument("--uap-loss", default="centroid")
    p.add_argument("--meta-seeds", type=int, nargs="+", default=[0], help="UAP seeds for the meta comparison")
    p.add_argument("--no-defence", action="store_true", help="skip the defended models")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "universal_synthetic.json"))
    args = p.parse_args()
    work, log, common = work_folder(args)
    start = time.perf_counter()

    data = {"S": os.path.join(work, "S"), "T": os.path.join(work, "T"), "V": os.path.join(work, "V")}
    for name, extra in (("S", ["--seed", 0]), ("T", ["--seed", 1]),
                        ("V", ["--seed", 2, "--style", "virtual", "--layout", "openreid"])):
        if not os.path.isdir(data[name]):
            sh(["-m", "reid.data.synthetic", data[name] + ".partial", *extra], log)
            os.replace(data[name] + ".partial", data[name])

    ckpts = os.path.join(work, "ckpt")

    def train(name, dataset, seed, *extra):
        done = os.path.join(ckpts, f"{name}.done")
        if not os.path.isfile(done):  # an interrupted training is continued (--resume is exact)
            resume = ["--resume"] if os.path.isfile(os.path.join(ckpts, f"{name}-last.th")) else []
            sh(["train.py", dataset, "--classif", "-n", args.epochs, "-b", 32, "-f", f"{name}.th", *SIZE,
                "--seed", seed, "--checkpoint-dir", ckpts, *common, *extra, *resume], log)
            open(done, "w").close()
        return f"{name}-last.th"

    def evaluate(tag, ckpt, dataset, *extra):
        out = os.path.join(work, "eval", tag)
        if not os.path.isfile(os.path.join(out, "done")):
            sh(["gen_adv.py", ckpts, dataset, ckpt, "--eps", args.eps, "-n", 3, "--out", out, *common, *extra], log)
            open(os.path.join(out, "done"), "w").close()
        with open(os.path.join(out, "results.json")) as f:
            return json.load(f), out

    learn = ["--uap-epochs", args.uap_epochs, "--uap-loss", args.uap_loss]
    a, b, c = train("A", data["S"], 0), train("B", data["S"], 1), train("C", data["T"], 0)
    rows = []

    def row(label, results, attack=None):
        m = results["clean"] if attack is None else results["attacks"][attack]["mean"]
        rows.append({"setting": label, "mAP": m["mAP"], "rank1": m["rank1"]})
        print(f"{label:<48} mAP {100 * m['mAP']:6.2f}  rank-1 {100 * m['rank1']:6.2f}", flush=True)

    metas = {}
    for seed in args.meta_seeds:
        for meta in (False, True):
            extra = ["--meta-dataset", data["V"], "--meta-dataset-kind", "openreid"] if meta else []
            res, out = evaluate(f"A-uap{'-meta' if meta else ''}-s{seed}", a, data["S"], "-a", "UAP", "noise",
                                *learn, "--seed", seed, *extra)
            metas[(seed, meta)] = (res, os.path.join(out, "uap.pt"))
    res0, uap_a = metas[(args.meta_seeds[0], False)]
    row("A clean (S)", res0)
    row("A noise", res0, "noise")
    for meta in (False, True):
        tag = "meta-learned with V" if meta else "plain"
        for seed in args.meta_seeds:
            res, uap = metas[(seed, meta)]
            suffix = f", seed {seed}" if len(args.meta_seeds) > 1 else ""
            row(f"UAP(A) {tag}{suffix}: white-box on A", res, "UAP")
            res_b, _ = evaluate(f"B-{os.path.basename(os.path.dirname(uap))}", b, data["S"], "-a", "UAP",
                                "--uap", uap)
            row(f"UAP(A) {tag}{suffix}: on B (same data)", res_b, "UAP")
            res_c, _ = evaluate(f"C-{os.path.basename(os.path.dirname(uap))}", c, data["T"], "-a", "UAP",
                                "--uap", uap)
            row(f"UAP(A) {tag}{suffix}: on C (dataset T)", res_c, "UAP")
    res_b, _ = evaluate("B-clean", b, data["S"], "-a", "noise")
    row("B clean (S)", res_b)
    res_c, _ = evaluate("C-clean", c, data["T"], "-a", "noise")
    row("C clean (T)", res_c)
    row("C noise", res_c, "noise")

    if not args.no_defence:
        for name, mode in (("Dfix", uap_a), ("Donline", "online")):
            ckpt = train(name, data["S"], 0, "--uap-adv", mode)
            res, _ = evaluate(f"{name}-fixed", ckpt, data["S"], "-a", "UAP", "noise", "--uap", uap_a)
            row(f"{name} clean", res)
            row(f"{name} under UAP(A) (the fixed delta)", res, "UAP")
            res, _ = evaluate(f"{name}-adaptive", ckpt, data["S"], "-a", "UAP", *learn)
            row(f"{name} under a fresh UAP against it (adaptive)", res, "UAP")

    record = {"eps": args.eps, "epochs": args.epochs, "uap_epochs": args.uap_epochs, "uap_loss": args.uap_loss,
              "rows": rows, "seconds": time.perf_counter() - start}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("\n| setting | mAP % | rank-1 % |\n|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {100 * r['mAP']:.1f} | {100 * r['rank1']:.1f} |")


if __name__ == "__main__":
    main()
