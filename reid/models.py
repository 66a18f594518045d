"""ResNet50 re-ID networks with the reference code's state-dict layout.

`backbone` is a torchvision ResNet50 whose `fc` is replaced by the re-ID head:
- classification: `backbone.fc` = BatchNorm1d(2048) (the BN neck, whose output is
  the evaluation feature) and `fc` = Linear(2048, num_classes), the classifier;
- triplet: `backbone.fc` = BN -> ReLU -> Linear(2048, embedding_size).
So checkpoints of the paper's code (including its GOAT models) load with
strict=True. ImageNet normalisation is the model's first layer, held in
non-persistent buffers: inputs are pixels in [0, 1] and attacks work in pixel space.
"""

import os

import torch
import torch.nn as nn
import torchvision

from reid.utils import ReidError, load_torch_file

MODEL_KINDS = ("classif", "triplet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMAGENET1K_V1 ResNet50 (the weights the paper used), under the
# current and the older file name of torchvision's download cache.
IMAGENET_WEIGHT_FILES = ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth")
IMAGENET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


class Normalize(nn.Module):
    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class ReidNet(nn.Module):
    """`model(x)` -> evaluation features (B, D); `model.fc(features)` -> logits."""

    def __init__(self, kind="classif", num_classes=None, embedding_size=2048):
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ReidError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
        self.kind = kind
        self.normalize = Normalize()
        if kind == "classif" and not num_classes:
            raise ReidError("a classification model needs the number of training identities")
        self.backbone = torchvision.models.resnet50(weights=None)
        if kind == "classif":
            self.backbone.fc = nn.BatchNorm1d(2048)
            self.fc = nn.Linear(2048, num_classes)
            self.num_classes, self.embedding_size = num_classes, 2048
        else:
            self.backbone.fc = nn.Sequential(nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, embedding_size))
            self.num_classes, self.embedding_size = None, embedding_size

    def forward(self, x):
        return self.backbone(self.normalize(x))

    def config(self):
        """What is needed to rebuild this network; stored in checkpoints."""
        return {"kind": self.kind, "num_classes": self.num_classes, "embedding_size": self.embedding_size}


def imagenet_weights_path(pretrained_path=None):
    """The ImageNet ResNet50 weights file: `pretrained_path` or torchvision's cache."""
    if pretrained_path:
        if os.path.isdir(pretrained_path):
            raise ReidError(f"--pretrained-path {pretrained_path}: is a folder, expected the weights file")
        if not os.path.isfile(pretrained_path):
            raise ReidError(f"--pretrained-path {pretrained_path}: no such file")
        return pretrained_path
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    for name in IMAGENET_WEIGHT_FILES:
        if os.path.isfile(os.path.join(cache, name)):
            return os.path.join(cache, name)
    raise ReidError(f"--pretrained: ImageNet ResNet50 weights not found offline; download {IMAGENET_URL} "
                    f"into {cache}/ or pass --pretrained-path FILE")


def load_imagenet_weights(model, pretrained_path=None):
    """Copy torchvision's ImageNet ResNet50 weights into the backbone (all but `fc`)."""
    path = imagenet_weights_path(pretrained_path)
    state = load_torch_file(path, "ResNet50 weights file")  # corrupt, empty, not a torch file: one line
    tensors = isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items())
    if not tensors:
        raise ReidError(f"{path} is not a torchvision ResNet50 state dict (found a {type(state).__name__} "
                        "that is not a dict of tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ReidError(f"{path} is not a torchvision ResNet50 state dict "
                        f"(missing {len(missing)} keys, unexpected {len(unexpected)})")
    return path


def build_model(kind="classif", num_classes=None, embedding_size=2048, pretrained=False, pretrained_path=None):
    model = ReidNet(kind, num_classes, embedding_size)
    if pretrained or pretrained_path:
        load_imagenet_weights(model, pretrained_path)
    return model


def infer_config(state_dict):
    """Model kind, class count and embedding size read off a state dict.

    Reference checkpoints carry no description of their network; the head's
    parameter shapes say everything needed.
    """
    if "backbone.fc.2.weight" in state_dict:
        return {"kind": "triplet", "num_classes": None,
                "embedding_size": int(state_dict["backbone.fc.2.weight"].shape[0])}
    if "fc.weight" in state_dict and "backbone.fc.running_mean" in state_dict:
        return {"kind": "classif", "num_classes": int(state_dict["fc.weight"].shape[0]), "embedding_size": 2048}
    raise ReidError("the checkpoint's network is neither a classification (backbone.fc = BN neck, fc = "
                    "classifier) nor a triplet (backbone.fc = BN-ReLU-Linear) ResNet50")
