"""gen_adv.py --transfer-to: the surrogate's adversarial images evaluated on other models."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reid.evaluation.transfer
from reid.data import build_transforms, load_dataset, read_image
from reid.evaluation.report import entries
from reid.metrics import retrieval_metrics
from reid.models import load_model
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError

COMMON = ["--max_iter", "3", "--eps", "3", "--seed", "3", "--device", "cpu", "--workers", "0"]


@pytest.mark.parametrize("extra", [["-a", "SMA", "FNA", "-n", "2"], ["-a", "FNA", "--cosine"],
                                   ["-a", "FNA", "IFGSM", "--eps", "2", "4"]])
def test_surrogate_as_its_own_target_reproduces_white_box(trained_checkpoint, synthetic_dataset, tmp_path, capsys,
                                                          extra):
    import gen_adv
    ckpt = str(trained_checkpoint / "m.th")
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", *COMMON, *extra, "--out",
                            str(tmp_path), "--transfer-to", ckpt])
    own = results["transfer"][ckpt]
    assert own["clean"] == results["clean"]
    for name, value in results["attacks"].items():  # every budget, every run, every metric, to the last bit
        mine = entries(own["attacks"][name])
        assert len(mine) == len(entries(value)) and set(mine[0]) == {"mean", "std", "runs", "eps"}
        for m, e in zip(mine, entries(value)):
            assert (m["runs"], m["mean"], m["eps"]) == (e["runs"], e["mean"], e["eps"])
            assert m["mean"]["mAP"] < own["clean"]["mAP"]
    if "worst" in results:  # the worst case per query, over the same candidates, on the target too
        assert [w["metrics"] for w in entries(own["worst"])] == [w["metrics"] for w in entries(results["worst"])]
        assert [w["eps"] for w in entries(own["worst"])] == [w["eps"] for w in entries(results["worst"])]
    else:
        assert "worst" not in own
    target = results["config"]["transfer_targets"][ckpt]
    assert target["adversarial_images_resized_from"] is None and target["input_size"] == [64, 32]
    assert json.load(open(tmp_path / "results.json"))["transfer"] == results["transfer"]
    assert not (tmp_path / "images").exists()  # nothing written for the transfer
    table = capsys.readouterr().out.split("white-box (this model) and transfer")[1].splitlines()
    assert table[1].split() == ["white-box", "m.th"]
    fna = entries(results["attacks"]["FNA"])[0]["mean"]
    row = next(line for line in table if line.startswith("FNA "))
    assert row.split() == ["FNA"] + [f"{100 * fna['mAP']:.2f}", "/", f"{100 * fna['rank1']:.2f}"] * 2
    if "worst" in results:
        worst = entries(results["worst"])[0]["metrics"]
        row = next(line for line in table if line.startswith("worst "))
        assert row.split() == ["worst"] + [f"{100 * worst['mAP']:.2f}", "/", f"{100 * worst['rank1']:.2f}"] * 2


def test_transfer_to_a_model_of_another_input_size(trained_checkpoint, synthetic_dataset, tmp_path, monkeypatch):
    """The target reads 96x48: every image reaches it as the surrogate's 64x32 input resized,
    the clean baseline as the adversarial images (so the column measures the attack, not the
    resize); images the attack leaves alone (gallery distractors and junk) keep their clean
    features; the target's metrics at its own size are recorded beside the baseline. Checked
    against the target applied directly."""
    import gen_adv
    ckpt = read_checkpoint(str(trained_checkpoint / "m.th"))
    ckpt["input_size"] = [96, 48]  # the same weights, read at another size
    target_path = str(tmp_path / "big.th")
    torch.save(ckpt, target_path)
    seen = []
    hook = reid.evaluation.transfer.TransferFeatures.__call__

    def spy(self, clean, adv, indices, attacked):
        seen.append((adv.clone(), indices.clone(), attacked.clone()))
        return hook(self, clean, adv, indices, attacked)

    monkeypatch.setattr(reid.evaluation.transfer.TransferFeatures, "__call__", spy)
    out = tmp_path / "out"
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "FNA", "--gallery", *COMMON,
                            "--save-features", "--out", str(out), "--transfer-to", target_path])
    info = results["config"]["transfer_targets"][target_path]
    assert info["adversarial_images_resized_from"] == [64, 32] and info["input_size"] == [96, 48]

    target, _ = load_model(target_path)
    target.eval()
    data = load_dataset(synthetic_dataset)
    big, small = build_transforms(96, 48), build_transforms(64, 32)
    feats = np.load(out / "features.npz")

    def resized(x):
        return F.interpolate(x, size=(96, 48), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)

    with torch.no_grad():
        clean_q = target(resized(torch.stack([small(read_image(s.path)) for s in data.query])))
        clean_g = target(resized(torch.stack([small(read_image(s.path)) for s in data.gallery])))
        native_q = target(torch.stack([big(read_image(s.path)) for s in data.query]))
        native_g = target(torch.stack([big(read_image(s.path)) for s in data.gallery]))
        np.testing.assert_allclose(feats["transfer0_query_features"], clean_q.numpy(), atol=2e-4)
        np.testing.assert_allclose(feats["transfer0_gallery_features"], clean_g.numpy(), atol=2e-4)
        np.testing.assert_allclose(feats["transfer0_query_features_native"], native_q.numpy(), atol=2e-4)
        np.testing.assert_allclose(feats["transfer0_gallery_features_native"], native_g.numpy(), atol=2e-4)
        expected = clean_g.clone()
        adv = torch.cat([a for a, _, _ in seen])
        indices = torch.cat([i for _, i, _ in seen])
        attacked = torch.cat([m for _, _, m in seen])
        # attacked images: resized, then the target; the others keep their clean features
        expected[indices[attacked]] = target(resized(adv[attacked]))
    assert attacked.any() and not attacked.all()  # distractor and junk queries are not attacked
    assert sorted(indices.tolist()) == list(range(len(data.gallery)))
    adv_feats = feats["transfer0_gallery_features_adv_FNA"]
    np.testing.assert_allclose(adv_feats, expected.numpy(), atol=2e-4)
    entry = results["transfer"][target_path]
    pids, cams = np.array([s.pid for s in data.query]), np.array([s.camid for s in data.query])
    gpids, gcams = np.array([s.pid for s in data.gallery]), np.array([s.camid for s in data.gallery])
    assert entry["attacks"]["FNA"]["runs"][0] == retrieval_metrics(
        torch.from_numpy(feats["transfer0_query_features"]), torch.from_numpy(adv_feats), pids, gpids, cams, gcams)
    assert entry["clean"]["mAP"] == pytest.approx(
        retrieval_metrics(clean_q, clean_g, pids, gpids, cams, gcams)["mAP"], abs=1e-4)
    assert entry["clean_native"]["mAP"] == pytest.approx(
        retrieval_metrics(native_q, native_g, pids, gpids, cams, gcams)["mAP"], abs=1e-4)


@pytest.mark.parametrize("size", [[96, 48], [48, 24]])
def test_an_imperceptible_attack_leaves_a_target_of_another_size_at_its_baseline(
        trained_checkpoint, synthetic_dataset, tmp_path, size):
    """Noise of 0.001/255 does nothing, whatever the target's input size: the transfer column
    equals the target's baseline (the hostile trial saw a 96x48 target fall from 11.48 to 8.77
    mAP here when the baseline was taken at its own size)."""
    import gen_adv
    ckpt = read_checkpoint(str(trained_checkpoint / "m.th"))
    ckpt["input_size"] = size
    target_path = str(tmp_path / "other.th")
    torch.save(ckpt, target_path)
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "noise", "--eps", "0.001",
                            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "o"),
                            "--transfer-to", target_path])
    entry = results["transfer"][target_path]
    for key in ("mAP", "rank1", "mINP"):
        assert entry["attacks"]["noise"]["mean"][key] == pytest.approx(entry["clean"][key], abs=2e-3)
    assert entry["clean_native"] != entry["clean"]  # the resize alone moves the target: both are recorded


def test_transfer_flag_errors(trained_checkpoint, synthetic_dataset, tmp_path):
    import gen_adv
    base = [str(trained_checkpoint), str(trained_checkpoint), "m.th", "-a", "FNA", "--transfer-to"]
    ckpt = str(trained_checkpoint / "m.th")
    with pytest.raises(ReidError, match=r"^--transfer-to .*nope.th: no such checkpoint file$"):
        gen_adv.parse_args(base + [str(tmp_path / "nope.th")])
    with pytest.raises(ReidError, match=r"^--transfer-to .*: is a folder, expected a checkpoint file$"):
        gen_adv.parse_args(base + [str(tmp_path)])
    with pytest.raises(ReidError, match=r"^--transfer-to .*m.th: given twice$"):
        gen_adv.parse_args(base + [ckpt, ckpt])
    (tmp_path / "junk.th").write_text("not a checkpoint")
    out = tmp_path / "out"
    with pytest.raises(ReidError, match=r"junk.th is not a checkpoint"):
        gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "--device", "cpu", "--out", str(out),
                      "--transfer-to", str(tmp_path / "junk.th")])
    assert not out.exists()  # stopped before any feature was extracted


def test_worst_case_on_a_target_is_taken_over_its_own_features(trained_checkpoint, synthetic_dataset, tmp_path):
    """Another model as the target (the weights read at 96x48): its worst case per query is the
    lowest AP among ITS features under each attack, not the surrogate's."""
    import gen_adv
    from reid.metrics import pairwise_distance
    from reid.metrics import evaluate_rank

    ckpt = read_checkpoint(str(trained_checkpoint / "m.th"))
    ckpt["input_size"] = [96, 48]
    target_path = str(tmp_path / "big.th")
    torch.save(ckpt, target_path)
    out = tmp_path / "out"
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "FNA", "SMA", *COMMON,
                            "--save-features", "--out", str(out), "--transfer-to", target_path])
    feats = np.load(out / "features.npz")
    data = load_dataset(synthetic_dataset)
    labels = [np.array([getattr(s, k) for s in split]) for split in (data.query, data.gallery) for k in ("pid", "camid")]
    gallery = torch.from_numpy(feats["transfer0_gallery_features"])
    aps = [evaluate_rank(pairwise_distance(torch.from_numpy(feats[f"transfer0_query_features_adv_{a}"]), gallery),
                         labels[0], labels[2], labels[1], labels[3], per_query=True)["per_query"]["ap"]
           for a in ("FNA", "SMA")]
    lowest = np.fmin(*aps)                     # NaN for a query without a valid match
    worst = results["transfer"][target_path]["worst"]
    assert worst["metrics"]["mAP"] == pytest.approx(np.nanmean(lowest), abs=1e-9)
    assert worst["metrics"]["mAP"] != pytest.approx(results["worst"]["metrics"]["mAP"], abs=1e-6)
    assert worst["candidates"] == ["FNA run 0", "SMA run 0"] and sum(worst["lowest_ap"].values()) > 0


def test_ensemble_guided_loss_is_the_mean_of_its_members_losses():
    """The guided loss on the ensemble's features, with guides that are ensemble features too,
    equals (value and gradient) the mean over members of the loss on each member's normalised
    features against its own normalised guides, by brute force."""
    from conftest import tiny_model
    from reid.attacks.loss import GuidedLoss, pack_guides
    from reid.evaluation.transfer import Ensemble

    # in float64: the loss is a difference of near-equal terms, which float32 leaves 1e-5 apart
    members = [tiny_model(seed=0, dim=16).double(), tiny_model(seed=1, dim=8).double(),
               tiny_model(seed=2, dim=16).double()]
    ensemble = Ensemble(members).eval()
    torch.manual_seed(0)
    x, guide_images = torch.rand(4, 3, 32, 16, dtype=torch.float64), torch.rand(4 * 3, 3, 32, 16, dtype=torch.float64)
    weights = torch.tensor([[1.0, -0.5, 0.0]], dtype=torch.float64).repeat(4, 1)

    def loss_of(x, model):
        with torch.no_grad():
            guides = model(guide_images).view(4, 3, -1)
        return GuidedLoss()(model(x), pack_guides(guides, weights))

    def normalised(m):
        return lambda images: F.normalize(m(images), dim=1)

    xe = x.clone().requires_grad_(True)
    value = loss_of(xe, ensemble)
    value.backward()
    xm = x.clone().requires_grad_(True)
    mean = sum(loss_of(xm, normalised(m)) for m in members) / len(members)
    mean.backward()
    assert value.item() == pytest.approx(mean.item(), rel=1e-9)
    torch.testing.assert_close(xe.grad, xm.grad, rtol=1e-7, atol=1e-12)
    assert ensemble(x).shape == (4, 40) and torch.allclose(ensemble(x).norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_surrogates_attack_the_ensemble_and_record_it(trained_checkpoint, synthetic_dataset, tmp_path):
    """gen_adv.py --surrogates: the white-box numbers are the ensemble's (its clean metrics
    against the members' features computed directly, one member read at another size), the
    attack lowers them, a held-out --transfer-to target is evaluated, and results.json records
    the members."""
    import gen_adv
    ckpt = read_checkpoint(str(trained_checkpoint / "m.th"))
    ckpt["input_size"] = [96, 48]
    other = str(tmp_path / "big.th")
    torch.save(ckpt, other)
    main = str(trained_checkpoint / "m.th")
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "FNA", *COMMON,
                            "--out", str(tmp_path / "out"), "--surrogates", other, "--transfer-to", main])
    member = results["config"]["surrogates"][other]
    assert member["input_size"] == [96, 48] and member["adversarial_images_resized_from"] == [64, 32]
    assert [m["arch"] for m in results["config"]["model"]["ensemble"]] == ["resnet50", "resnet50"]
    assert results["config"]["ensemble_sha256"] != results["config"]["checkpoint_sha256"]

    model, _ = load_model(main)
    model.eval()
    data = load_dataset(synthetic_dataset)
    small = build_transforms(64, 32)

    def features(samples):
        x = torch.stack([small(read_image(s.path)) for s in samples])
        big = F.interpolate(x, size=(96, 48), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return torch.cat([F.normalize(model(x), dim=1), F.normalize(model(big), dim=1)], dim=1) / 2 ** 0.5

    with torch.no_grad():
        q, g = features(data.query), features(data.gallery)
    pids, cams = np.array([s.pid for s in data.query]), np.array([s.camid for s in data.query])
    gpids, gcams = np.array([s.pid for s in data.gallery]), np.array([s.camid for s in data.gallery])
    expected = retrieval_metrics(q, g, pids, gpids, cams, gcams)
    assert results["clean"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-4)
    assert results["attacks"]["FNA"]["mean"]["mAP"] < results["clean"]["mAP"]
    held_out = results["transfer"][main]
    assert held_out["attacks"]["FNA"]["mean"]["mAP"] < held_out["clean"]["mAP"]


def test_surrogates_flag_errors(trained_checkpoint, tmp_path):
    import gen_adv
    base = [str(trained_checkpoint), str(trained_checkpoint), "m.th", "-a", "FNA", "--surrogates"]
    ckpt = str(trained_checkpoint / "m.th")
    with pytest.raises(ReidError, match=r"^--surrogates .*nope.th: no such checkpoint file$"):
        gen_adv.parse_args(base + [str(tmp_path / "nope.th")])
    with pytest.raises(ReidError, match=r"^--surrogates .*m.th: given twice$"):
        gen_adv.parse_args(base + [ckpt, ckpt])
