"""Re-ID networks on several backbones, with the reference code's state-dict layout.

A network is a backbone (``--arch``) whose ImageNet classifier is replaced by the re-ID head:
- classification: the head is BatchNorm1d(D) (the BN neck, whose output is the evaluation
  feature) and ``fc`` = Linear(D, num_classes) is the classifier;
- triplet: the head is BN -> ReLU -> Linear(D, embedding_size).
D is the backbone's pooled feature size (2048 for the ResNets, 1024 for DenseNet121, what
timm says for a timm model). The head takes the place of the backbone's own classifier
(``backbone.fc`` for the ResNets, ``backbone.classifier`` for DenseNet121, the attribute
timm's ``get_classifier()`` names for a timm model), so for ResNet50 the keys are those of
the paper's code and its checkpoints (including its GOAT models) load with strict=True.

Architectures (``ARCH_NAMES``): the torchvision backbones of ``TORCHVISION_ARCHS`` and
``timm:<model name>``, any model of timm (``timm.create_model(name, num_classes=0)``: pooled
features), built with ``img_size`` = the training input size where timm marks the model's
input size as fixed (ViTs, Swin). Normalisation is the model's first layer, held in
non-persistent buffers: ImageNet mean / std for the torchvision backbones, the mean / std of
the timm model's ``pretrained_cfg`` (what its ImageNet weights were trained with, e.g. 0.5 for
most ViTs) for timm. Inputs are pixels in [0, 1]; attacks work in pixel space. What rebuilds a
network (``ReidNet.config()``: architecture, kind, sizes, mean / std) is stored in checkpoints.

ImageNet weights are never downloaded: torchvision backbones read the file of their
IMAGENET1K_V1 weights from torchvision's cache (or ``--pretrained-path``); timm models read
their weights from timm's caches (the Hugging Face hub cache, or torch's for older weights),
or ``--pretrained-path``.
"""

import torch
import torch.nn as nn

from reid.models.archs import (DEFAULT_ARCH, IMAGENET_MEAN, IMAGENET_STD, MODEL_KINDS, TIMM_PREFIX, TORCHVISION_ARCHS,
                               check_arch, is_timm, timm_fixed_input_size, timm_module)
from reid.models.weights import pretrained_weights_path, read_state_dict
from reid.runtime import ReidError, first_message_line


class Normalize(nn.Module):
    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def _replace_submodule(root, path, module):
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _torchvision_backbone(arch, weights_file):
    """The torchvision network (classifier replaced by Identity, ImageNet weights loaded
    from `weights_file` if given) and its pooled feature size."""
    spec = TORCHVISION_ARCHS[arch]
    net = spec.build(weights=None)
    dim = net.get_submodule(spec.classifier).in_features
    _replace_submodule(net, spec.classifier, nn.Identity())
    if weights_file:
        state = read_state_dict(weights_file, f"{spec.display} weights file",
                                 f"torchvision {spec.display} state dict")
        if spec.rename:
            state = {spec.rename(k): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(spec.classifier + ".")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ReidError(f"{weights_file} is not a torchvision {spec.display} state dict "
                            f"(missing {len(missing)} keys, unexpected {len(unexpected)})")
    return net, spec.classifier, dim, IMAGENET_MEAN, IMAGENET_STD


def _timm_backbone(arch, img_size, weights_file):
    """The timm model with pooled-feature output (`num_classes=0`), the path of its
    (Identity) classifier, its feature size and its pretrained_cfg's mean / std."""
    timm = timm_module(arch)
    name = arch[len(TIMM_PREFIX):]
    kwargs = {"img_size": tuple(img_size)} if img_size else {}
    if weights_file:
        state = read_state_dict(weights_file, f"timm {name} weights file", f"timm {name} state dict")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    try:
        net = timm.create_model(name, num_classes=0, **kwargs)
    except Exception as err:  # timm's errors for a size or a weights file it cannot take vary in type
        if weights_file:
            raise ReidError(f"{weights_file}: timm cannot load it into {name} ({first_message_line(err)})") from None
        size = f" for {img_size[0]}x{img_size[1]} inputs" if img_size else ""
        raise ReidError(f"--arch {arch}: timm cannot build it{size} ({first_message_line(err)})") from None
    net.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights
    classifier = net.get_classifier()
    path = next((n for n, m in net.named_modules() if m is classifier and n), None)
    if path is None:
        raise ReidError(f"--arch {arch}: cannot find the classifier of this timm model to put the re-ID head in")
    if weights_file:  # timm loads leniently (unknown keys are only logged): every parameter must come from the file
        missing = [k for k, _ in net.named_parameters() if k not in state]
        if missing:
            raise ReidError(f"{weights_file} is not a timm {name} state dict (missing {len(missing)} of its "
                            f"{len(list(net.parameters()))} parameters, e.g. {missing[0]})")
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    cfg = net.pretrained_cfg
    return net, path, int(dim), tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)


class ReidNet(nn.Module):
    """`model(x)` -> evaluation features (B, D); `model.fc(features)` -> logits (classification).

    `arch`: one of ARCH_NAMES; `input_size` (H, W): the size a timm model with a fixed input
    size (a ViT) is built for (ignored by other backbones); `weights_file`: ImageNet weights
    to start from (see `pretrained_weights_path`); `mean` / `std`: the normalisation, when
    rebuilding a stored network (default: the architecture's).
    """

    def __init__(self, kind="classif", num_classes=None, embedding_size=2048, arch=DEFAULT_ARCH, input_size=None,
                 weights_file=None, mean=None, std=None):
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ReidError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
        if kind == "classif" and not num_classes:
            raise ReidError("a classification model needs the number of training identities")
        arch = check_arch(arch)
        self.kind, self.arch = kind, arch
        self.img_size = None
        if is_timm(arch):
            if input_size is not None and timm_fixed_input_size(arch[len(TIMM_PREFIX):]):
                self.img_size = tuple(int(v) for v in input_size)
            backbone, slot, dim, default_mean, default_std = _timm_backbone(arch, self.img_size, weights_file)
        else:
            backbone, slot, dim, default_mean, default_std = _torchvision_backbone(arch, weights_file)
        self.mean = tuple(float(v) for v in (mean or default_mean))
        self.std = tuple(float(v) for v in (std or default_std))
        self.normalize = Normalize(self.mean, self.std)
        self.backbone = backbone
        if kind == "classif":
            _replace_submodule(self.backbone, slot, nn.BatchNorm1d(dim))
            self.fc = nn.Linear(dim, num_classes)
            self.num_classes, self.embedding_size = num_classes, dim
        else:
            _replace_submodule(self.backbone, slot, nn.Sequential(nn.BatchNorm1d(dim), nn.ReLU(),
                                                                  nn.Linear(dim, embedding_size)))
            self.num_classes, self.embedding_size = None, embedding_size
        self.feature_dim = dim

    def forward(self, x):
        return self.backbone(self.normalize(x))

    def config(self):
        """What is needed to rebuild this network; stored in checkpoints."""
        return {"arch": self.arch, "kind": self.kind, "num_classes": self.num_classes,
                "embedding_size": self.embedding_size,
                "img_size": list(self.img_size) if self.img_size else None,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_config(cls, config):
        """The (untrained) network of a `config()` dict."""
        return cls(config["kind"], config["num_classes"], config["embedding_size"], arch=config["arch"],
                   input_size=config.get("img_size"), mean=config.get("mean"), std=config.get("std"))


def check_input_size(model, input_size, source):
    """A network built for one input size (a timm ViT) refuses any other: one line naming the
    flags, before any work. Other networks take any size."""
    fixed = getattr(model, "img_size", None)
    if fixed and tuple(input_size) != tuple(fixed):
        raise ReidError(f"--height {input_size[0]} --width {input_size[1]}: {source} holds a "
                        f"{getattr(model, 'arch', type(model).__name__)} network built for {fixed[0]}x{fixed[1]} "
                        "inputs only")


def build_model(kind="classif", num_classes=None, embedding_size=2048, pretrained=False, pretrained_path=None,
                arch=DEFAULT_ARCH, input_size=None):
    """A new network; `pretrained` / `pretrained_path`: start from ImageNet weights."""
    arch = check_arch(arch)
    weights = pretrained_weights_path(arch, pretrained_path) if pretrained or pretrained_path else None
    return ReidNet(kind, num_classes, embedding_size, arch=arch, input_size=input_size, weights_file=weights)


def infer_config(state_dict):
    """Model kind, class count and embedding size of a ResNet50 read off a state dict.

    Reference checkpoints carry no description of their network; the head's
    parameter shapes say everything needed.
    """
    if "backbone.fc.2.weight" in state_dict:
        return {"arch": DEFAULT_ARCH, "kind": "triplet", "num_classes": None,
                "embedding_size": int(state_dict["backbone.fc.2.weight"].shape[0])}
    if "fc.weight" in state_dict and "backbone.fc.running_mean" in state_dict:
        return {"arch": DEFAULT_ARCH, "kind": "classif", "num_classes": int(state_dict["fc.weight"].shape[0]),
                "embedding_size": 2048}
    raise ReidError("the checkpoint's network is neither a classification (backbone.fc = BN neck, fc = "
                    "classifier) nor a triplet (backbone.fc = BN-ReLU-Linear) ResNet50")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def stored_config(record, state_dict):
    """The network of a checkpoint: its `model` record when it names an architecture, else
    (the paper's checkpoints, and ours from before architectures were recorded) a ResNet50
    read off the state dict. A malformed record is a one-line error."""
    if not (isinstance(record, dict) and "arch" in record):
        return infer_config(state_dict)
    config = {k: record.get(k) for k in ("arch", "kind", "num_classes", "embedding_size", "img_size", "mean", "std")}
    config["arch"] = check_arch(config["arch"], "its recorded architecture")
    problems = []
    if config["kind"] not in MODEL_KINDS:
        problems.append(f"kind {config['kind']!r}")
    if config["kind"] == "classif" and not (_is_int(config["num_classes"]) and config["num_classes"] > 0):
        problems.append(f"num_classes {config['num_classes']!r}")
    if not (_is_int(config["embedding_size"]) and config["embedding_size"] > 0):
        problems.append(f"embedding_size {config['embedding_size']!r}")
    size = config["img_size"]
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2 and all(map(_is_int, size))):
        problems.append(f"img_size {size!r}")
    for key in ("mean", "std"):
        v = config[key]
        if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 3
                                  and all(isinstance(x, (int, float)) and x == x for x in v)
                                  and (key == "mean" or all(x > 0 for x in v))):
            problems.append(f"{key} {v!r}")
    if problems:
        raise ReidError(f"its model record is malformed ({', '.join(problems)})")
    return config
