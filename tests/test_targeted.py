"""The targeted ranking attacks and ERS (issue 21): each loss against a brute-force loop, target
selection, normalised ranks against a sort, ERS from crafted scores, bad inputs, one run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_model
from reid import ReidError, evaluate_robustness
from reid.attacks import ATTACKS, SUITES, plan_attack
from reid.evaluation.report import ERS_COMPONENTS, ers_entry

# a tiny re-ID world: 6 queries, 14 gallery items (pid -1 junk, 0 distractor), 3 cameras
Q_PIDS = torch.tensor([1, 1, 2, 3, 4, 5])
Q_CAMS = torch.tensor([0, 1, 0, 2, 1, 0])
G_PIDS = torch.tensor([1, 1, 1, 2, 2, 3, 3, 4, 0, 0, -1, 5, 6, 6])
G_CAMS = torch.tensor([0, 1, 2, 0, 1, 0, 2, 1, 0, 1, 0, 0, 1, 2])


def world(seed=0, dim=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(Q_PIDS), dim, generator=g), torch.randn(len(G_PIDS), dim, generator=g)


def valid(q, x):
    """Brute force: gallery item x is in query q's ranking (Market protocol)."""
    return G_PIDS[x] != -1 and not (G_PIDS[x] == Q_PIDS[q] and G_CAMS[x] == Q_CAMS[q])


def d(a, b):
    """The losses' distance: Euclidean, not squared (see reid/attacks/targeted.py)."""
    return float(((a - b) ** 2).sum().sqrt())


def query_plan(name, qf, gf, seed=0, m=1):
    return plan_attack(name, qf, Q_PIDS, ranking=(Q_CAMS, (gf, G_PIDS, G_CAMS), 1), m=m,
                       generator=torch.Generator().manual_seed(seed))


def gallery_plan(name, qf, gf, seed=0, w=1):
    return plan_attack(name, gf, G_PIDS, ranking=(G_CAMS, (qf, Q_PIDS, Q_CAMS), 1), w=w,
                       generator=torch.Generator().manual_seed(seed))


def brute_query_loss(goal, q, f, gf, targets):
    items = [x for x in range(len(G_PIDS)) if valid(q, x)]
    dist = {x: d(f, gf[x]) for x in items}
    if goal in ("QA+", "QA-", "GTT"):
        hinges = []
        for c in targets:
            for x in items:
                gap = dist[c] - dist[x] if goal == "QA+" else dist[x] - dist[c]
                hinges.append((c, max(gap, 0.0)))
        per_target = [np.mean([h for cc, h in hinges if cc == c]) for c in targets]
        return -float(np.mean(per_target))
    if goal == "TMA":
        t = gf[targets[0]]
        return float(f @ t / (f.norm() * t.norm()))
    if goal == "GTM":
        return -dist[targets[0]]
    if goal == "LTM":
        matches = [x for x in items if G_PIDS[x] == Q_PIDS[q]]
        others = [x for x in items if G_PIDS[x] != Q_PIDS[q]]
        return -max(max(dist[x] for x in others) - min(dist[x] for x in matches), 0.0)
    raise AssertionError(goal)


def losses_near(plan, clean):
    """Features near the clean ones, the attacked rows and the plan's loss of each there."""
    f = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    rows = plan.attacked.nonzero().squeeze(1)
    return f, rows, plan.loss.per_sample(f[rows], rows)


@pytest.mark.parametrize("goal", ["QA+", "QA-", "SPQA+", "TMA", "LTM", "GTM", "GTT"])
def test_query_losses_match_a_brute_force_loop(goal):
    qf, gf = world()
    plan = query_plan(goal, qf, gf, m=2)
    f, rows, got = losses_near(plan, qf)
    for value, q in zip(got.tolist(), rows.tolist()):
        targets = plan.loss.targets[q][plan.loss.target_mask[q]].tolist()
        expected = brute_query_loss("QA+" if goal == "SPQA+" else goal, q, f[q], gf, targets)
        if goal == "SPQA+":  # its 5 nearest clean true matches kept ahead of the other items (weight 1)
            matches = sorted((x for x in range(len(G_PIDS)) if valid(q, x) and G_PIDS[x] == Q_PIDS[q]),
                             key=lambda x: d(qf[q], gf[x]))[:5]
            assert plan.loss.keep[q][plan.loss.keep_mask[q]].tolist() == matches
            if matches:
                expected -= -brute_query_loss("QA+", q, f[q], gf, matches)
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("goal", ["CA+", "CA-"])
def test_candidate_losses_match_a_brute_force_loop(goal):
    qf, gf = world()
    plan = gallery_plan(goal, qf, gf, w=2)
    f, rows, got = losses_near(plan, gf)
    for value, c in zip(got.tolist(), rows.tolist()):
        per_query = []
        for q in plan.loss.targets[c][plan.loss.target_mask[c]].tolist():
            others = [x for x in range(len(G_PIDS)) if valid(q, x) and x != c]
            a = d(f[c], qf[q])
            per_query.append(np.mean([max((a - d(gf[x], qf[q])) * (1 if goal == "CA+" else -1), 0.0)
                                      for x in others]))
        assert value == pytest.approx(-float(np.mean(per_query)), rel=1e-5, abs=1e-5)


def test_targets_are_valid_and_reproducible_per_image():
    qf, gf = world()
    for seed in range(5):
        qa_plus, qa_minus = query_plan("QA+", qf, gf, seed, m=3), query_plan("QA-", qf, gf, seed, m=3)
        tma = query_plan("TMA", qf, gf, seed)
        for q in range(len(Q_PIDS)):
            picked = qa_plus.loss.targets[q][qa_plus.loss.target_mask[q]].tolist()
            assert len(picked) == 3 and len(set(picked)) == 3
            assert all(valid(q, x) and G_PIDS[x] != Q_PIDS[q] for x in picked)  # never junk, never its identity
            own = qa_minus.loss.targets[q][qa_minus.loss.target_mask[q]].tolist()
            true_matches = {x for x in range(len(G_PIDS)) if valid(q, x) and G_PIDS[x] == Q_PIDS[q]}
            assert set(own) <= true_matches and len(own) == min(3, len(true_matches))
            assert qa_minus.attacked[q] == bool(true_matches)  # no true match: nothing to push down
            t = int(tma.loss.targets[q, 0])
            assert G_PIDS[t] > 0 and G_PIDS[t] != Q_PIDS[q]
        for goal in ("CA+", "CA-"):
            plan = gallery_plan(goal, qf, gf, seed, w=2)
            for c in range(len(G_PIDS)):
                anchors = plan.loss.targets[c][plan.loss.target_mask[c]].tolist()
                for q in anchors:
                    if goal == "CA+":
                        assert Q_PIDS[q] != G_PIDS[c]
                    else:  # queries the image truly matches
                        assert Q_PIDS[q] == G_PIDS[c] and Q_CAMS[q] != G_CAMS[c]
                assert plan.attacked[c] == bool(anchors) and (G_PIDS[c] > 0 or not anchors)
    # the same seed draws the same targets, image by image, whatever else is in the set
    a = query_plan("QA+", qf, gf, 7, m=2)
    b = plan_attack("QA+", qf[:3], Q_PIDS[:3], ranking=(Q_CAMS[:3], (gf, G_PIDS, G_CAMS), 1), m=2,
                    generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.loss.targets[:3], b.loss.targets)
    draws = {tuple(query_plan("QA+", qf, gf, s, m=2).loss.targets.flatten().tolist()) for s in range(4)}
    assert len(draws) > 1


def sort_rank(scores, target, keep):
    """The target's position (0 = first) among the kept items sorted by score (target included)."""
    order = [x for x in np.argsort(scores, kind="stable") if keep[x] or x == target]
    return order.index(target) / (len(order) - 1)


def test_normalised_ranks_match_a_sort():
    qf, gf = world()
    f = qf + 0.5 * torch.randn(qf.shape, generator=torch.Generator().manual_seed(2))
    plan = query_plan("QA+", qf, gf, m=2)
    ranks = []
    for q in plan.attacked.nonzero().squeeze(1).tolist():
        scores = ((f[q] - gf) ** 2).sum(1).numpy()
        keep = [valid(q, x) for x in range(len(G_PIDS))]
        ranks += [sort_rank(scores, t, keep) for t in plan.loss.targets[q].tolist()]
    got = plan.measure(f)
    assert got["prank"] == pytest.approx(np.mean(ranks))
    positions = np.array(ranks) * np.array([sum(valid(q, x) for x in range(len(G_PIDS))) - 1
                                            for q in plan.attacked.nonzero().squeeze(1).tolist() for _ in range(2)])
    assert got["top1"] == pytest.approx(np.mean(np.round(positions) < 1))
    assert got["top10"] == pytest.approx(np.mean(np.round(positions) < 10))
    # a candidate attack: the perturbed gallery image's rank among each query's clean items
    g_adv = gf + 0.5 * torch.randn(gf.shape, generator=torch.Generator().manual_seed(3))
    plan = gallery_plan("CA+", qf, gf, w=2)
    ranks = []
    for c in plan.attacked.nonzero().squeeze(1).tolist():
        for q in plan.loss.targets[c][plan.loss.target_mask[c]].tolist():
            clean = ((qf[q] - gf) ** 2).sum(1)
            clean[c] = ((qf[q] - g_adv[c]) ** 2).sum()
            ranks.append(sort_rank(clean.numpy(), c, [valid(q, x) and x != c for x in range(len(G_PIDS))]))
    assert plan.measure(g_adv)["prank"] == pytest.approx(np.mean(ranks))


def test_ers_from_crafted_scores():
    def goal(**mean):
        return {"goal": {"mean": mean}}
    attacks = {"CA+": goal(prank=0.25), "CA-": goal(prank=0.6), "QA+": goal(prank=0.1), "QA-": goal(prank=0.9),
               "TMA": goal(cosine=0.7), "SMA": {"embedding_shift": 0.5, "mean": {"rank1": 0.3}},
               "LTM": {"mean": {"rank1": 0.2}}, "GTM": {"mean": {"rank1": 0.4}}, "GTT": goal(retain4=0.8)}
    expected = [50, 40, 20, 10, 30, 75, 30, 20, 40, 80]
    entry = ers_entry(attacks, 8.0)
    assert list(entry["components"].values()) == pytest.approx(expected)
    assert entry["score"] == pytest.approx(np.mean(expected)) and entry["eps"] == 8.0
    assert ers_entry({k: v for k, v in attacks.items() if k != "GTT"}, 8.0) is None
    assert {attack for _, attack, *_ in ERS_COMPONENTS} == set(SUITES["ers"].members)


def test_bad_targeted_options_are_one_line_errors(synthetic_dataset, tmp_path):
    model = tiny_model()
    common = dict(input_size=(64, 32), device="cpu", workers=0, out=str(tmp_path / "out"))
    for attacks, options, message in (
            ("QA+", {"rank_m": 0}, "--rank-m 0"),
            ("QA+", {"single": True}, "no single-guide form"),
            ("QA+", {"gallery": True}, "run it without --gallery"),
            ("FNA", {"rank_m": 2}, "no attack of -a uses it"),
            ("CA+", {"rank_m": 2}, "no attack of -a uses it"),
            ("QA+", {"rank_w": 2}, "no attack of -a uses it"),
            ("ers", {"max_iter": 10}, "fixed --max_iter 32"),
            ("QA+", {"rank_m": 10 ** 6}, "--rank-m 1000000: expected an integer from 1 to the size of the gallery"),
            ("CA-", {"rank_w": 10 ** 6}, "--rank-w 1000000: expected an integer from 1 to the size of the query set")):
        with pytest.raises(ReidError, match=message.replace("+", r"\+")) as err:
            evaluate_robustness(model, synthetic_dataset, attacks=attacks, **common, **options)
        assert "\n" not in str(err.value)


def test_ers_run_writes_goals_scores_and_keeps_targeted_attacks_out_of_the_worst_case(synthetic_dataset, tmp_path):
    out = str(tmp_path / "ers")
    results = evaluate_robustness(tiny_model(), synthetic_dataset, attacks="ers", input_size=(64, 32), device="cpu",
                                  workers=0, out=out, nb_repeat=2)
    assert results["config"]["eps"] == 8.0 and results["config"]["max_iter"] == 32 and results["config"]["step"] == 3.0
    attacks = results["attacks"]
    for name in ("QA+", "CA+"):  # targets rise from the middle of the ranking towards the top
        goal = attacks[name]["goal"]
        assert goal["mean"]["prank"] < goal["clean"]["prank"] and len(goal["runs"]) == 2
    for name in ("QA-", "CA-"):
        assert attacks[name]["goal"]["mean"]["prank"] > attacks[name]["goal"]["clean"]["prank"]
    assert attacks["CA+"]["target"] == "gallery" and attacks["QA+"]["target"] == "query"
    assert "deterministic" in attacks["LTM"] and "deterministic" not in attacks["QA+"]
    assert attacks["GTT"]["goal"]["clean"]["retain4"] == 1.0  # the clean top-1 is its own top-1
    candidates = {c.split(" run")[0] for c in results["worst"]["candidates"]}
    assert candidates == {"SMA", "LTM", "GTM", "GTT"}
    ers = results["ers"]
    assert ers["score"] == pytest.approx(ers_entry(attacks, 8.0)["score"])
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["ers"] == ers
    report = subprocess.run([sys.executable, "-m", "reid.report", os.path.join(out, "results.json")], cwd=ROOT,
                            capture_output=True, text=True)
    assert report.returncode == 0 and f"ERS at eps 8: {ers['score']:.1f}" in report.stdout
    assert all(ATTACKS[n].uses_gallery for n in ("QA+", "CA-", "TMA", "LTM", "GTM", "GTT"))
