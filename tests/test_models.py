import os
import random

import numpy as np

import pytest
import torch
import torch.nn as nn
import torchvision

from reid.models import build_model, load_model, rng_state, save_checkpoint, set_rng_state
from reid.models.archs import IMAGENET_WEIGHT_FILES
from reid.models.backbones import ReidNet, infer_config
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError
from reid.training import batch_hard_triplet_loss


class ReferenceClassification(nn.Module):
    """The paper's classification network, written independently of reid.models."""

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.BatchNorm1d(2048)
        self.fc = nn.Linear(2048, num_classes)


class ReferenceTriplet(nn.Module):
    def __init__(self, embedding_size):
        super().__init__()
        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.Sequential(nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, embedding_size))


def test_state_dict_layout_matches_reference():
    ours = ReidNet("classif", num_classes=11).state_dict()
    ref = ReferenceClassification(11).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)
    assert set(ReidNet("triplet", embedding_size=128).state_dict()) == set(ReferenceTriplet(128).state_dict())


def test_model_normalises_inside_and_returns_features():
    torch.manual_seed(0)
    model = ReidNet("classif", num_classes=5).eval()
    x = torch.rand(2, 3, 64, 32)
    feats = model(x)
    assert feats.shape == (2, 2048) and model.fc(feats).shape == (2, 5)
    # the first layer is ImageNet normalisation of [0, 1] pixels
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), (x - mean) / std)
    assert ReidNet("triplet", embedding_size=64).eval()(x).shape == (2, 64)


@pytest.mark.parametrize("ref,kind,expected", [(lambda: ReferenceClassification(13), "classif", 13),
                                               (lambda: ReferenceTriplet(256), "triplet", 256)])
def test_reference_checkpoint_loads_strictly(tmp_path, ref, kind, expected):
    net = ref()
    opt = torch.optim.Adam(net.parameters())
    path = str(tmp_path / "ref.th")
    torch.save({"net": net.state_dict(), "map": 0.5, "epoch": 59, "optim": opt.state_dict()}, path)
    model, ckpt = load_model(path)
    assert model.kind == kind and ckpt["epoch"] == 59
    assert (model.num_classes if kind == "classif" else model.embedding_size) == expected
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_kind_and_embedding_mismatch_are_errors(tmp_path):
    path = str(tmp_path / "t.th")
    torch.save({"net": ReferenceTriplet(64).state_dict(), "map": 0.0, "epoch": 0, "optim": None}, path)
    with pytest.raises(ReidError, match="triplet model but --classif"):
        load_model(path, kind="classif")
    with pytest.raises(ReidError, match="embedding size 64 but -e 128"):
        load_model(path, kind="triplet", embedding_size=128)
    with pytest.raises(ReidError, match="does not exist"):
        load_model(str(tmp_path / "missing.th"))
    (tmp_path / "junk.th").write_text("nope")
    with pytest.raises(ReidError, match="junk.th is not a checkpoint"):
        load_model(str(tmp_path / "junk.th"))
    with pytest.raises(ReidError, match="neither"):
        infer_config({"foo": torch.zeros(1)})


def test_checkpoint_round_trip_is_atomic_and_complete(tmp_path):
    torch.manual_seed(1)
    model = ReidNet("classif", num_classes=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = str(tmp_path / "m.th")
    state = rng_state()
    save_checkpoint(path, model, 0.25, 3, opt, best_map=0.3, input_size=[64, 32], rng=state)
    assert os.listdir(tmp_path) == ["m.th"]  # no temporary file left behind
    ckpt = read_checkpoint(path)
    assert set(ckpt) >= {"net", "map", "epoch", "optim", "model", "best_map", "input_size", "rng"}
    assert ckpt["map"] == 0.25 and ckpt["epoch"] == 3 and ckpt["model"]["num_classes"] == 4
    loaded, _ = load_model(path, kind="classif")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # RNG state survives weights_only loading and restores the same draws
    def draws():
        return torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random()

    set_rng_state(state)
    expected = draws()
    set_rng_state(ckpt["rng"])
    assert draws() == expected


def test_pretrained_from_cached_file(tmp_path, monkeypatch):
    torch.manual_seed(3)
    imagenet = torchvision.models.resnet50(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cache / IMAGENET_WEIGHT_FILES[0])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = build_model("classif", num_classes=3, pretrained=True)
    ref = imagenet.state_dict()
    for k, v in model.backbone.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, ref[k]), k
    # and from an explicit path
    other = tmp_path / "w.pth"
    torch.save(imagenet.state_dict(), other)
    model = build_model("triplet", embedding_size=32, pretrained_path=str(other))
    assert torch.equal(model.backbone.conv1.weight, ref["conv1.weight"])


def test_pretrained_offline_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    with pytest.raises(ReidError) as err:
        build_model("classif", num_classes=3, pretrained=True)
    msg = str(err.value)
    assert "--pretrained-path" in msg and str(tmp_path / "empty" / "checkpoints") in msg and "\n" not in msg
    with pytest.raises(ReidError, match="no such file"):
        build_model("classif", num_classes=3, pretrained_path=str(tmp_path / "nope.pth"))


def brute_force_batch_hard(features, labels, margin, soft):
    losses = []
    for a in range(len(labels)):
        d = [torch.dist(features[a], features[j]) for j in range(len(labels))]
        pos = max(d[j] for j in range(len(labels)) if labels[j] == labels[a])
        neg = min(d[j] for j in range(len(labels)) if labels[j] != labels[a])
        x = pos - neg
        losses.append(torch.log1p(torch.exp(x)) if soft else torch.clamp(x + margin, min=0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("soft,margin", [(False, 10.0), (True, 0.0), (False, 0.3)])
def test_batch_hard_triplet_against_loops(soft, margin):
    torch.manual_seed(0)
    feats = torch.randn(12, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    got = batch_hard_triplet_loss(feats, labels, margin=margin, soft_margin=soft)
    want = brute_force_batch_hard(feats, labels, margin, soft)
    assert torch.allclose(got, want, atol=1e-6)
    feats.requires_grad_(True)
    batch_hard_triplet_loss(feats, labels, margin=margin, soft_margin=soft).backward()
    assert torch.isfinite(feats.grad).all()
