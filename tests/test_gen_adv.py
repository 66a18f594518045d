"""gen_adv.py under attack, on a model trained briefly on the synthetic dataset.

One run of every attack at the default budget (eps 5/255, with images, features and
pictures saved) is shared by the tests. The test that compares two attacks uses a
small budget (2/255), where attacks are not all at chance level and their ordering
means something.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

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
    _, results, _ = all_attacks
    assert set(results) == {"config", "clean", "attacks"}
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
])
def test_bad_attack_arguments(trained_checkpoint, synthetic_dataset, tmp_path, args, needle):
    out = tmp_path / "never"
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", *args, "--out", out, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()
