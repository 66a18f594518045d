#!/usr/bin/env python
"""Evidence for the reliable evaluation (issue 20), on synthetic data at 64x32.

Builds, with the toolkit's own CLIs: a small synthetic dataset (generator seed 0, 50 training
and 25 test identities, 4 cameras: 72 queries, 214 gallery images); classification models on
one backbone (timm:resnet18 by default, from scratch, seed 0, lr 1e-3): `clean` (--epochs),
`goat` (GOAT SMA, `--adv --sma --adv-iters 2`) and `uapdef` (`--uap-adv online`), both
--defended-epochs (each of their epochs costs several clean ones). Then, at each eps:

  input defences  on the clean model: none, bitdepth:3, jpeg:60, resize-pad:0.85, each under
                  the papers' attacks (-a all: their per-query worst case), APGD_FNA,
                  BPDA-APGD_FNA (--bpda; the deterministic defences), EOT-APGD_FNA (--eot 4;
                  resize-pad), SQUARE_RANK and -a standard (its worst case);
  APGD vs PGD     SMA, IFGSM, FNA against APGD_SMA, APGD_IFGSM, APGD_FNA at the same number of
                  gradient passes (--max_iter), and the ranking loss (RANK, APGD_RANK) against
                  the guided loss, on clean and goat;
  suite vs paper  the standard suite's worst case against the papers' attacks' worst case, on
                  clean, goat and uapdef.

Every step is skipped when its output exists, so an interrupted run resumes. Writes one JSON
file (mAP / rank-1 as fractions, and each run's sanity-check warnings) and prints Markdown
tables (mAP in %).

    python benchmarks/reliable_eval_synthetic.py --work /tmp/reliable --epochs 12
"""

import argparse
import json
import os
import time

from universal_synthetic import ROOT, SIZE, sh, work_folder

MODELS = {"clean": [], "goat": ["--adv", "--sma", "--adv-iters", "2"], "uapdef": ["--uap-adv", "online"]}
DEFENCES = ("none", "bitdepth:3", "jpeg:60", "resize-pad:0.85")
PGD_APGD = ("SMA", "IFGSM", "FNA", "RANK")


def model_arguments(doc):
    """The parser of an evidence script on this dataset and these models (`prepare`'s flags)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "attacks", "reliable-evidence"))
    p.add_argument("--arch", default="timm:resnet18")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the clean model")
    p.add_argument("--defended-epochs", type=int, default=6, help="epochs of goat and uapdef (each costs more)")
    p.add_argument("--lr", type=float, default=1e-3)
    return p


def main():
    p = model_arguments(__doc__)
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 5.0, 8.0])
    p.add_argument("--max-iter", type=int, default=15, help="gradient passes of PGD and APGD in the comparison")
    p.add_argument("--defence-iter", type=int, default=100, help="APGD's passes in the input-defence table")
    p.add_argument("--defence-queries", type=int, default=1000, help="Square's queries in the input-defence table")
    p.add_argument("--defences", nargs="+", default=list(DEFENCES), help="input defences of the table")
    p.add_argument("--no-standard", nargs="*", default=[], metavar="DEFENCE",
                   help="input defences whose row skips -a standard (it costs the most)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "reliable_eval_synthetic.json"))
    args = p.parse_args()
    work, log, common = work_folder(args)
    start = time.perf_counter()
    data = prepare(args, work, log, common, args.models)

    def evaluate(model, tag, eps, *flags):
        out = os.path.join(work, f"eval-{model}-{tag}-eps{eps:g}")
        if not os.path.isfile(os.path.join(out, "results.json")) or not json.load(
                open(os.path.join(out, "results.json"))).get("complete"):
            sh(["gen_adv.py", work, data, f"{model}-last.th", "--eps", eps, "--out", out, *common, *flags], log)
        with open(os.path.join(out, "results.json")) as f:
            r = json.load(f)
        rows = {n: e["mean"] for n, e in r["attacks"].items()}
        if "worst" in r:
            rows["worst"] = r["worst"]["metrics"]
        return {"clean": r["clean"], "rows": rows, "warnings": r.get("checks", {}).get("warnings", [])}

    record = {"config": vars(args), "defences": {}, "pgd_apgd": {}, "suite": {}}
    for eps in args.eps:
        key = f"{eps:g}"
        apgd = ["-a", "APGD_FNA", "--max_iter", args.defence_iter]
        for defence in args.defences if "clean" in args.models else ():
            tag = defence.replace(":", "")
            flags = [] if defence == "none" else ["--input-defence", defence]
            cell = {"paper": evaluate("clean", f"{tag}-paper", eps, "-a", "all", *flags)}
            if defence != "none":
                cell["apgd"] = evaluate("clean", f"{tag}-apgd{args.defence_iter}", eps, *apgd, *flags)
            if defence.startswith(("bitdepth", "jpeg")):
                cell["bpda"] = evaluate("clean", f"{tag}-bpda{args.defence_iter}", eps, *apgd, "--bpda", *flags)
            if defence.startswith("resize-pad"):
                cell["eot"] = evaluate("clean", f"{tag}-eot{args.defence_iter}", eps, *apgd, "--eot", 4, *flags)
            cell["square"] = evaluate("clean", f"{tag}-square{args.defence_queries}", eps, "-a", "SQUARE_RANK",
                                      "--queries", args.defence_queries, *flags)
            if defence not in args.no_standard:
                cell["standard"] = evaluate("clean", f"{tag}-standard", eps, "-a", "standard", *flags)
            record["defences"].setdefault(defence, {})[key] = cell
            save(record, args.out, start)
        for model in [m for m in ("clean", "goat") if m in args.models]:
            names = [*PGD_APGD, *(f"APGD_{n}" for n in PGD_APGD)]
            record["pgd_apgd"].setdefault(model, {})[key] = evaluate(model, "pgd-apgd", eps, "-a", *names,
                                                                      "--max_iter", args.max_iter, "--step", "auto")
            save(record, args.out, start)
        for model in args.models:
            record["suite"].setdefault(model, {})[key] = {
                "paper": evaluate(model, "none-paper" if model == "clean" else "paper", eps, "-a", "all"),
                "standard": evaluate(model, "none-standard" if model == "clean" else "standard", eps, "-a", "standard")}
            save(record, args.out, start)
    print(markdown(record))


def prepare(args, work, log, common, models):
    """The dataset and the models of the evidence in `work` (made once; an interrupted training
    resumes): `args.arch`, `args.lr`, `args.epochs` (clean), `args.defended_epochs`. Returns the
    dataset folder; each model is `work`/NAME-last.th."""
    data = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(data, "query")):
        sh(["-m", "reid.data.synthetic", data, "--seed", 0, "--ids", 50, "--test-ids", 25, "--cams", 4,
            "--height", 64, "--width", 32], log)
    for name in models:
        done = os.path.join(work, f"{name}.done")
        if not os.path.isfile(done):  # an interrupted training continues (--resume)
            resume = ["--resume"] if os.path.isfile(os.path.join(work, f"{name}-last.th")) else []
            epochs = args.epochs if name == "clean" else args.defended_epochs
            sh(["train.py", data, "--classif", "--arch", args.arch, "--lr", args.lr, "-n", epochs, "-b", 32,
                "-f", f"{name}.th", "--checkpoint-dir", work, "--seed", 0, *SIZE, *common, *MODELS[name], *resume],
               log)
            open(done, "w").close()
    return data


def save(record, out, start):
    record["seconds"] = time.perf_counter() - start
    with open(out + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(out + ".tmp", out)


def pct(metrics):
    return f"{100 * metrics['mAP']:.1f}"


def markdown(record):
    lines = []
    eps_list = [f"{e:g}" for e in record["config"]["eps"]]
    if record["defences"]:
        cfg = record["config"]
        lines += [f"Input defences on the clean model, mAP % (paper: the per-query worst case of -a all; APGD, "
                  f"BPDA and EOT (--eot 4): APGD_FNA at {cfg['defence_iter']} passes; Square: SQUARE_RANK, "
                  f"{cfg['defence_queries']} queries; standard: its worst case; checks: the warnings of every run "
                  "of the row):", "",
                  "| defence | eps | clean | paper | APGD | BPDA-APGD | EOT-APGD | Square | standard | checks |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for defence, by_eps in record["defences"].items():
            for e in eps_list:
                c = by_eps.get(e)
                if not c:
                    continue
                get = lambda k, row: pct(c[k]["rows"][row]) if k in c else "-"  # noqa: E731
                checks = ", ".join(sorted({w["check"] for run in c.values() for w in run["warnings"]})) or "silent"
                lines.append(f"| {defence} | {e} | {pct(c['paper']['clean'])} | {get('paper', 'worst')} | "
                             f"{get('apgd', 'APGD_FNA')} | {get('bpda', 'APGD_FNA')} | {get('eot', 'APGD_FNA')} | "
                             f"{get('square', 'SQUARE_RANK')} | {get('standard', 'worst')} | {checks} |")
        lines.append("")
    if record["pgd_apgd"]:
        lines += [f"PGD against APGD at {record['config']['max_iter']} gradient passes each, mAP %:", "",
                  "| model | eps | " + " | ".join(f"{n} / APGD_{n}" for n in PGD_APGD) + " |",
                  "|---|---|" + "---|" * len(PGD_APGD)]
        for model, by_eps in record["pgd_apgd"].items():
            for e, c in by_eps.items():
                cells = [f"{pct(c['rows'][n])} / {pct(c['rows']['APGD_' + n])}" for n in PGD_APGD]
                lines.append(f"| {model} | {e} | " + " | ".join(cells) + " |")
        lines.append("")
    if record["suite"]:
        lines += ["The standard suite's worst case against the papers' attacks' worst case, mAP %:", "",
                  "| model | eps | clean | paper worst | standard worst | standard members |",
                  "|---|---|---|---|---|---|"]
        for model, by_eps in record["suite"].items():
            for e, c in by_eps.items():
                members = ", ".join(f"{n} {pct(m)}" for n, m in c["standard"]["rows"].items() if n != "worst")
                lines.append(f"| {model} | {e} | {pct(c['paper']['clean'])} | {pct(c['paper']['rows']['worst'])} | "
                             f"{pct(c['standard']['rows']['worst'])} | {members} |")
    lines.append(f"\n{record.get('seconds', 0) / 60:.0f} min on this machine.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
