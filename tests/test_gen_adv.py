"""gen_adv.py under attack, on a model trained briefly on the synthetic dataset.

One run of every attack at the default budget (eps 5/255, with images, features and
pictures saved) is shared by the tests. The test that compares two attacks uses a
small budget (2/255), where attacks are not all at chance level and their ordering
means something.
"""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from reid.evaluation import report
from reid.attacks import ATTACK_NAMES
from reid.data import build_transforms, load_dataset, read_image
from tests.conftest import run_cli

EPS = 5
COMMON = ["--max_iter", 5, "--device", "cpu", "--workers", 0]
METRIC_KEYS = {"mAP", "rank1", "rank5", "rank10", "mINP"}


@pytest.fixture(scope="module")
def all_attacks(trained_checkpoint, synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack_all")
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "all", *COMMON,
                   "--out", out, "--save-features", "--save-images", "--visualize", 1)
    return out, json.load(open(out / "results.json")), proc.stdout


def test_every_attack_lowers_map(all_attacks):
    _, results, stdout = all_attacks
    assert list(results["attacks"]) == list(ATTACK_NAMES)
    clean = results["clean"]["mAP"]
    for name, entry in results["attacks"].items():
        assert entry["mean"]["mAP"] < clean, (name, entry["mean"]["mAP"], clean)
    for name in ("clean",) + ATTACK_NAMES:  # the printed table has a row per attack
        assert any(line.startswith(name + " ") for line in stdout.splitlines()), name


def test_results_schema(all_attacks):
    out, results, stdout = all_attacks
    assert set(results) == {"config", "complete", "clean", "attacks", "worst", "checks"}  # worst: more than one ran
    assert results["checks"]["warnings"] == [] and "zero_gradient" in results["checks"]["ran"]  # healthy: silent
    assert set(results["clean"]) == METRIC_KEYS
    config = results["config"]
    assert config["seed"] == 0 and len(config["checkpoint_sha256"]) == 64 and "torch" in config["versions"]
    for name, entry in results["attacks"].items():
        for stat in ("mean", "std", "min", "max"):
            assert set(entry[stat]) == METRIC_KEYS
        assert len(entry["runs"]) == 1 and entry["runs"][0] == entry["mean"]
        assert 0 < entry["max_perturbation"] <= EPS + 1e-4, name
        assert entry["attack_seconds"] > 0 and entry["images_attacked"] > 0
        assert entry["iterations"] == (1 if name == "FGSM" else 5)
    worst = results["worst"]
    assert worst["eps"] == EPS and worst["candidates"] == [f"{n} run 0" for n in ATTACK_NAMES]
    assert sum(worst["lowest_ap"].values()) > 0 and set(worst["metrics"]) == METRIC_KEYS
    for key in METRIC_KEYS:  # no better than the strongest attack on any metric
        assert worst["metrics"][key] <= min(e["mean"][key] for e in results["attacks"].values()) + 1e-12
    assert any(line.startswith("worst ") for line in stdout.splitlines())
    assert (out / "robustness.csv").exists() and (out / "robustness.png").exists()


def test_features_file(all_attacks, trained_checkpoint, synthetic_dataset, tmp_path):
    out, _, _ = all_attacks
    feats = np.load(out / "features.npz")
    for name in ATTACK_NAMES:
        adv = feats[f"query_features_adv_{name}"]
        assert adv.shape == feats["query_features"].shape
        assert not np.allclose(adv, feats["query_features"])
    # a query attack leaves the gallery as it was: same gallery features as a clean run
    run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "clean", *COMMON,
            "--out", tmp_path, "--save-features")
    clean = np.load(tmp_path / "features.npz")
    np.testing.assert_allclose(feats["gallery_features"], clean["gallery_features"], atol=1e-5)
    np.testing.assert_allclose(feats["query_features"], clean["query_features"], atol=1e-5)
    assert (out / "features.mat").exists()


def test_saved_pngs_respect_the_budget_and_load_as_a_dataset(all_attacks, synthetic_dataset):
    out, _, _ = all_attacks
    data = load_dataset(synthetic_dataset)
    tf = build_transforms(64, 32)
    saved = load_dataset(str(out / "images" / "FNA"))  # a dataset in the Market layout
    assert len(saved.query) == len(data.query) and len(saved.gallery) == len(data.gallery)
    worst = 0
    for sample in data.query:
        stem = os.path.splitext(os.path.basename(sample.path))[0]
        adv = np.asarray(Image.open(out / "images" / "FNA" / "query" / f"{stem}.png"), dtype=np.int16)
        clean = (tf(read_image(sample.path)).permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        worst = max(worst, int(np.abs(adv - clean).max()))
    assert 0 < worst <= EPS


def test_pictures_written(all_attacks):
    out, _, _ = all_attacks
    for name in ATTACK_NAMES:
        assert Image.open(out / f"perturbation_{name}.png").size[0] > 0
    assert len([f for f in os.listdir(out / "rankings") if f.endswith(".png")]) == len(ATTACK_NAMES)


def test_fna_at_least_as_strong_as_single_guide_ifgsm(trained_checkpoint, synthetic_dataset, tmp_path):
    def small_budget_map(*attack):
        out = tmp_path / attack[1]
        run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", *attack, "--eps", 2, *COMMON,
                "--out", out)
        return json.load(open(out / "results.json"))["attacks"][attack[1]]["mean"]["mAP"]

    assert small_budget_map("-a", "FNA") <= small_budget_map("-a", "IFGSM", "--single")


def test_gallery_attack_leaves_queries_unchanged(trained_checkpoint, synthetic_dataset, tmp_path):
    run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "SMA", "--gallery", *COMMON,
            "-n", 2, "--out", tmp_path, "--save-features")
    feats = np.load(tmp_path / "features.npz")
    results = json.load(open(tmp_path / "results.json"))
    entry = results["attacks"]["SMA"]
    assert entry["target"] == "gallery" and len(entry["runs"]) == 2
    assert "query_features_adv_SMA" not in feats.files
    adv = feats["gallery_features_adv_SMA"]
    # distractors (pid 0) are never attacked; identity images are
    distractor = feats["gallery_pids"] == 0
    assert distractor.any()
    np.testing.assert_allclose(adv[distractor], feats["gallery_features"][distractor], atol=1e-5)
    assert not np.allclose(adv[~distractor], feats["gallery_features"][~distractor])
    assert entry["images_attacked"] == int((~distractor).sum())
    assert entry["mean"]["mAP"] < results["clean"]["mAP"]


@pytest.mark.parametrize("args,needle", [
    (["-a", "BIM"], "unknown attack 'BIM'; valid attacks: FGSM, IFGSM"),
    (["-a", "SMA", "--single"], "--single: attack SMA has no single-guide form"),
    (["-a", "FNA", "--eps", "0"], "--eps 0"),
    (["-a", "FNA", "--eps", "300"], "--eps 300"),
    (["-a", "IFGSM", "--max_iter", "0"], "--max_iter 0"),
    (["-a", "FNA", "--eps", "2", "-1"], "--eps -1: must be in (0, 255]"),
    (["-a", "FNA", "--norm", "l3"], "--norm l3: expected one of linf, l2"),
    (["-a", "SMA", "--norm", "l2", "--eps", "0.5", "100"], "--eps 100: an L2 radius must be in (0, 78.38], the "
                                                            "diameter of a 64x32 image"),
])
def test_bad_attack_arguments(trained_checkpoint, synthetic_dataset, tmp_path, args, needle):
    out = tmp_path / "never"
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", *args, "--out", out, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def brute_worst_map(feats, names, eps_tag):
    """Worst-case mAP of one budget from the saved features, by sorting each query's gallery."""
    g = feats["gallery_features"]
    g_pids, g_cams = feats["gallery_pids"], feats["gallery_camids"]
    aps = []
    for q, (pid, cam) in enumerate(zip(feats["query_pids"], feats["query_camids"])):
        per_attack = []
        for name in names:
            dist = ((feats[f"query_features_adv_{name}_eps{eps_tag}"][q] - g) ** 2).sum(1)
            ranked = [g_pids[j] == pid for j in np.argsort(dist, kind="stable")
                      if g_pids[j] != -1 and not (g_pids[j] == pid and g_cams[j] == cam)]
            hits = [r + 1 for r, hit in enumerate(ranked) if hit]
            if hits:
                per_attack.append(np.mean([(((i - 1) / (r - 1)) if r > 1 else 1) / 2 + i / r / 2
                                           for i, r in enumerate(hits, 1)]))
        if per_attack:
            aps.append(min(per_attack))
    return float(np.mean(aps))


def test_budget_sweep_json_csv_figure_and_worst_case(trained_checkpoint, synthetic_dataset, tmp_path):
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "FGSM", "SMA",
                   "--eps", 1, 4, "--step", "auto", "--max_iter", 2, "--device", "cpu", "--workers", 0,
                   "--out", tmp_path, "--save-features")
    results = json.load(open(tmp_path / "results.json"))
    assert results["config"]["eps"] == [1, 4] and results["config"]["step"] == "auto"
    for name in ("FGSM", "SMA"):
        entries = results["attacks"][name]["by_eps"]
        assert [e["eps"] for e in entries] == [1, 4] and [e["step"] for e in entries] == [1.25, 5.0]
        assert all(0 < e["max_perturbation"] <= e["eps"] + 1e-4 for e in entries)
    worst = results["worst"]["by_eps"]
    assert [w["eps"] for w in worst] == [1, 4] and all(len(w["candidates"]) == 2 for w in worst)
    feats = np.load(tmp_path / "features.npz")
    for w, tag in zip(worst, ("1", "4")):
        assert w["metrics"]["mAP"] == pytest.approx(brute_worst_map(feats, ("FGSM", "SMA"), tag), abs=1e-6)
    assert sum(line.startswith("worst ") for line in proc.stdout.splitlines()) == 2  # a table per budget

    table = list(csv.reader(open(tmp_path / "robustness.csv")))
    assert table[0] == ["attack", "eps", "mAP", "rank1", "rank5", "rank10", "mINP"] and len(table) == 8
    expected = [(n, e["eps"], e["mean"]) for n in ("FGSM", "SMA") for e in results["attacks"][n]["by_eps"]]
    expected += [("worst", w["eps"], w["metrics"]) for w in worst] + [("clean", 0, results["clean"])]
    for row, (name, eps, m) in zip(table[1:], expected):
        assert row[:2] == [name, f"{eps:g}"]
        assert [float(v) for v in row[2:]] == pytest.approx([m[k] for k in ("mAP", "rank1", "rank5", "rank10",
                                                                              "mINP")], abs=1e-6)
    figure = report.robustness_figure(results)  # what robustness.png shows
    assert [len(ax.get_lines()) for ax in figure.axes] == [4, 4]  # FGSM, SMA, worst, clean
    assert list(figure.axes[0].get_lines()[2].get_ydata()) == pytest.approx([100 * w["metrics"]["mAP"]
                                                                              for w in worst])
    assert Image.open(tmp_path / "robustness.png").size[0] > 0


def test_l2_attacks_images_and_worst_over_runs(trained_checkpoint, synthetic_dataset, tmp_path):
    run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "SMA", "--norm", "l2",
            "--eps", 0.3, "-n", 2, "--max_iter", 2, "--device", "cpu", "--workers", 0, "--out", tmp_path,
            "--save-images")
    results = json.load(open(tmp_path / "results.json"))
    entry = results["attacks"]["SMA"]
    assert results["config"]["norm"] == "l2" and entry["step"] == pytest.approx(2.5 * 0.3 / 2)
    assert 0 < entry["max_perturbation"] <= 0.3  # the L2 norm of each image's perturbation
    # one attack, two runs: two candidates, a worst case, and a report
    assert results["worst"]["candidates"] == ["SMA run 0", "SMA run 1"]
    assert results["worst"]["metrics"]["mAP"] <= entry["min"]["mAP"] + 1e-12
    assert (tmp_path / "robustness.csv").exists()
    data, tf = load_dataset(synthetic_dataset), build_transforms(64, 32)
    largest = 0.0
    for sample in data.query:
        stem = os.path.splitext(os.path.basename(sample.path))[0]
        adv = np.asarray(Image.open(tmp_path / "images" / "SMA" / "query" / f"{stem}.png"), dtype=np.float64)
        clean = (tf(read_image(sample.path)).permute(1, 2, 0).numpy().astype(np.float64) * 255).round()
        largest = max(largest, np.sqrt(((adv - clean) ** 2).sum()))
    assert 0 < largest <= 0.3 * 255  # the 8-bit files keep the radius


def test_an_attack_that_draws_nothing_at_random_runs_once(trained_checkpoint, synthetic_dataset, tmp_path, capsys):
    """-n 2: IFGSM (no random start or guide here) would repeat itself, so it runs once, with a
    note and a mark in results.json; SMA (random start) runs twice."""
    import gen_adv
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "IFGSM", "SMA", "-n", "2",
                            "--eps", "2", "--max_iter", "2", "--device", "cpu", "--workers", "0", "--out",
                            str(tmp_path)])
    ifgsm, sma = results["attacks"]["IFGSM"], results["attacks"]["SMA"]
    assert len(ifgsm["runs"]) == 1 and ifgsm["deterministic"] is True
    assert len(sma["runs"]) == 2 and "deterministic" not in sma
    assert "note: IFGSM draws nothing at random here" in capsys.readouterr().out
    assert results["worst"]["candidates"] == ["IFGSM run 0", "SMA run 0", "SMA run 1"]
