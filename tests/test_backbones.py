"""Backbones other than ResNet50: torchvision's ResNet101, ResNeXt50, DenseNet121 and timm models.

Every backbone builds with both heads, trains one step and round-trips a checkpoint; a
checkpoint of each evaluates through gen_adv.py without being told its architecture; a
small timm ViT goes end to end through train.py and gen_adv.py. Inputs are 64x32.
"""

import json
import os
import shutil

import pytest
import torch
import torch.nn as nn
import torchvision

from reid.data import build_transforms, eval_loader, load_dataset
from reid.evaluation import evaluate
from reid.models import build_model, load_model, save_checkpoint
from reid.models.archs import TORCHVISION_ARCHS
from reid.models.backbones import ReidNet
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError
from reid.training import Objective
from tests.conftest import SMALL, run_cli

try:
    import timm
except ImportError:  # the suite runs without timm; its tests say why they are skipped
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install 'timm>=1.0', or make)")

TV = list(TORCHVISION_ARCHS)
TIMM_VIT = "timm:test_vit"        # timm's smallest ViT (a fixed input size: built for 64x32 here)
TIMM_CNN = "timm:test_resnet"
# the pooled feature size each torchvision backbone's ImageNet classifier reads
TV_DIMS = {"resnet50": 2048, "resnet101": 2048, "resnext50_32x4d": 2048, "densenet121": 1024}
ALL = TV + [pytest.param(TIMM_VIT, marks=needs_timm), pytest.param(TIMM_CNN, marks=needs_timm)]


@pytest.mark.parametrize("arch", ALL)
def test_backbone_trains_a_step_round_trips_and_evaluates(arch, synthetic_dataset, tmp_path):
    """One training step moves the whole network; the checkpoint rebuilds it alone (gen_adv.py
    gets no --arch); its clean metrics are those of the model evaluated directly, and an
    attack runs on its feature size."""
    import gen_adv
    torch.manual_seed(0)
    model = build_model("classif", num_classes=12, arch=arch, input_size=(64, 32))
    images, labels = torch.rand(4, 3, 64, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    params = dict(model.named_parameters())
    first = next(k for k in params if k.startswith("backbone."))  # the stem, furthest from the loss
    before = {k: params[k].detach().clone() for k in (first, "fc.weight")}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss, _ = Objective("classif")(model, images, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for k, v in before.items():  # the step moved the classifier and the whole backbone, down to its stem
        assert not torch.equal(params[k], v), k
    model.eval()
    feats = model(images)
    assert torch.isfinite(feats).all()
    assert feats.shape == (4, model.feature_dim) and model.fc(feats).shape == (4, 12)
    if arch in TV_DIMS:
        assert model.feature_dim == TV_DIMS[arch]

    path = str(tmp_path / "m.th")
    save_checkpoint(path, model, 0.5, 0, input_size=[64, 32])
    assert read_checkpoint(path)["model"]["arch"] == arch
    loaded, _ = load_model(path)  # from the checkpoint alone
    assert loaded.arch == arch and type(loaded.backbone) is type(model.backbone)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(loaded.eval()(images), feats)

    out = tmp_path / "out"
    gen_adv.main([str(tmp_path), synthetic_dataset, "m.th", "-a", "FGSM", "--eps", "2",
                  "--device", "cpu", "--workers", "0", "--out", str(out)])
    results = json.load(open(out / "results.json"))
    assert results["config"]["model"]["arch"] == arch
    data = load_dataset(synthetic_dataset)
    tf = build_transforms(64, 32)
    direct = evaluate(model, eval_loader(data.query, tf, 64), eval_loader(data.gallery, tf, 64), "cpu")
    assert results["clean"] == pytest.approx(direct, abs=1e-6)
    entry = results["attacks"]["FGSM"]
    assert entry["images_attacked"] > 0 and 0 < entry["max_perturbation"] <= 2 + 1e-4


@pytest.mark.parametrize("arch", ["densenet121", pytest.param(TIMM_VIT, marks=needs_timm)])
def test_triplet_head(arch, tmp_path):
    model = ReidNet("triplet", embedding_size=24, arch=arch, input_size=(64, 32)).eval()
    assert model(torch.rand(3, 3, 64, 32)).shape == (3, 24)
    head = [m for m in model.backbone.modules() if isinstance(m, nn.Sequential) and len(m) == 3][-1]
    assert isinstance(head[0], nn.BatchNorm1d) and head[0].num_features == model.feature_dim
    assert isinstance(head[2], nn.Linear) and head[2].out_features == 24
    path = str(tmp_path / "t.th")
    save_checkpoint(path, model, 0.0, 0)
    loaded, _ = load_model(path, kind="triplet", embedding_size=24)
    assert loaded.embedding_size == 24 and loaded.arch == arch
    with pytest.raises(ReidError, match="embedding size 24 but -e 32"):
        load_model(path, kind="triplet", embedding_size=32)


def test_densenet_layout_is_torchvision_with_the_head_in_the_classifier_slot():
    ours = set(ReidNet("classif", num_classes=7, arch="densenet121").state_dict())
    tv = {f"backbone.{k}" for k in torchvision.models.densenet121(weights=None).state_dict()}
    classifier = {"backbone.classifier.weight", "backbone.classifier.bias"}
    neck = {f"backbone.classifier.{k}" for k in nn.BatchNorm1d(4).state_dict()}
    assert ours == (tv - classifier) | neck | {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("arch", TV)
def test_pretrained_from_torchvision_cache(arch, tmp_path, monkeypatch):
    """Each backbone reads its own IMAGENET1K_V1 file of torchvision's cache; DenseNet's has
    the old 'norm.1' key names of the released file."""
    spec = TORCHVISION_ARCHS[arch]
    torch.manual_seed(5)
    imagenet = spec.build(weights=None)
    state = imagenet.state_dict()
    if arch == "densenet121":  # the released file's names
        state = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in state.items()}
        assert any(".norm.1." in k for k in state)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / os.path.basename(spec.url))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = build_model("classif", num_classes=3, pretrained=True, arch=arch)
    ref = imagenet.state_dict()
    own = model.backbone.state_dict()
    compared = [k for k in ref if not k.startswith(spec.classifier + ".")]
    assert all(torch.equal(own[k], ref[k]) for k in compared) and len(compared) > 100
    (cache / os.path.basename(spec.url)).unlink()
    with pytest.raises(ReidError) as err:
        build_model("classif", num_classes=3, pretrained=True, arch=arch)
    msg = str(err.value)
    assert spec.url in msg and str(cache) in msg and "--pretrained-path" in msg and "\n" not in msg
    if arch == "densenet121":  # another backbone's weights
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "other.pth")
        with pytest.raises(ReidError, match=r"other.pth is not a torchvision DenseNet121 state dict \(missing"):
            build_model("classif", num_classes=3, pretrained_path=str(tmp_path / "other.pth"), arch=arch)


@needs_timm
def test_pretrained_timm_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """timm's own cache, read offline: <cache>/models--<org>--<repo>/snapshots/<rev>/model.safetensors
    (ViT weights at 160x160, position embeddings resampled by timm to 64x32)."""
    import huggingface_hub
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = timm.create_model("test_vit", num_classes=0)
    repo = timm.models.get_pretrained_cfg("test_vit").hf_hub_id
    snapshot = tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    model = build_model("classif", num_classes=3, pretrained=True, arch=TIMM_VIT, input_size=(64, 32))
    blocks = model.backbone.blocks
    assert torch.equal(blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.backbone.pos_embed.shape[1] == 1 + (64 // 16) * (32 // 16)
    assert model.config()["mean"] == list(source.pretrained_cfg["mean"])  # timm's normalisation
    shutil.rmtree(tmp_path / "hf")
    with pytest.raises(ReidError) as err:
        build_model("classif", num_classes=3, pretrained=True, arch=TIMM_VIT, input_size=(64, 32))
    msg = str(err.value)
    assert repo in msg and str(tmp_path / "hf") in msg and "--pretrained-path" in msg and "\n" not in msg
    # --pretrained-path: a plain torch file of the same weights
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = build_model("classif", num_classes=3, pretrained_path=str(tmp_path / "vit.pth"), arch=TIMM_VIT,
                        input_size=(64, 32))
    assert torch.equal(model.backbone.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    torch.save({"foo": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(ReidError, match=r"foreign.pth is not a timm test_vit state dict \(missing (\d+) of its \1 "
                                        r"parameters, e.g. cls_token\)$"):
        build_model("classif", num_classes=3, pretrained_path=str(tmp_path / "foreign.pth"), arch=TIMM_VIT,
                    input_size=(64, 32))


@pytest.mark.parametrize("arch, message", [
    ("vgg16", r"^--arch vgg16: expected one of resnet50, resnet101, resnext50_32x4d, densenet121, timm:<name>$"),
    pytest.param("timm:no_such_net", r"^--arch timm:no_such_net: timm has no model 'no_such_net'",
                 marks=needs_timm),
])
def test_unknown_arch(arch, message):
    with pytest.raises(ReidError, match=message):
        build_model("classif", num_classes=3, arch=arch)


def test_checkpoint_records_win_and_bad_records_are_one_line(tmp_path):
    model = ReidNet("classif", num_classes=4, arch="densenet121")
    path = str(tmp_path / "d.th")
    save_checkpoint(path, model, 0.0, 0)
    with pytest.raises(ReidError, match=r"d.th holds a densenet121 network but --arch resnet50 was given$"):
        load_model(path, arch="resnet50")
    ckpt = read_checkpoint(path)
    ckpt["model"]["arch"] = "resnet101"  # a record that does not match the weights
    torch.save(ckpt, path)
    with pytest.raises(ReidError, match=r"d.th: state dict does not match a resnet101 re-ID network: "):
        load_model(path)
    ckpt["model"].update(arch="densenet121", kind="nope", embedding_size=-1)
    torch.save(ckpt, path)
    with pytest.raises(ReidError, match=r"d.th: its model record is malformed \(kind 'nope', embedding_size -1\)$"):
        load_model(path)


def test_resume_with_another_arch_is_an_error(trained_checkpoint, synthetic_dataset, tmp_path):
    import train
    shutil.copy(trained_checkpoint / "m-last.th", tmp_path / "m-last.th")
    with pytest.raises(ReidError, match=r"m-last.th holds a resnet50 network but --arch densenet121 was given$"):
        train.main([synthetic_dataset, "--resume", "--arch", "densenet121", "-f", "m.th", "-n", "3", *SMALL,
                    "--checkpoint-dir", str(tmp_path), "--device", "cpu", "--workers", "0"])


@needs_timm
def test_timm_vit_end_to_end(synthetic_dataset, tmp_path):
    """train.py --arch timm:test_vit (built for 64x32), --resume rebuilt from the checkpoint,
    gen_adv.py without --arch; another input size is refused in one line."""
    import gen_adv
    import train
    ckpt_dir = tmp_path / "ckpt"
    common = [synthetic_dataset, "--classif", "-b", "16", "-f", "m.th", *SMALL, "--workers", "0", "--device", "cpu",
              "--checkpoint-dir", str(ckpt_dir)]
    train.main(common + ["--arch", TIMM_VIT, "-n", "1"])
    train.main(common + ["--resume", "-n", "2"])  # no --arch: the checkpoint's
    ckpt = read_checkpoint(str(ckpt_dir / "m-last.th"))
    assert ckpt["epoch"] == 1 and ckpt["model"]["arch"] == TIMM_VIT and ckpt["model"]["img_size"] == [64, 32]
    assert ckpt["model"]["mean"] == [0.5, 0.5, 0.5]  # timm's pretrained_cfg of the ViT
    out = tmp_path / "out"
    results = gen_adv.main([str(ckpt_dir), synthetic_dataset, "m-last.th", "-a", "SMA", "--eps", "4", "--max_iter", "2",
                            "--device", "cpu", "--workers", "0", "--out", str(out)])
    assert results["config"]["model"]["arch"] == TIMM_VIT
    model, _ = load_model(str(ckpt_dir / "m-last.th"))
    data = load_dataset(synthetic_dataset)
    tf = build_transforms(64, 32)
    direct = evaluate(model.eval(), eval_loader(data.query, tf, 64), eval_loader(data.gallery, tf, 64), "cpu")
    assert results["clean"] == pytest.approx(direct, abs=1e-6)
    assert results["clean"]["mAP"] == pytest.approx(ckpt["map"], abs=1e-6)  # what training measured
    entry = results["attacks"]["SMA"]
    assert entry["images_attacked"] > 0 and 0 < entry["max_perturbation"] <= 4 + 1e-4
    proc = run_cli("gen_adv.py", ckpt_dir, synthetic_dataset, "m-last.th", "--height", 128, "--device", "cpu",
                   "--out", tmp_path / "never", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "--height 128 --width 32: " in err and "built for 64x32 inputs only" in err
    assert not (tmp_path / "never").exists()
