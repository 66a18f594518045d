"""Universal perturbations: guides against brute force, MI-SGD and the meta update by hand,
the budget, uap.pt files, and gen_adv.py -a UAP / noise end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reid.attacks import UapConfig, UniversalGuides, attack_batch, learn_uap, load_uap, save_uap, universal_plan
from reid.attacks.universal import (apply_delta, batch_guides, centroid_assignment, kmeans_centroids, meta_step,
                                    mi_sgd_step, num_clusters, objective_grad, uap_objective)
from reid.runtime import ReidError
from tests.conftest import run_cli, tiny_model

EPS = 8.0


def test_apply_delta_stays_in_the_budget_and_in_range():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 16, 8, generator=gen)
    delta = (torch.rand(3, 16, 8, generator=gen) * 2 - 1) * EPS / 255
    adv = apply_delta(images, delta)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= EPS / 255 + 1e-7
    assert torch.equal(apply_delta(images, torch.zeros(3, 16, 8)), images)


def test_zero_delta_leaves_features_unchanged():
    model = tiny_model()
    images = torch.rand(6, 3, 16, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(images)
    pids = torch.tensor([1, 1, 2, 2, 3, 0])
    plan = universal_plan("UAP", clean, pids, torch.zeros(3, 16, 8))
    adv, feats = attack_batch(model, images, plan, range(6), eps=EPS)
    assert torch.equal(adv, images)
    assert torch.allclose(feats, clean, atol=1e-6)
    assert plan.num_attacked == 5            # the distractor (pid 0) is not attacked


def test_noise_is_per_image_and_independent_of_batches():
    model = tiny_model()
    images = torch.rand(6, 3, 16, 8, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    with torch.no_grad():
        clean = model(images)
    plan = universal_plan("noise", clean, torch.arange(1, 7), None, eps=EPS, seed=3)
    whole, _ = attack_batch(model, images, plan, range(6), eps=EPS)
    parts = torch.cat([attack_batch(model, images[s:s + 2], plan, range(s, s + 2), eps=EPS)[0]
                       for s in (0, 2, 4)])
    assert torch.equal(whole, parts)
    assert torch.allclose((whole - images).abs(), torch.full_like(images, EPS / 255), atol=1e-6)
    other, _ = attack_batch(model, images, universal_plan("noise", clean, torch.arange(1, 7), None, EPS, 4),
                            range(6), eps=EPS)
    assert not torch.equal(whole, other)


def test_centroid_assignment_and_kmeans_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 5, generator=gen)
    centroids = kmeans_centroids(feats, 6, seed=0)
    assert centroids.shape == (6, 5) and torch.allclose(centroids.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.equal(kmeans_centroids(feats, 6, seed=0), centroids)          # seeded
    pos, neg = centroid_assignment(feats, centroids)
    for i in range(len(feats)):
        cos = [float(F.cosine_similarity(feats[i], c, dim=0)) for c in centroids]
        assert pos[i] == int(np.argmax(cos)) and neg[i] == int(np.argmin(cos))
    assert num_clusters(2048) == 512 and num_clusters(100) == 25 and num_clusters(5) == 2


def test_batch_guides_against_brute_force():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(9, 4, generator=gen)
    pids = torch.tensor([1, 1, 1, 2, 2, 3, 4, 4, 4])    # identity 3 is alone
    pos, neg = batch_guides(feats, pids)
    for i in range(9):
        d = [float((feats[i] - feats[j]).norm()) for j in range(9)]
        same = [j for j in range(9) if pids[j] == pids[i]]
        other = [j for j in range(9) if pids[j] != pids[i]]
        assert pos[i] == max(same, key=lambda j: d[j])
        assert neg[i] == max(other, key=lambda j: d[j])
    assert pos[5] == 5                                    # alone: itself


def test_mi_sgd_step_by_hand():
    delta = torch.tensor([0.0, 0.02, -0.03, 0.01])
    momentum = torch.tensor([0.1, -0.2, 0.0, 0.0])
    grad = torch.tensor([1.0, 3.0, -2.0, -4.0])
    eps, alpha = 0.03, 0.01
    new_delta, new_m = mi_sgd_step(delta, momentum, grad, alpha, eps)
    # g / ||g||_1 = [0.1, 0.3, -0.2, -0.4]; m = [0.2, 0.1, -0.2, -0.4]; all signs [+, +, -, -]
    assert torch.allclose(new_m, torch.tensor([0.2, 0.1, -0.2, -0.4]))
    assert torch.allclose(new_delta, torch.tensor([0.01, 0.03, -0.03, 0.0]))   # 0.03 and -0.04 clipped


def test_meta_update_equals_the_formula_by_hand():
    """delta' = clip(delta + a sign(m + g_s/|g_s|_1)); g = g_s + g_meta(delta');
    m <- m + g/|g|_1; delta <- clip(delta + a sign(m)). L_meta(d) = -||d - t||^2, grad -2(d - t)."""
    delta = torch.tensor([0.0, 0.01, -0.01])
    momentum = torch.tensor([-0.5, 0.0, 0.2])
    grad_src = torch.tensor([2.0, -1.0, 1.0])
    target = torch.tensor([0.05, -0.05, 0.0])
    eps, alpha = 0.02, 0.01
    seen = []

    def meta_grad(d):
        seen.append(d.clone())
        return -2 * (d - target)

    new_delta, new_m = meta_step(delta, momentum, grad_src, meta_grad, alpha, eps)
    # look-ahead: m + g_s/4 = [0, -0.25, 0.45] -> signs [0, -, +] -> delta' = [0, 0, 0]
    assert torch.allclose(seen[0], torch.tensor([0.0, 0.0, 0.0]))
    # g = g_s + (-2)(0 - t) = [2.1, -1.1, 1.0]; |g|_1 = 4.2
    g = torch.tensor([2.1, -1.1, 1.0])
    expected_m = momentum + g / 4.2
    assert torch.allclose(new_m, expected_m)
    expected_delta = (delta + alpha * expected_m.sign()).clamp(-eps, eps)
    assert torch.allclose(new_delta, expected_delta)


class Linear(nn.Module):
    """f(x) = W flatten(x): gradients by hand."""

    def __init__(self, d_in, d_out, seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed)) * 0.1)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def test_guided_objective_gradient_by_hand():
    """guided loss, cosine: sum_b ||n(f_b) - g_b||^2 - ||n(f_b) - c_b||^2 with f_b = W(x_b + d).
    d/dd = sum_b J_n(f_b)^T 2 (c_b - g_b) W, J_n the Jacobian of L2 normalisation."""
    model = Linear(3 * 4 * 2, 5)
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 4, 2, generator=gen) * 0.5 + 0.25
    feats = torch.randn(12, 5, generator=gen)
    guides = UniversalGuides.build(feats, torch.arange(12) // 3, max_clusters=3, seed=0)
    rows = torch.tensor([0, 4, 7, 11])
    delta = (torch.rand(3, 4, 2, generator=gen) * 2 - 1) * 0.01
    config = UapConfig(loss="guided", eps=EPS)
    _, grad = objective_grad(model, config, images, rows, guides, delta)
    w = model.w.detach()
    expected = torch.zeros(3 * 4 * 2)
    for b, r in enumerate(rows.tolist()):
        f = w @ (images[b] + delta).flatten()
        norm = f.norm()
        n = f / norm
        jac = (torch.eye(5) - torch.outer(n, n)) / norm
        g, c = guides.feats[r], guides.centroids[guides.neg[r]]
        expected += w.T @ (jac.T @ (2 * (n - g) - 2 * (n - c)))
    assert torch.allclose(grad.flatten(), expected, atol=1e-5)


@pytest.mark.parametrize("loss", ["centroid", "batch", "guided"])
def test_learning_stays_in_budget_and_raises_the_objective(loss):
    torch.manual_seed(0)
    model = tiny_model(dim=8)
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(32, 3, 16, 8, generator=gen)
    pids = torch.arange(32) // 4
    with torch.no_grad():
        feats = model(images)
    guides = UniversalGuides.build(feats, pids, seed=0)
    loader = [(images[s:s + 8], pids[s:s + 8], pids[s:s + 8], torch.arange(s, s + 8)) for s in range(0, 32, 8)]
    config = UapConfig(loss=loss, eps=EPS, epochs=3)
    delta, history = learn_uap(model, loader, guides, config, (16, 8), log=lambda *_: None)
    assert delta.shape == (3, 16, 8) and delta.abs().max() <= EPS / 255 + 1e-7
    assert delta.abs().max() > 0
    with torch.no_grad():   # the objective over the same batches, clean and perturbed
        before = sum(float(uap_objective(config, model(x), rows, guides)) for x, _, _, rows in loader)
        after = sum(float(uap_objective(config, model(apply_delta(x, delta)), rows, guides))
                    for x, _, _, rows in loader)
    assert after > before
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[1]["alpha"] == pytest.approx(EPS / 10 * math.exp(-0.01))


def test_meta_learning_makes_two_passes_per_step():
    model = tiny_model(dim=8)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    gen = torch.Generator().manual_seed(6)
    images = torch.rand(16, 3, 16, 8, generator=gen)
    pids = torch.arange(16) // 2
    with torch.no_grad():
        guides = UniversalGuides.build(model(images), pids, seed=0)
    calls.clear()
    loader = [(images[:8], pids[:8], pids[:8], torch.arange(8)), (images[8:], pids[8:], pids[8:], torch.arange(8, 16))]
    learn_uap(model, loader, guides, UapConfig(eps=EPS, epochs=1), (16, 8), meta_loader=loader[:1],
              meta_guides=guides, log=lambda *_: None)
    assert len(calls) == 4                                  # 2 steps x (source + meta)


def test_uap_file_round_trip_and_resize(tmp_path):
    delta = (torch.rand(3, 16, 8) * 2 - 1) * EPS / 255
    path = tmp_path / "uap.pt"
    save_uap(path, delta, UapConfig(eps=EPS), dataset="x", source_checkpoint_sha256="0" * 64)
    loaded, record = load_uap(str(path))                   # weights_only=True inside
    assert torch.equal(loaded, delta) and record["eps"] == EPS and record["input_size"] == [16, 8]
    assert record["config"]["loss"] == "centroid" and record["dataset"] == "x"
    resized, record = load_uap(str(path), (32, 16))
    assert resized.shape == (3, 32, 16) and record["resized_from"] == [16, 8]
    assert resized.abs().max() <= EPS / 255 + 1e-7


def test_uap_file_errors(tmp_path):
    bad = tmp_path / "big.pt"
    torch.save({"delta": torch.full((3, 4, 2), 9 / 255), "eps": 8.0}, bad)
    with pytest.raises(ReidError, match="above its recorded eps"):
        load_uap(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"net": {}}, other)
    with pytest.raises(ReidError, match="is not a universal perturbation file"):
        load_uap(str(other))
    shape = tmp_path / "shape.pt"
    torch.save({"delta": torch.zeros(4, 4), "eps": 8.0}, shape)
    with pytest.raises(ReidError, match="expected \\(3, H, W\\)"):
        load_uap(str(shape))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ReidError, match="universal perturbation file"):
        load_uap(str(empty))
    with pytest.raises(ReidError, match="--uap-loss"):
        UapConfig(loss="nope")


COMMON = ["--device", "cpu", "--workers", 0, "--eps", EPS]


@pytest.fixture(scope="module")
def learned(trained_checkpoint, synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("uap")
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "UAP", "noise", "-n", 2,
                   "--uap-epochs", 2, "--uap-loss", "guided", *COMMON, "--out", out, "--save-features")
    return out, json.load(open(out / "results.json")), proc


def test_gen_adv_learns_saves_and_evaluates_a_uap(learned):
    out, results, proc = learned
    assert (out / "uap.pt").exists() and (out / "uap.png").exists()
    uap = results["attacks"]["UAP"]
    assert uap["uap"]["learned"] and uap["uap"]["config"]["loss"] == "guided"
    assert len(uap["uap"]["history"]) == 2 and uap["uap"]["source_checkpoint_sha256"]
    assert len(uap["runs"]) == 1 and uap["iterations"] == 0
    assert 0 < uap["max_perturbation"] <= EPS + 1e-4
    noise = results["attacks"]["noise"]
    assert len(noise["runs"]) == 2 and noise["runs"][0] != noise["runs"][1]
    assert noise["max_perturbation"] == pytest.approx(EPS, abs=1e-3)
    delta, record = load_uap(str(out / "uap.pt"))
    assert record["eps"] == EPS and record["input_size"] == [64, 32]
    assert "UAP epoch 1" in proc.stdout


def test_saved_uap_evaluates_to_the_same_numbers(learned, trained_checkpoint, synthetic_dataset, tmp_path):
    out, results, _ = learned
    run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "UAP", "--uap", out / "uap.pt",
            *COMMON, "--out", tmp_path, "--save-features")
    again = json.load(open(tmp_path / "results.json"))
    assert not again["attacks"]["UAP"]["uap"]["learned"]
    assert again["attacks"]["UAP"]["mean"] == pytest.approx(results["attacks"]["UAP"]["mean"], abs=1e-6)
    a, b = np.load(out / "features.npz"), np.load(tmp_path / "features.npz")
    np.testing.assert_allclose(a["query_features_adv_UAP"], b["query_features_adv_UAP"], atol=1e-5)


@pytest.mark.parametrize("extra,needle", [
    (["-a", "IFGSM", "--uap", "x.pt"], "--uap: only used with -a UAP"),
    (["-a", "UAP", "--uap-step", "nan"], "--uap-step nan"),
    (["-a", "UAP", "--uap-epochs", "0"], "--uap-epochs 0"),
    (["-a", "UAP", "--single"], "--single"),
])
def test_uap_flag_errors_are_one_line(trained_checkpoint, synthetic_dataset, tmp_path, extra, needle):
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", *extra, "--device", "cpu",
                   "--out", tmp_path / "o", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert needle in err


def test_bad_uap_file_through_the_cli(trained_checkpoint, synthetic_dataset, tmp_path):
    bad = tmp_path / "big.pt"
    torch.save({"delta": torch.full((3, 64, 32), 9 / 255), "eps": 8.0}, bad)
    proc = run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "UAP", "--uap", bad,
                   *COMMON, "--out", tmp_path / "o", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "above its recorded eps" in err
