"""Evidence that GOAT defends: clean vs GOAT models on the synthetic dataset, under attack.

Trains, with the same data, budget, seed and flags, a clean classification model and GOAT
models (SMA guides; 4 pool guides + 1 pulling guide), then evaluates each one's last
checkpoint clean and under SMA and FNA with gen_adv.py (at eps 2 and 5 /255 by default),
and writes a JSON file and a markdown table. Everything goes through the CLIs, as a user would run them.

    python benchmarks/goat_synthetic.py                      # CPU, 64x32, 12 epochs (~45 min)
    python benchmarks/goat_synthetic.py --device cuda --epochs 20 --workers 8

Training is skipped for a model whose last checkpoint already holds the requested epochs
(`--work`), so an interrupted run continues where it stopped.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reid.models.checkpoint import read_checkpoint  # noqa: E402

ATTACKS = ("SMA", "FNA")
MODELS = {
    "clean": [],
    "goat_sma": ["--adv", "--sma"],
    "goat_push4_pull": ["--adv", "--push", "4", "--pull"],
}


def run(*args):
    cmd = [sys.executable, *map(str, args)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="data/synthetic", help="generated (seed 0) if missing")
    p.add_argument("--work", default="models/checkpoints/goat_synthetic", help="checkpoints and evaluations")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--adv-iters", type=int, default=7, help="GOAT PGD iterations (train.py's default)")
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 5.0], help="evaluation budgets in /255 (default 2 and 5)")
    p.add_argument("--max-iter", type=int, default=15, help="evaluation attack iterations")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/goat_synthetic.json")
    args = p.parse_args()

    dataset = os.path.join(ROOT, args.dataset)
    if not os.path.isdir(os.path.join(dataset, "query")):
        run("-m", "reid.data.synthetic", dataset, "--seed", "0")
    run("sort_dataset.py", dataset)
    size = ["--height", args.height, "--width", args.width]
    common = ["--device", args.device, "--workers", args.workers, "--seed", args.seed]
    work = os.path.join(ROOT, args.work)

    results = {}
    for name in args.models:
        last = os.path.join(work, f"{name}-last.th")
        t0 = time.perf_counter()
        if not (os.path.isfile(last) and read_checkpoint(last)["epoch"] + 1 >= args.epochs):
            goat = MODELS[name] + (["--adv-iters", args.adv_iters] if MODELS[name] else [])
            resume = ["--resume"] if os.path.isfile(last) else []
            run("train.py", dataset, "--classif", "-n", args.epochs, "-b", args.batch, "-f", f"{name}.th",
                "--checkpoint-dir", work, *size, *common, *goat, *resume)
        train_seconds = time.perf_counter() - t0
        results[name] = {"flags": MODELS[name], "train_seconds_this_run": train_seconds}
        for eps in args.eps:
            out = os.path.join(work, f"eval-{name}-eps{eps:g}")
            run("gen_adv.py", work, dataset, f"{name}-last.th", "-a", *ATTACKS, "--eps", eps,
                "--max_iter", args.max_iter, "-b", 64, "--out", out, *common)
            with open(os.path.join(out, "results.json")) as f:
                evaluation = json.load(f)
            results[name]["clean"] = evaluation["clean"]
            results[name].update({f"{a}@{eps:g}": r["mean"] for a, r in evaluation["attacks"].items()})

    report = {"config": vars(args), "models": results}
    with open(os.path.join(ROOT, args.out), "w") as f:
        json.dump(report, f, indent=2)
    columns = ["clean"] + [f"{a}@{eps:g}" for eps in args.eps for a in ATTACKS]
    print(f"\n{args.epochs} epochs at {args.height}x{args.width}; query attacks of {args.max_iter} "
          f"iterations at eps/255 = {', '.join(f'{e:g}' for e in args.eps)}; mAP / rank-1 in %\n")
    print("| model | " + " | ".join(c.replace("@", " eps ") for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, r in results.items():
        cells = [f"{100 * r[c]['mAP']:.1f} / {100 * r[c]['rank1']:.1f}" for c in columns]
        print(f"| {name} (`{' '.join(r['flags']) or 'no GOAT'}`) | " + " | ".join(cells) + " |")
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
