"""The robustness report: worst case per query over attacks, budget sweeps, csv and figure.

`gen_adv.py` (`reid.evaluation.run_evaluation`) calls `worst_entry` at each budget with the
per-query values of every run of every attack, stores the result in results.json, and
writes `robustness.csv` and `robustness.png` with `write_report` whenever it ran a sweep
(several `--eps`) or has a worst case. `python -m reid.report RESULTS.json` (re)writes both
next to any results.json, including files written before sweeps existed.

Worst case (per query, at one budget). The candidates are every run of every attack at that
budget. For query q, with AP_c(q), INP_c(q) and r_c(q) (the rank of the first true match)
under candidate c:

    AP(q)   = min_c AP_c(q)       (the adversarial feature of the lowest-AP candidate)
    INP(q)  = min_c INP_c(q)
    hit@k(q) = 1 iff r_c(q) <= k for every c, i.e. max_c r_c(q) <= k

and mAP, mINP and CMC rank-k are their means over the queries with a valid match, as for one
attack (`reid.metrics.rank_summary`). A query attack perturbs each query on its own, so the
attacker may pick, per query, whichever candidate hurts it most. A gallery attack perturbs
the whole gallery at once: the same rules apply per query over the candidates' whole
adversarial galleries (each query ranked against one gallery of one run), an upper bound on
what one gallery can do to every query at once. The clean features are not a candidate.

The threat-model view (`python -m reid.report RESULTS.json OTHER.json ...`, ``threat_rows``)
puts the model's numbers under the attacker who can reach them, at each budget: the strongest
white-box attack (gradients of this model), black-box (queries only: Square, Bandits, RGF, at
their query budget), universal (one UAP for every image) and transfer (the strongest attack of
the OTHER runs, crafted on other models, with this model among their --transfer-to targets,
found by its checkpoint's SHA-256). Each row is the attack with the lowest mAP among those (a
min over attacks, not per query: the categories' candidates do not share one run).

results.json with several budgets: each attack entry becomes {"by_eps": [ENTRY, ...]}, one
entry per budget in the order given, each the one-budget entry (with its "eps"); "worst"
likewise. `entries` reads both shapes.
"""

import argparse
import csv
import json
import os
import sys

import numpy as np

from reid.evaluation.checks import FILE_CHECKS, file_checks, print_warnings
from reid.metrics import METRIC_NAMES, as_metrics, rank_summary
from reid.runtime import ReidError, atomic_path, cli_main

WORST = "worst"
CLEAN = "clean"
CSV_COLUMNS = ("attack", "eps") + METRIC_NAMES
CSV_NAME, FIGURE_NAME = "robustness.csv", "robustness.png"
WORST_RULE = ("per query, over every run of every attack at this eps: min AP, min INP, "
              "a rank-k hit only if a hit under every candidate")


def worst_case(per_query):
    """The worst case over candidates of per-query values (module docstring).

    per_query: a list of `evaluate_rank(..., per_query=True)["per_query"]` dicts, one per
    candidate, over the same queries. Returns (METRICS, lowest) where lowest (Q,) is the
    index of each query's lowest-AP candidate (the first on ties; -1 for queries without a
    valid match).
    """
    if not per_query:
        raise ValueError("worst_case: no candidate")
    ap, inp, first = (np.stack([np.asarray(c[key]) for c in per_query])
                      for key in ("ap", "inp", "first_rank"))
    valid = ~np.isnan(ap[0])
    if (np.isnan(ap) != ~valid).any():
        raise ValueError("worst_case: the candidates disagree on which queries have a valid match")
    summary = rank_summary(first[:, valid].max(0), ap[:, valid].min(0), inp[:, valid].min(0), max_rank=10)
    lowest = np.full(ap.shape[1], -1)
    lowest[valid] = ap[:, valid].argmin(0)
    return as_metrics(summary), lowest


def worst_entry(candidates, eps, target):
    """The results.json "worst" entry at one budget. candidates: (attack name, run, per-query
    values) triples. "lowest_ap" counts, per attack, the queries whose lowest-AP candidate
    is one of its runs."""
    metrics, lowest = worst_case([values for _, _, values in candidates])
    names = [name for name, _, _ in candidates]
    counts = {name: 0 for name in dict.fromkeys(names)}
    for index in lowest[lowest >= 0]:
        counts[names[index]] += 1
    return {"metrics": metrics, "eps": eps, "target": target, "rule": WORST_RULE,
            "candidates": [f"{name} run {run}" for name, run, _ in candidates], "lowest_ap": counts}


# RobRank's empirical robustness score (tools/pjswipe.py, profile rob224): each attack's score
# rescaled so that 100 = the attack moved nothing and 0 = it fully succeeded, then averaged.
# Ranks are normalised ranks (0 = top, 1 = bottom; an untouched random candidate sits near
# 0.5); RobRank's recall@1 is the re-ID rank-1 (CMC, Market protocol); ES is our SMA.
ERS_COMPONENTS = (
    ("CA+", "CA+", "goal", "prank", lambda v: 200 * v),
    ("CA-", "CA-", "goal", "prank", lambda v: 100 - 100 * v),
    ("QA+", "QA+", "goal", "prank", lambda v: 200 * v),
    ("QA-", "QA-", "goal", "prank", lambda v: 100 - 100 * v),
    ("TMA", "TMA", "goal", "cosine", lambda v: 100 - 100 * v),
    ("ES distance", "SMA", "embedding_shift", None, lambda v: 100 * (2 - v) / 2),
    ("ES rank-1", "SMA", "mean", "rank1", lambda v: 100 * v),
    ("LTM rank-1", "LTM", "mean", "rank1", lambda v: 100 * v),
    ("GTM rank-1", "GTM", "mean", "rank1", lambda v: 100 * v),
    ("GTT retain@4", "GTT", "goal", "retain4", lambda v: 100 * v),
)
ERS_RULE = ("the mean of: 200 x normalised rank (CA+, QA+), 100 - 100 x normalised rank (CA-, QA-), "
            "100 - 100 x cosine (TMA), 100 x (2 - ES shift) / 2, rank-1 in % under SMA (ES), LTM and GTM, "
            "and GTT's retain@4 in %; 100 = the attacks moved nothing")


def ers_entry(attacks, eps):
    """The results.json "ers" entry at budget ``eps`` from the attack entries there ({name:
    entry}), or None unless every attack of the profile ran."""
    if not all(attack in attacks for _, attack, _, _, _ in ERS_COMPONENTS):
        return None
    components = {}
    for label, attack, field, key, rescale in ERS_COMPONENTS:
        entry = attacks[attack]
        value = entry["goal"]["mean"][key] if field == "goal" else entry[field] if key is None else entry[field][key]
        components[label] = float(rescale(value))
    return {"score": float(np.mean(list(components.values()))), "eps": eps, "components": components,
            "rule": ERS_RULE}


def entries(value):
    """The per-budget entries of an attack (or "worst") value of results.json, either shape."""
    return list(value["by_eps"]) if "by_eps" in value else [value]


def norm_of(results):
    return results.get("config", {}).get("norm", "linf")


def eps_unit(norm):
    return "/255" if norm == "linf" else "L2 radius, [0, 1] pixel units"


def rows(results):
    """(attack, eps, METRICS) for every attack at every budget, the worst case at each budget,
    then clean (eps 0). Reads results.json of any version (one budget or a sweep)."""
    default_eps = results.get("config", {}).get("eps")
    out = []
    for name, value in results.get("attacks", {}).items():
        out += [(name, float(e.get("eps", default_eps)), e["mean"]) for e in entries(value)]
    if WORST in results:
        out += [(WORST, float(e["eps"]), e["metrics"]) for e in entries(results[WORST])]
    out.append((CLEAN, 0.0, results["clean"]))
    return out


def budget_rows(results, eps):
    """(name, METRICS) at budget ``eps``: clean first, then each attack, then the worst case."""
    table = rows(results)
    return [(CLEAN, results["clean"])] + [(name, m) for name, e, m in table if name != CLEAN and e == eps]


def write_csv(results, path):
    """robustness.csv: one row per (attack, eps), worst and clean included; metrics as fractions."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for name, eps, metrics in rows(results):
                writer.writerow([name, f"{eps:g}"] + [f"{metrics[k]:.6f}" for k in METRIC_NAMES])


def curves(results):
    """What the figure plots: {metric: {line: (eps list, values in %)}} for mAP and rank-1, one
    line per attack plus the worst case (each sorted by eps), and the clean value per metric."""
    lines = {}
    for name, eps, metrics in rows(results):
        if name != CLEAN:
            lines.setdefault(name, []).append((eps, metrics))
    data = {}
    for key in ("mAP", "rank1"):
        data[key] = {name: ([e for e, _ in sorted(points, key=lambda p: p[0])],
                            [100 * m[key] for _, m in sorted(points, key=lambda p: p[0])])
                     for name, points in lines.items()}
    clean = {key: 100 * results["clean"][key] for key in ("mAP", "rank1")}
    return data, clean


def robustness_figure(results):
    """The matplotlib figure of `curves`: mAP and rank-1 against eps, clean dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data, clean = curves(results)
    norm = norm_of(results)
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg renderer, without pyplot or a change of the user's backend
    for ax, (key, label) in zip(fig.subplots(1, 2), (("mAP", "mAP (%)"), ("rank1", "rank-1 (%)"))):
        for name, (xs, ys) in data[key].items():
            worst = name == WORST
            ax.plot(xs, ys, marker="o", markersize=4, color="black" if worst else None,
                    linewidth=2.5 if worst else 1.5, label="worst case" if worst else name, zorder=3 if worst else 2)
        ax.axhline(clean[key], color="grey", linestyle="--", linewidth=1.5, label="clean")
        budgets = sorted({x for xs, _ in data[key].values() for x in xs})
        if 1 < len(budgets) <= 12:
            ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.set_xlabel(f"eps ({eps_unit(norm)})")
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    target = "gallery" if results.get("config", {}).get("gallery") else "query"
    fig.suptitle(f"{target} attacks, {'L-inf' if norm == 'linf' else 'L2'} threat model")
    return fig


def write_figure(results, path):
    fig = robustness_figure(results)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


THREATS = ("white-box", "black-box", "universal", "transfer")
THREAT_CSV = "threat_models.csv"


def _threat(name, value):
    """The threat model of one attack entry of results.json, or None (noise: a baseline)."""
    if name == "UAP":
        return "universal"
    if "gradient_free" in value:
        return "black-box" if value["gradient_free"] else "white-box"
    return None


def threat_rows(results, others=()):
    """(threat, eps, attack, source, METRICS) rows of the threat-model view (module docstring):
    per budget and threat model, the lowest-mAP attack. ``others``: (path, results) of runs on
    other models; their `transfer` entries for this model's checkpoint are the transfer rows."""
    found = {}

    def offer(threat, eps, name, source, entry):
        key, metrics = (threat, float(eps)), entry["mean"]
        queries = entry.get("queries", {}).get("per_image")
        label = f"{name} ({queries} queries)" if queries else name
        if key not in found or metrics["mAP"] < found[key][2]["mAP"]:
            found[key] = (label, source, metrics)

    default_eps = results.get("config", {}).get("eps")
    for name, value in results.get("attacks", {}).items():
        for e in entries(value):
            if _threat(name, e):
                offer(_threat(name, e), e.get("eps", default_eps), name, "this run", e)
    sha = results.get("config", {}).get("checkpoint_sha256")
    for path, other in others:
        other_eps = other.get("config", {}).get("eps")
        for label, info in other.get("config", {}).get("transfer_targets", {}).items():
            if sha is None or info.get("checkpoint_sha256") != sha:
                continue
            for name, value in other.get("transfer", {}).get(label, {}).get("attacks", {}).items():
                for e in entries(value):
                    offer("transfer", e.get("eps", other_eps), name, path, e)
    order = {t: i for i, t in enumerate(THREATS)}
    return [(threat, eps, *found[threat, eps]) for threat, eps in sorted(found, key=lambda k: (k[1], order[k[0]]))]


def write_threats(table, path):
    """threat_models.csv: the rows of ``threat_rows`` (metrics as fractions)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("threat", "eps", "attack", "source") + METRIC_NAMES)
            for threat, eps, name, source, metrics in table:
                writer.writerow([threat, f"{eps:g}", name, source] + [f"{metrics[k]:.6f}" for k in METRIC_NAMES])


def write_report(results, folder):
    """robustness.csv and robustness.png in `folder`; returns their paths."""
    paths = os.path.join(folder, CSV_NAME), os.path.join(folder, FIGURE_NAME)
    write_csv(results, paths[0])
    write_figure(results, paths[1])
    return paths


def read_results(path):
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as err:
        raise ReidError(f"{path}: cannot read a results.json ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(results, dict) or "clean" not in results:
        raise ReidError(f"{path}: not a results.json of gen_adv.py (no 'clean' entry)")
    check_rows(results, path)
    return results


def check_rows(results, path):
    """Every row the report reads holds an eps and the five metrics as finite numbers; one
    line naming the first entry that does not."""
    def bad(value):
        return not (isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value))

    try:
        table = rows(results)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ReidError(f"{path}: an attack or worst-case entry is malformed ({type(err).__name__}: {err})") from None
    for name, eps, metrics in table:
        if not isinstance(metrics, dict):
            raise ReidError(f"{path}: {name} at eps {eps:g}: expected its metrics as a dict, found {metrics!r}")
        for key in METRIC_NAMES:
            if key not in metrics or bad(metrics[key]):
                raise ReidError(f"{path}: {name} at eps {eps:g}: {key} is {metrics.get(key)!r}, expected a number")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m reid.report",
                                description="(Re)write robustness.csv and robustness.png next to a results.json.")
    p.add_argument("results", help="a results.json written by gen_adv.py (any version)")
    p.add_argument("others", nargs="*", metavar="OTHER",
                   help="results.json of runs on other models with this one among their --transfer-to targets: "
                        "the transfer rows of the threat-model view (threat_models.csv)")
    args = p.parse_args(argv)
    results = read_results(args.results)
    others = [(path, read_results(path)) for path in args.others]
    if results.get("complete") is False:
        print(f"note: {args.results} is from a run that did not finish: the report holds what it had done")
    stored = [w for w in results.get("checks", {}).get("warnings", []) if w.get("check") not in FILE_CHECKS]
    print_warnings(stored + file_checks(results))  # the model's checks as the run found them, the file's anew
    for ers in entries(results["ers"]) if isinstance(results.get("ers"), dict) else ():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in ers["components"].items())
        print(f"ERS at eps {ers['eps']:g}: {ers['score']:.1f} ({parts})")
    folder = os.path.dirname(os.path.abspath(args.results))
    for path in write_report(results, folder):
        print(path)
    table = threat_rows(results, others)
    if table:
        write_threats(table, os.path.join(folder, THREAT_CSV))
        print("threat models (the strongest attack of each; mAP / rank-1 %):")
        for threat, eps, name, source, m in table:
            where = "" if source == "this run" else f"  from {source}"
            print(f"  {threat:<10} eps {eps:<4g} {100 * m['mAP']:6.2f} / {100 * m['rank1']:6.2f}  {name}{where}")
        print(os.path.join(folder, THREAT_CSV))


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]))
