"""reid.report: the worst case per query against a brute-force loop, sweep rows, csv and figure data."""

import csv
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from reid.evaluation import report
from reid.metrics import evaluate_rank
from reid.runtime import cli_main
from tests.conftest import ROOT

NUM_Q, NUM_G = 14, 60


def labels(seed):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 6, NUM_Q)
    q_pids[-1] = 99  # a query whose identity is not in the gallery: no valid match
    g_pids = np.concatenate([np.repeat(np.arange(1, 6), 8), np.zeros(12, int), -np.ones(8, int)])
    return q_pids, g_pids, rng.integers(0, 3, NUM_Q), rng.integers(0, 3, NUM_G)


def brute_query(dist_row, q_pid, q_cam, g_pids, g_cams):
    """(AP (Market interpolation), INP, first-hit rank) of one query by sorting, or None."""
    ranked = [g_pids[g] == q_pid for g in np.argsort(dist_row, kind="stable")
              if g_pids[g] != -1 and not (g_pids[g] == q_pid and g_cams[g] == q_cam)]
    hits = [r + 1 for r, hit in enumerate(ranked) if hit]
    if not hits:
        return None
    ap = np.mean([((i - 1) / (r - 1) if r > 1 else 1.0) / 2 + i / r / 2 for i, r in enumerate(hits, start=1)])
    return ap, len(hits) / hits[-1], hits[0]


def brute_worst(distmats, q_pids, g_pids, q_cams, g_cams):
    """The documented rule by brute force: per query, min AP and INP, max first-hit rank over candidates."""
    aps, inps, firsts = [], [], []
    for q in range(NUM_Q):
        scores = [brute_query(d[q], q_pids[q], q_cams[q], g_pids, g_cams) for d in distmats]
        if scores[0] is None:
            continue
        aps.append(min(s[0] for s in scores))
        inps.append(min(s[1] for s in scores))
        firsts.append(max(s[2] for s in scores))
    firsts = np.array(firsts)
    return {"mAP": np.mean(aps), "mINP": np.mean(inps),
            **{f"rank{k}": np.mean(firsts <= k) for k in (1, 5, 10)}}


def per_query(dist, q_pids, g_pids, q_cams, g_cams):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the query without a valid match
        return evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, per_query=True)["per_query"]


@pytest.mark.parametrize("seed", range(4))
def test_worst_case_matches_a_brute_force_loop_over_queries_and_candidates(seed):
    q_pids, g_pids, q_cams, g_cams = labels(seed)
    rng = np.random.default_rng(100 + seed)
    clean = rng.random((NUM_Q, NUM_G)) - 0.6 * (q_pids[:, None] == g_pids[None, :])  # matches mostly first
    candidates = [clean + rng.normal(0, 0.3, clean.shape) for _ in range(3)]
    candidates.append(np.round(candidates[0] * 3))  # few distinct values: ties everywhere
    for c in candidates:
        c[0] = clean[0]  # query 0: no attack hurts it
    values = [per_query(c, q_pids, g_pids, q_cams, g_cams) for c in candidates]
    metrics, lowest = report.worst_case(values)
    expected = brute_worst(candidates, q_pids, g_pids, q_cams, g_cams)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert lowest[-1] == -1 and lowest[0] == 0  # no valid match; unhurt query: a tie, the first candidate
    clean_values = per_query(clean, q_pids, g_pids, q_cams, g_cams)
    assert values[2]["ap"][0] == clean_values["ap"][0]  # the unhurt query keeps its clean AP ...
    assert min(v["ap"][0] for v in values) == clean_values["ap"][0]  # ... in the worst case too
    for q in range(NUM_Q - 1):
        assert values[lowest[q]]["ap"][q] == min(v["ap"][q] for v in values)


def test_worst_of_one_candidate_is_that_candidate_and_the_entry_counts_attacks():
    q_pids, g_pids, q_cams, g_cams = labels(0)
    dist = np.random.default_rng(1).random((NUM_Q, NUM_G))
    one = per_query(dist, q_pids, g_pids, q_cams, g_cams)
    metrics, _ = report.worst_case([one])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert metrics["mAP"] == pytest.approx(direct["mAP"]) and metrics["rank1"] == pytest.approx(direct["cmc"][0])
    # a candidate far worse than the other: every valid query's lowest AP is its
    far = dist.copy()
    far[:, g_pids > 0] += 10  # every true match after every distractor
    entry = report.worst_entry([("SMA", 0, one), ("FNA", 0, per_query(far, q_pids, g_pids, q_cams, g_cams))],
                               2.0, "query")
    assert entry["lowest_ap"] == {"SMA": 0, "FNA": NUM_Q - 1} and entry["eps"] == 2.0
    assert entry["candidates"] == ["SMA run 0", "FNA run 0"]


def metrics(value):
    return {"mAP": value, "rank1": value + 0.1, "rank5": value + 0.2, "rank10": value + 0.3, "mINP": value / 2}


def sweep_results():
    """A results.json of a sweep: two attacks at eps 1, 2 and 4, their worst case."""
    def attack(base):
        return {"by_eps": [{"mean": metrics(base / e), "eps": e, "runs": []} for e in (1.0, 2.0, 4.0)]}
    return {"config": {"eps": [1.0, 2.0, 4.0], "norm": "linf"}, "clean": metrics(0.6),
            "attacks": {"FGSM": attack(0.5), "SMA": attack(0.4)},
            "worst": {"by_eps": [{"metrics": metrics(0.3 / e), "eps": e} for e in (1.0, 2.0, 4.0)]}}


def test_sweep_rows_csv_and_figure_data(tmp_path):
    results = sweep_results()
    report.write_csv(results, tmp_path / "r.csv")
    table = list(csv.reader(open(tmp_path / "r.csv")))
    assert table[0] == ["attack", "eps", "mAP", "rank1", "rank5", "rank10", "mINP"]
    assert [(r[0], r[1]) for r in table[1:]] == [("FGSM", "1"), ("FGSM", "2"), ("FGSM", "4"), ("SMA", "1"),
                                                  ("SMA", "2"), ("SMA", "4"), ("worst", "1"), ("worst", "2"),
                                                  ("worst", "4"), ("clean", "0")]
    assert float(table[5][2]) == pytest.approx(0.2) and float(table[8][6]) == pytest.approx(0.075)

    data, clean = report.curves(results)
    assert set(data["mAP"]) == {"FGSM", "SMA", "worst"} and clean == pytest.approx({"mAP": 60, "rank1": 70})
    assert data["mAP"]["worst"] == ([1.0, 2.0, 4.0], pytest.approx([30, 15, 7.5]))
    fig = report.robustness_figure(results)
    assert len(fig.axes) == 2
    for ax, key in zip(fig.axes, ("mAP", "rank1")):
        lines = ax.get_lines()  # one per attack, the worst case, the clean dashed line
        assert [line.get_label() for line in lines] == ["FGSM", "SMA", "worst case", "clean"]
        assert lines[-1].get_linestyle() == "--" and list(lines[-1].get_ydata()) == [clean[key]] * 2
        np.testing.assert_allclose(lines[1].get_ydata(), data[key]["SMA"][1])
    assert "/255" in fig.axes[0].get_xlabel()
    results["config"]["norm"] = "l2"
    assert "L2" in report.robustness_figure(results).axes[1].get_xlabel()


def test_report_cli_reads_a_results_json_from_before_sweeps(tmp_path, capsys):
    old = {"config": {"eps": 5.0, "step": 1.0}, "clean": metrics(0.6),  # no norm, no worst, one eps
           "attacks": {"FNA": {"mean": metrics(0.1), "runs": [metrics(0.1)], "eps": 5.0},
                       "SMA": {"mean": metrics(0.2), "runs": [metrics(0.2)]}}}  # even without its eps
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    proc = subprocess.run([sys.executable, "-m", "reid.report", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = list(csv.reader(open(tmp_path / "robustness.csv")))
    assert [(r[0], r[1], r[2]) for r in table[1:]] == [("FNA", "5", "0.100000"), ("SMA", "5", "0.200000"),
                                                        ("clean", "0", "0.600000")]
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    good = json.dumps(metrics(0.6))
    for text in ("{}", '{"clean": {}, "attacks": {"FNA": {}}}', "not json",
                 good.replace("0.6", '"0.6"', 1).join(['{"clean": ', "}"]),              # a metric as a string
                 '{"clean": ' + good + ', "attacks": {"FNA": {"mean": null, "eps": 5}}}'):  # no mean
        path.write_text(text)
        with pytest.raises(SystemExit) as exit_code:
            cli_main(lambda: report.main([str(path)]))
        err = capsys.readouterr().err
        assert exit_code.value.code == 2 and len(err.strip().splitlines()) == 1 and "results.json" in err, err


def test_threat_model_view_takes_the_strongest_attack_of_each_threat_per_budget(tmp_path, capsys):
    """White-box, black-box (with its query budget) and universal rows from the run itself, the
    transfer row from another model's run that lists this checkpoint among its targets (by
    SHA-256; a run on an unrelated target is ignored); noise is a baseline, not a threat."""
    def entry(m, eps, **extra):
        return {"mean": metrics(m), "runs": [metrics(m)], "eps": eps, **extra}

    white, free = {"gradient_free": False}, {"gradient_free": True, "queries": {"per_image": 1000}}
    main = {"config": {"eps": [2.0, 5.0], "checkpoint_sha256": "abc"}, "clean": metrics(0.9), "attacks": {
        "FNA": {"by_eps": [entry(0.5, 2.0, **white), entry(0.3, 5.0, **white)]},
        "APGD_RANK": {"by_eps": [entry(0.45, 2.0, **white), entry(0.35, 5.0, **white)]},
        "SQUARE_RANK": {"by_eps": [entry(0.7, 2.0, **free), entry(0.6, 5.0, **free)]},
        "BANDITS_FNA": {"by_eps": [entry(0.75, 2.0, **free), entry(0.55, 5.0, **free)]},
        "UAP": {"by_eps": [entry(0.8, 2.0), entry(0.65, 5.0)]},
        "noise": {"by_eps": [entry(0.1, 2.0), entry(0.1, 5.0)]}}}
    surrogate = {"config": {"eps": 5.0, "transfer_targets": {"m.th": {"checkpoint_sha256": "abc"},
                                                             "x.th": {"checkpoint_sha256": "zzz"}}},
                 "clean": metrics(0.9), "attacks": {},
                 "transfer": {"m.th": {"attacks": {"FNA": entry(0.85, 5.0), "MIFGSM": entry(0.8, 5.0)}},
                              "x.th": {"attacks": {"FNA": entry(0.01, 5.0)}}}}
    unrelated = {"config": {"eps": 5.0, "transfer_targets": {"y.th": {"checkpoint_sha256": "zzz"}}},
                 "clean": metrics(0.9), "attacks": {}, "transfer": {"y.th": {"attacks": {"FNA": entry(0.0, 5.0)}}}}
    rows = report.threat_rows(main, [("s.json", surrogate), ("u.json", unrelated)])
    assert [(t, e, n, s, m["mAP"]) for t, e, n, s, m in rows] == [
        ("white-box", 2.0, "APGD_RANK", "this run", 0.45), ("black-box", 2.0, "SQUARE_RANK (1000 queries)",
                                                             "this run", 0.7),
        ("universal", 2.0, "UAP", "this run", 0.8),
        ("white-box", 5.0, "FNA", "this run", 0.3), ("black-box", 5.0, "BANDITS_FNA (1000 queries)", "this run", 0.55),
        ("universal", 5.0, "UAP", "this run", 0.65), ("transfer", 5.0, "MIFGSM", "s.json", 0.8)]

    paths = {}
    for name, value in (("results", main), ("s", surrogate)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(value))
    report.main([str(paths["results"]), str(paths["s"])])
    table = list(csv.reader(open(tmp_path / "threat_models.csv")))
    assert table[0][:5] == ["threat", "eps", "attack", "source", "mAP"]
    assert [r[:3] + [r[4]] for r in table[1:]][-1] == ["transfer", "5", "MIFGSM", "0.800000"]
    assert "transfer   eps 5     80.00" in capsys.readouterr().out
