#!/usr/bin/env python
"""The defence table (issue 22): the clean model and each adversarial training, trained from the
same seed, data, batches and epoch budget, judged by the same attacks. On synthetic data at 64x32.

Rows (train.py flags; every row `--classif --id_batch -ni 4 -b 32`, the same P x K batches):

  clean    no defence
  goat     GOAT push + pull (--adv --pull: in-batch same-identity pushing guides, furthest pull)
  est      EST = GOAT SMA (--defence est: the image's own feature)
  act      ACT (--defence act)
  hm       HM, gradual + intra-class structure (--defence hm)
  uap      online universal adversarial training (--uap-adv online)
  free     free adversarial training (--free M: each batch replayed M times, epochs / M epochs, the same
           budget of images seen x steps as the others)

Every adversarial training has the same inner budget (--adv-eps, --adv-iters, step 1/255).
Columns, all from gen_adv.py's results.json: clean mAP / rank-1; the per-query worst case of the
papers' attacks (-a all) beside the standard suite's (-a standard: APGD x 3 losses + Square) at each
--eps (issue 20: the suite's should be no higher); ERS (-a ers at eps 8, step 3,
RobRank's); a fresh UAP learned against the model itself (-a UAP, eps 8: adaptive); and the
training cost, the whole run's training time (the log's train_seconds) over the clean model's (for
every row but free this is the cost of an epoch in clean epochs).

Every step is skipped when its output exists (a killed run resumes). Writes one JSON file and
prints a Markdown table (%).

    python benchmarks/defence_table.py --work /tmp/defence-table --epochs 5
"""

import argparse
import json
import os
import sys
import time

from reliable_eval_synthetic import pct, save
from universal_synthetic import ROOT, SIZE, sh, work_folder

sys.path.insert(0, ROOT)
from reid.evaluation.report import entries  # noqa: E402

BATCHES = ["--classif", "--id_batch", "-ni", 4, "-b", 32]
DEFENCES = {"clean": [], "goat": ["--adv", "--pull"], "est": ["--defence", "est"], "act": ["--defence", "act"],
            "hm": ["--defence", "hm"], "uap": ["--uap-adv", "online"], "free": ["--free"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "defence-table"))
    p.add_argument("--arch", default="timm:resnet18")
    p.add_argument("--epochs", type=int, default=5, help="epochs of every row")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adv-eps", type=float, default=5.0, help="the inner attacks' budget (/255)")
    p.add_argument("--adv-iters", type=int, default=2)
    p.add_argument("--free-replays", type=int, default=4, help="M of the free row (it trains --epochs / M epochs)")
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 5.0], help="budgets of the standard suite")
    p.add_argument("--ids", type=int, default=100, help="training identities of the synthetic dataset (4 cameras, "
                   "one image per camera: a P x K epoch of K = 4 sees every training image once)")
    p.add_argument("--test-ids", type=int, default=20)
    p.add_argument("--rows", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "defence_table.json"))
    args = p.parse_args()
    work, log, common = work_folder(args)
    start = time.perf_counter()
    data = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(data, "query")):
        sh(["-m", "reid.data.synthetic", data, "--seed", 0, "--ids", args.ids, "--test-ids", args.test_ids,
            "--cams", 4, "--train-per-cam", 1, "--height", 64, "--width", 32], log)
    record = {"config": vars(args), "rows": {}}
    for name in args.rows:
        budget = [] if name in ("clean", "uap") else ["--adv-eps", args.adv_eps, "--adv-iters", args.adv_iters]
        epochs = args.epochs
        if name == "free":
            budget, epochs = [args.free_replays, "--adv-eps", args.adv_eps], max(1, args.epochs // args.free_replays)
        if not os.path.isfile(os.path.join(work, f"{name}.done")):
            resume = ["--resume"] if os.path.isfile(os.path.join(work, f"{name}-last.th")) else []
            sh(["train.py", data, *BATCHES, "--arch", args.arch, "--lr", args.lr, "-n", epochs, "-f",
                f"{name}.th", "--checkpoint-dir", work, "--seed", 0, *SIZE, *common, *DEFENCES[name], *budget,
                *resume], log)
            open(os.path.join(work, f"{name}.done"), "w").close()
        with open(os.path.join(work, f"{name}.log.jsonl")) as f:
            logged = [json.loads(line) for line in f]
        row = {"epochs": len(logged), "train_seconds": sum(e["train_seconds"] for e in logged)}
        for tag, flags in (("paper", ["-a", "all", "--eps", *args.eps]),
                           ("standard", ["-a", "standard", "--eps", *args.eps]),
                           ("ers", ["-a", "ers", "--eps", 8, "--step", 3]),
                           ("uap", ["-a", "UAP", "--eps", 8])):
            out = os.path.join(work, f"eval-{name}-{tag}")
            done = os.path.join(out, "results.json")
            if not (os.path.isfile(done) and json.load(open(done)).get("complete")):
                sh(["gen_adv.py", work, data, f"{name}-last.th", *flags, "--out", out, *common], log)
            with open(done) as f:
                r = json.load(f)
            row["clean"] = r["clean"]
            if tag in ("paper", "standard"):
                row["paper_worst" if tag == "paper" else "worst"] = {
                    f"{e['eps']:g}": e["metrics"] for e in entries(r["worst"])}
            elif tag == "ers":
                row["ers"] = r["ers"]["score"]
            else:
                row["uap"] = entries(r["attacks"]["UAP"])[0]["mean"]
        record["rows"][name] = row
        save(record, args.out, start)
    print(markdown(record))


def markdown(record):
    c = record["config"]
    eps = [f"{e:g}" for e in c["eps"]]
    lines = [f"{c['epochs']} epochs each, {c['arch']} from scratch, seed 0, P x K batches (32 = 8 x 4); inner attacks "
             f"PGD eps {c['adv_eps']:g}/255, {c['adv_iters']} iterations; free: --free {c['free_replays']} for "
             f"{max(1, c['epochs'] // c['free_replays'])} epochs. mAP / rank-1 in %; ERS in [0, 100], higher is more "
             "robust.", "",
             "| defence | clean mAP | clean rank-1 | " + " | ".join(f"paper / standard worst, eps {e}" for e in eps)
             + " | ERS (eps 8) | fresh UAP (eps 8) | training cost (x clean) |",
             "|---|---|---|" + "---|" * len(eps) + "---|---|---|"]
    clean = record["rows"].get("clean", {}).get("train_seconds")
    for name, r in record["rows"].items():
        cost = f"{r['train_seconds'] / clean:.1f}" if clean else "-"
        worst = " | ".join(f"{pct(r['paper_worst'][e])} / {pct(r['worst'][e])}" for e in eps)
        lines.append(f"| {name} | {pct(r['clean'])} | {100 * r['clean']['rank1']:.1f} | {worst} | "
                     f"{r['ers']:.1f} | {pct(r['uap'])} | {cost} |")
    lines.append(f"\n{record.get('seconds', 0) / 60:.0f} min on this machine.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
