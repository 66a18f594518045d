"""gen_adv.py --transfer-to: the surrogate's adversarial images evaluated on other models."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reid.transfer
from reid.checkpoint import load_model, read_checkpoint
from reid.data import build_transforms, load_dataset, read_image
from reid.engine import retrieval_metrics
from reid.utils import ReidError

COMMON = ["--max_iter", "3", "--eps", "3", "--seed", "3", "--device", "cpu", "--workers", "0"]


@pytest.mark.parametrize("extra", [["-a", "SMA", "FNA", "-n", "2"], ["-a", "FNA", "--cosine"]])
def test_surrogate_as_its_own_target_reproduces_white_box(trained_checkpoint, synthetic_dataset, tmp_path, capsys,
                                                          extra):
    import gen_adv
    ckpt = str(trained_checkpoint / "m.th")
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", *COMMON, *extra, "--out",
                            str(tmp_path), "--transfer-to", ckpt])
    own = results["transfer"][ckpt]
    assert own["clean"] == results["clean"]
    for name in results["attacks"]:  # every run, every metric, to the last bit
        assert own["attacks"][name]["runs"] == results["attacks"][name]["runs"]
        assert own["attacks"][name]["mean"] == results["attacks"][name]["mean"]
        assert own["attacks"][name]["mean"]["mAP"] < own["clean"]["mAP"]
    assert set(own["attacks"]["FNA"]) == {"mean", "std", "runs"}
    target = results["config"]["transfer_targets"][ckpt]
    assert target["adversarial_images_resized_from"] is None and target["input_size"] == [64, 32]
    assert json.load(open(tmp_path / "results.json"))["transfer"] == results["transfer"]
    assert not (tmp_path / "images").exists()  # nothing written for the transfer
    table = capsys.readouterr().out.split("white-box (this model) and transfer")[1].splitlines()
    assert table[1].split() == ["white-box", "m.th"]
    fna = results["attacks"]["FNA"]["mean"]
    row = next(line for line in table if line.startswith("FNA "))
    assert row.split() == ["FNA"] + [f"{100 * fna['mAP']:.2f}", "/", f"{100 * fna['rank1']:.2f}"] * 2


def test_transfer_to_a_model_of_another_input_size(trained_checkpoint, synthetic_dataset, tmp_path, monkeypatch):
    """The target reads 96x48: its clean features come from the images at 96x48, the
    adversarial ones from the surrogate's 64x32 adversarial images resized; images the attack
    leaves alone (gallery distractors and junk) keep their clean features. Checked against the
    target applied directly."""
    import gen_adv
    ckpt = read_checkpoint(str(trained_checkpoint / "m.th"))
    ckpt["input_size"] = [96, 48]  # the same weights, read at another size
    target_path = str(tmp_path / "big.th")
    torch.save(ckpt, target_path)
    seen = []
    hook = reid.transfer.TransferFeatures.__call__

    def spy(self, clean, adv, indices, attacked):
        seen.append((adv.clone(), indices.clone(), attacked.clone()))
        return hook(self, clean, adv, indices, attacked)

    monkeypatch.setattr(reid.transfer.TransferFeatures, "__call__", spy)
    out = tmp_path / "out"
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "FNA", "--gallery", *COMMON,
                            "--save-features", "--out", str(out), "--transfer-to", target_path])
    info = results["config"]["transfer_targets"][target_path]
    assert info["adversarial_images_resized_from"] == [64, 32] and info["input_size"] == [96, 48]

    target, _ = load_model(target_path)
    target.eval()
    data = load_dataset(synthetic_dataset)
    big = build_transforms(96, 48)
    feats = np.load(out / "features.npz")
    with torch.no_grad():
        clean_q = target(torch.stack([big(read_image(s.path)) for s in data.query]))
        clean_g = target(torch.stack([big(read_image(s.path)) for s in data.gallery]))
        np.testing.assert_allclose(feats["transfer0_query_features"], clean_q.numpy(), atol=2e-4)
        np.testing.assert_allclose(feats["transfer0_gallery_features"], clean_g.numpy(), atol=2e-4)
        expected = clean_g.clone()
        adv = torch.cat([a for a, _, _ in seen])
        indices = torch.cat([i for _, i, _ in seen])
        attacked = torch.cat([m for _, _, m in seen])
        # attacked images: resized, then the target; the others keep their clean features
        resized = F.interpolate(adv[attacked], size=(96, 48), mode="bilinear", align_corners=False,
                                antialias=True).clamp(0, 1)
        expected[indices[attacked]] = target(resized)
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
