#!/usr/bin/env python
"""Our targeted ranking attacks against RobRank's own attack code, on one model and split.

RobRank (Zhou et al., "Adversarial Ranking Attack and Defense", ECCV 2020) ranks a test set
against itself; re-ID ranks a gallery for each query. For every goal both sides get the same
model, images, budget (L-inf eps 8/255, step 3/255, 32 PGD iterations, M = W = 1: RobRank's
rob224 profile) and *the same targets*: RobRank's selector (``AdvRank.qcsel``) picks them, our
plan's ``loss.targets`` are overwritten with them. Both sides' adversarial features are then
measured with our ``TargetedPlan.measure`` (and, for LTM / GTM, rank-1 / mAP). Feature space on
both sides: L2-normalised features; RobRank's metric 'N' (Euclidean distance of normalised
features), ours ``cosine=True``, whose hinges take the same plain Euclidean distance
(``--variants squared``: the squared form, 1 - cos, as a diagnostic).

RobRank's files are read at run time (``--robrank``: a git clone of cdluminate/robrank, or a
folder holding advrank.py, advrank_loss.py and advrank_qcselector.py), patched only so that
they import (``PATCHES``), never committed here.

    git clone https://github.com/cdluminate/robrank /tmp/robrank
    python benchmarks/parity_robrank.py --robrank /tmp/robrank --checkpoint /tmp/reliable/clean-last.th \
        --data /tmp/reliable/data

See benchmarks/parity_robrank.md for the mapping of each goal and the results.
"""

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reid.attacks import attack_batch, plan_attack  # noqa: E402
from reid.attacks import targeted as targeted_mod  # noqa: E402
from reid.metrics import retrieval_metrics  # noqa: E402

FILES = ("advrank.py", "advrank_loss.py", "advrank_qcselector.py")
# (file, exact line, replacement): the only changes made to RobRank's code. termcolor is not
# installed here and robrank.utils is not copied; the attack logic is untouched.
PATCHES = (
    ("advrank.py", "from termcolor import colored", "colored = lambda text, *args, **kwargs: text  # patched: no termcolor"),
    ("advrank.py", "from ..utils import rjson", "rjson = str  # patched: robrank.utils not copied"),
)
GOALS = ("QA+", "QA-", "CA+", "CA-", "TMA", "LTM", "GTM", "GTT")
DETERMINISTIC = ("LTM", "GTM", "GTT")  # no random choice on either side: one seed says it all
# Goals whose RobRank selector assumes the query is in its own candidate set (argmin / [1:]):
# each query is then attacked alone with its own clean feature appended to candi.
WITH_SELF = ("QA-", "LTM", "GTM", "GTT")


# ---------------------------------------------------------------- RobRank's code, patched
def _read(source, name):
    """RobRank's file ``name`` from ``source``: a folder holding it, a checkout of the repository,
    or a git repository (bare or not; its HEAD, read with ``git show``)."""
    for path in (os.path.join(source, name), os.path.join(source, "robrank", "attacks", name)):
        if os.path.isfile(path):
            with open(path) as f:
                return f.read()
    return subprocess.run(["git", "-C", source, "show", f"HEAD:robrank/attacks/{name}"], check=True,
                          capture_output=True, text=True).stdout


def load_robrank(source):
    """Import RobRank's three attack files from ``source`` (see ``_read``), patched."""
    tmp = tempfile.mkdtemp(prefix="robrank-")
    pkg = os.path.join(tmp, "robrank_attacks")
    os.makedirs(pkg)
    diffs = []
    for name in FILES:
        text = _read(source, name)
        patched = text
        for file, old, new in PATCHES:
            if file == name:
                lines = patched.split("\n")
                hits = [i for i, line in enumerate(lines) if line.strip() == old]
                assert len(hits) == 1, (name, old, hits)
                lines[hits[0]] = lines[hits[0]].replace(old, new)
                patched = "\n".join(lines)
        diffs += difflib.unified_diff(text.splitlines(True), patched.splitlines(True), f"a/robrank/attacks/{name}",
                                      f"b/robrank/attacks/{name}", n=0)
        with open(os.path.join(pkg, name), "w") as f:
            f.write(patched)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path.insert(0, tmp)
    advrank = importlib.import_module("robrank_attacks.advrank")
    found = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = found.stdout.strip() if found.returncode == 0 else None
    return advrank, "".join(diffs), commit


def candidate_attack_class(advrank):
    """RobRank's AdvRank with its CA selection pointed at the *query set*.

    RobRank draws CA's W queries from candi, the same set its loss ranks (``Xs = candi[0]``);
    in re-ID the queries and the ranked gallery are two sets. This subclass overrides only
    ``eval_advrank`` (selection and summary, mirroring RobRank's CA branch): the W queries are
    drawn by RobRank's own ``QCSelector('CA+')`` from the query features (or given, for CA-),
    and RobRank's ``attack`` (its PGD loop) and ``AdvRankLoss('CA±', 'N')`` run unchanged with
    candi = the gallery as the ranked set."""
    from robrank_attacks.advrank_loss import AdvRankLoss
    from robrank_attacks.advrank_qcselector import QCSelector

    class CandidateAdvRank(advrank.AdvRank):
        def __init__(self, model, *, queries, selection=None, **kw):
            super().__init__(model, **kw)
            self.queries, self.selection = queries, selection

        def eval_advrank(self, images, labels, candi, *, resample=True):
            output, dist = self.outputdist(images, labels, candi)
            if resample:
                if self.selection is None:
                    _, dist_q = self.outputdist(images, labels, self.queries)
                    self.qcsel = QCSelector(f"CA{self.pm}", self.M, self.W)(dist_q, self.queries)
                else:
                    self.qcsel = (self.queries[0][self.selection], self.selection)
            embpairs, _ = self.qcsel
            loss, rank = AdvRankLoss(f"CA{self.pm}", self.metric)(output, embpairs, candi[0])
            return output, dist, {"loss": loss.item(), f"CA{self.pm}:prank": rank / candi[0].shape[0]}

    return CandidateAdvRank


# ---------------------------------------------------------------- data and model
def load_split(model, data_dir, size, batch=64):
    from reid.data import build_transforms, eval_loader, load_dataset
    from reid.evaluation.features import extract_features
    data = load_dataset(data_dir)
    transform = build_transforms(*size)
    out = {}
    for split in ("query", "gallery"):
        samples = getattr(data, split)
        images = torch.cat([img for img, *_ in eval_loader(samples, transform, batch)])
        feats, pids, camids = extract_features(model, eval_loader(samples, transform, batch), "cpu", desc=split)
        out[split] = (images, feats, torch.as_tensor(pids), torch.as_tensor(camids))
    return out


def load_network(args):
    if args.tiny:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from conftest import tiny_model
        return tiny_model(0), (64, 32)
    from reid.models import load_model
    model, ckpt = load_model(args.checkpoint)
    return model.eval(), tuple(ckpt.get("input_size") or (256, 128))


@torch.no_grad()
def features(model, images, batch=64):
    return torch.cat([model(b) for b in images.split(batch)])


# ---------------------------------------------------------------- one goal, one seed
@contextlib.contextmanager
def squared_euclidean():
    """Diagnostic only: our hinges on the squared Euclidean distance of normalised features
    (1 - cos, the form before this comparison), by swapping targeted.py's distance helpers
    during the attack; ours now uses the plain distance sqrt(2 (1 - cos)), RobRank's 'N'."""
    dist, pair = targeted_mod.distances, targeted_mod._pair_distance

    def d(f, bank, cosine):
        return dist(f, bank, cosine).pow(2) / 2

    def p(f, g, cosine):
        return pair(f, g, cosine).pow(2) / 2
    targeted_mod.distances, targeted_mod._pair_distance = d, p
    try:
        yield
    finally:
        targeted_mod.distances, targeted_mod._pair_distance = dist, pair


def _first(sel):
    """RobRank's selection of a doubled batch of one, its first row (tuples of tensors kept)."""
    if sel is None:
        return None
    if isinstance(sel, (tuple, list)):
        return type(sel)(_first(x) for x in sel)
    return sel[:1]


def run_goal(goal, seed, S, rr, args, model):
    """RobRank's attack and ours on the same targets; every number of one (goal, seed)."""
    q_img, q_feat, q_pid, q_cam = S["query"]
    g_img, g_feat, g_pid, g_cam = S["gallery"]
    gallery_side = goal in ("CA+", "CA-")
    if gallery_side:  # the attacked gallery images: the first N of a real identity
        rows = (g_pid > 0).nonzero().squeeze(1)[:args.num_gallery]
        a_img, a_feat, a_pid, a_cam = g_img, g_feat, g_pid, g_cam
        other = (q_feat, q_pid, q_cam)
    else:
        rows = torch.arange(min(args.num_queries, len(q_pid)))
        a_img, a_feat, a_pid, a_cam = q_img, q_feat, q_pid, q_cam
        other = (g_feat, g_pid, g_cam)
    gen = torch.Generator().manual_seed(seed)
    plan = plan_attack(goal, a_feat, a_pid, ranking=(a_cam, other, 1), m=1, w=1, cosine=True, generator=gen)
    own_plan = plan  # our own target selection, kept for the extra "ours, own targets" row

    # ---- RobRank
    torch.manual_seed(seed)
    np.random.seed(seed)
    kw = dict(eps=args.eps / 255, alpha=args.step / 255, pgditer=args.iters, metric="N", device="cpu")
    gn = F.normalize(g_feat, dim=1)
    t0 = time.time()
    if gallery_side:
        pm = goal[2]
        selection = None
        if goal == "CA-":
            # RobRank's CA- selector draws from the top 1% of candi after [1:] (self); with
            # int(0.01 * #queries) = 0 for our query set it has nothing to draw from, so CA-
            # uses our plan's targets (same-identity queries of another camera) on both sides.
            selection = plan.loss.targets[rows].clone()
        attacker = rr["CA"](model, queries=(F.normalize(q_feat, dim=1), q_pid), selection=selection,
                            attack_type="CA", W=1, pm=pm, **kw)
        xr, _, s_orig, s_adv = attacker(a_img[rows], a_pid[rows], (gn, g_pid))
        targets = attacker.qcsel[1].view(len(rows), -1)
        summaries = [(s_orig, s_adv, len(rows))]
    else:
        atype, pm = ("QA", goal[2]) if goal.startswith("QA") else (goal, None)
        extra = dict(M=1) if atype == "QA" else {}
        batches = [rows[i:i + 1] for i in range(len(rows))] if goal in WITH_SELF else [rows]
        xr, targets, summaries = [], [], []
        for b in batches:
            attacker = rr["AdvRank"](model, attack_type=atype, pm=pm, **extra, **kw)
            cf, cp = gn, g_pid
            if goal in WITH_SELF:  # the query itself, appended last: gallery indices stay as they are
                cf = torch.cat([gn, F.normalize(q_feat[b], dim=1)])
                cp = torch.cat([g_pid, q_pid[b]])
            if goal in WITH_SELF:
                # RobRank's LTM / GTM evaluation indexes labels.squeeze(), 0-d for a batch of one:
                # the query goes in twice (identical rows, identical steps) and the first is kept.
                x, _, s_orig, s_adv = attacker(a_img[b].repeat(2, 1, 1, 1), a_pid[b].repeat(2), (cf, cp))
                x, sel = x[:1], _first(getattr(attacker, "qcsel", None))
            else:
                x, _, s_orig, s_adv = attacker(a_img[b], a_pid[b], (cf, cp))
                sel = getattr(attacker, "qcsel", None)
            xr.append(x)
            summaries.append((s_orig, s_adv, len(b)))
            if goal in ("QA+", "QA-"):
                targets.append(sel[1].view(len(b), -1))
            elif goal == "TMA":
                targets.append(sel[1].view(len(b), 1))
            elif goal == "GTM":  # RobRank's unmatched target: qcsel[1]
                targets.append(sel[1][1].view(len(b), 1))
            elif goal == "GTT":  # the clean top-1 other than the query itself: qcsel[0]
                targets.append(sel[0][1].view(len(b), 1))
        xr = torch.cat(xr)
        targets = torch.cat(targets) if targets else None
    rr_seconds = time.time() - t0
    if targets is not None:
        assert int(targets.max()) < len(plan.loss.ranked if not gallery_side else plan.loss.anchors), \
            "a RobRank target outside the gallery / query set (the appended query itself)"

    # ---- our plan on the same targets
    attacked = torch.zeros(len(a_pid), dtype=torch.bool)
    attacked[rows] = True
    if targets is not None:
        full = plan.loss.targets.new_zeros(len(a_pid), targets.shape[1])
        full[rows] = targets.long()
        plan.loss.targets = full
        plan.loss.target_mask = attacked.view(-1, 1).expand_as(full).clone()
    same = dataclasses.replace(plan, attacked=attacked if targets is not None else attacked & plan.attacked)
    own = dataclasses.replace(own_plan, attacked=attacked & own_plan.attacked) if targets is not None else same
    if targets is not None:  # own_plan shares the loss module: rebuild it with its own draws
        own = dataclasses.replace(plan_attack(goal, a_feat, a_pid, ranking=(a_cam, other, 1), m=1, w=1, cosine=True,
                                              generator=torch.Generator().manual_seed(seed)))
        own = dataclasses.replace(own, attacked=attacked & own.attacked)

    def ours(p, variant=None):
        t = time.time()
        with (squared_euclidean() if variant == "squared" else contextlib.nullcontext()):
            _, f = attack_batch(model, a_img[rows], p, rows, eps=args.eps, step=args.step, max_iter=args.iters,
                                generator=torch.Generator().manual_seed(seed))
        out = a_feat.clone()
        out[rows] = f
        return out, time.time() - t

    feats = {"clean": a_feat, "robrank": a_feat.clone()}
    feats["robrank"][rows] = features(model, xr)
    feats["ours"], ours_seconds = ours(same)
    for v in args.variants:
        feats[f"ours-{v}"], _ = ours(same, v)

    def measure(p, f):
        m = dict(p.measure(f))
        if goal in ("LTM", "GTM", "GTT"):  # the query's own retrieval, attacked queries only
            r = retrieval_metrics(f[rows], g_feat, q_pid[rows].numpy(), g_pid.numpy(), q_cam[rows].numpy(),
                                  g_cam.numpy(), metric="cosine")
            m.update(rank1=r["rank1"], mAP=r["mAP"])
        return m

    result = {k: measure(same, f) for k, f in feats.items()}
    if targets is not None:
        f_own, _ = ours(own)
        result["ours_own_targets"] = measure(own, f_own)
        result["ours_own_targets_clean"] = measure(own, a_feat)
    n = sum(c for *_, c in summaries)
    result["robrank_summary"] = {
        side: {k: sum(s[i][k] * c for *s, c in summaries) / n for k in summaries[0][i]
               if isinstance(summaries[0][i][k], (int, float))}
        for i, side in ((0, "clean"), (1, "adv"))}
    result["attacked"] = int(attacked.sum())
    if targets is not None:
        tp = plan.loss.r_pids if not gallery_side else plan.loss.a_pids
        result["targets_same_identity"] = float((tp[targets.view(len(rows), -1)] == a_pid[rows].view(-1, 1))
                                                .double().mean())
    result["seconds"] = {"robrank": rr_seconds, "ours": ours_seconds}
    perturbation = (xr - a_img[rows]).abs().max().item() * 255
    result["robrank_max_perturbation"] = perturbation
    return result


# ---------------------------------------------------------------- table
def main_metric(goal):
    return {"TMA": "cosine", "GTT": "retain4", "LTM": "rank1", "GTM": "rank1"}.get(goal, "prank")


def fmt(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results, variants):
    cols = ["clean", "robrank", "ours", *[f"ours-{v}" for v in variants]]
    head = ["goal", "metric", "seeds", "clean", "RobRank", "ours (same targets)",
            *[f"ours, {v} Euclid." for v in variants], "ours (own targets)", "RobRank's own summary (clean -> adv)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for goal, runs in results.items():
        seeds = sorted(runs, key=int)
        metrics = [main_metric(goal)] + (["top1", "top10"] if main_metric(goal) == "prank" else []) + (
            ["mAP"] if goal in ("LTM", "GTM") else ["rank1", "mAP"] if goal == "GTT" else [])
        for k, metric in enumerate(metrics):
            vals = {c: [runs[s][c][metric] for s in seeds if metric in runs[s].get(c, {})] for c in cols}
            own = [runs[s]["ours_own_targets"][metric] for s in seeds if "ours_own_targets" in runs[s]]
            own_clean = [runs[s]["ours_own_targets_clean"][metric] for s in seeds if "ours_own_targets" in runs[s]]
            summary = "-"
            if k == 0:
                rs = [runs[s]["robrank_summary"] for s in seeds]
                keys = [x for x in rs[0]["adv"] if x not in ("loss", "embshift")]
                summary = "; ".join(f"{x}: {fmt([r['clean'][x] for r in rs if x in r['clean']])} -> "
                                    f"{fmt([r['adv'][x] for r in rs])}" for x in keys)
            own_txt = f"{fmt(own_clean)} -> {fmt(own)}" if own else "-"
            lines.append("| " + " | ".join([goal if k == 0 else "", metric, str(len(seeds)),
                                            *[fmt(vals[c]) for c in cols], own_txt, summary]) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="/tmp/reliable/clean-last.th")
    p.add_argument("--data", default="/tmp/reliable/data")
    p.add_argument("--tiny", action="store_true", help="tests/conftest.py's random tiny_model (a dry run)")
    p.add_argument("--robrank", default=os.environ.get("ROBRANK"),
                   help="RobRank's code: a git clone of cdluminate/robrank, or a folder with its advrank*.py "
                        "(default: $ROBRANK)")
    p.add_argument("--goals", nargs="+", default=list(GOALS), choices=GOALS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-queries", type=int, default=48)
    p.add_argument("--num-gallery", type=int, default=48)
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--step", type=float, default=3.0)
    p.add_argument("--iters", type=int, default=32)
    p.add_argument("--variants", nargs="*", default=[], choices=["squared"],
                   help="diagnostic variants of ours (squared: hinges on the squared Euclidean distance)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "parity_robrank.json"))
    p.add_argument("--table", action="store_true", help="print the table of --out's results and exit")
    p.add_argument("--show-patch", action="store_true", help="print the patch applied to RobRank's files and exit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.table:
        with open(args.out) as f:
            results = json.load(f)["results"]
        print(table({g: results[g] for g in GOALS if g in results}, args.variants))
        return
    if not args.robrank:
        p.error("--robrank: give a clone of https://github.com/cdluminate/robrank (or set $ROBRANK)")
    advrank, patch, commit = load_robrank(args.robrank)
    if args.show_patch:
        print(patch)
        return
    model, size = load_network(args)
    for q in model.parameters():  # input gradients only, on both sides
        q.requires_grad_(False)
    S = load_split(model, args.data, size)
    rr = {"AdvRank": advrank.AdvRank, "CA": candidate_attack_class(advrank)}
    results = {}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            old = json.load(f)
        if old.get("config", {}).get("checkpoint") == (None if args.tiny else args.checkpoint):
            results = old.get("results", {})
    config = {"checkpoint": None if args.tiny else args.checkpoint, "data": args.data, "robrank_commit": commit,
              "eps": args.eps, "step": args.step, "iters": args.iters, "M": 1, "W": 1,
              "num_queries": args.num_queries, "num_gallery": args.num_gallery, "feature_space": "L2-normalised",
              "patch": patch}
    for goal in args.goals:
        seeds = args.seeds[:1] if goal in DETERMINISTIC else args.seeds
        for seed in seeds:
            r = run_goal(goal, seed, S, rr, args, model)
            results.setdefault(goal, {})[str(seed)] = r
            print(json.dumps({"goal": goal, "seed": seed, **{k: r[k] for k in ("clean", "robrank", "ours")},
                              "seconds": r["seconds"]}), flush=True)
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"config": config, "results": results}, f, indent=1)
            os.replace(tmp, args.out)
    print(table({g: results[g] for g in GOALS if g in results}, args.variants))


if __name__ == "__main__":
    main()
