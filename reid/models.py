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

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torchvision

from reid.utils import ReidError, _first_message_line, load_torch_file

MODEL_KINDS = ("classif", "triplet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ARCH = "resnet50"
TIMM_PREFIX = "timm:"


def _densenet_keys(key):
    """DenseNet's released weights name a layer's parts ``norm.1`` / ``conv.2``; torchvision's
    modules are ``norm1`` / ``conv2``."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", key)


@dataclass(frozen=True)
class TorchvisionArch:
    display: str                       # in messages
    build: Callable[..., nn.Module]    # torchvision.models.<arch>
    classifier: str                    # attribute of the ImageNet classifier, where the head goes
    weights: object                    # the IMAGENET1K_V1 weights enum entry (its url names the cache file)
    legacy_files: Tuple[str, ...] = ()  # older cache file names of the same weights
    rename: Optional[Callable[[str], str]] = None  # key fix-up of the released file

    @property
    def url(self):
        return self.weights.url

    @property
    def files(self):
        return (os.path.basename(self.url),) + self.legacy_files


TORCHVISION_ARCHS = {
    "resnet50": TorchvisionArch("ResNet50", torchvision.models.resnet50, "fc",
                                torchvision.models.ResNet50_Weights.IMAGENET1K_V1, ("resnet50-19c8e357.pth",)),
    "resnet101": TorchvisionArch("ResNet101", torchvision.models.resnet101, "fc",
                                 torchvision.models.ResNet101_Weights.IMAGENET1K_V1, ("resnet101-5d3b4d8f.pth",)),
    "resnext50_32x4d": TorchvisionArch("ResNeXt50-32x4d", torchvision.models.resnext50_32x4d, "fc",
                                       torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1),
    "densenet121": TorchvisionArch("DenseNet121", torchvision.models.densenet121, "classifier",
                                   torchvision.models.DenseNet121_Weights.IMAGENET1K_V1, rename=_densenet_keys),
}
ARCH_NAMES = tuple(TORCHVISION_ARCHS) + (TIMM_PREFIX + "<name>",)
# torchvision's IMAGENET1K_V1 ResNet50 (the weights the paper used), under the current and
# the older file name of torchvision's download cache.
IMAGENET_WEIGHT_FILES = TORCHVISION_ARCHS["resnet50"].files
IMAGENET_URL = TORCHVISION_ARCHS["resnet50"].url


def timm_module(arch=None):
    """The timm package, or a one-line error saying how to install it."""
    try:
        import timm
    except ImportError:
        what = f"--arch {arch}" if arch else "timm models"
        raise ReidError(f"{what}: timm is not installed (pip install 'timm>=1.0', or run make)") from None
    return timm


def check_arch(arch, flag="--arch"):
    """The canonical architecture name, or a one-line error naming `flag` and the choices."""
    if not isinstance(arch, str):
        raise ReidError(f"{flag} {arch!r}: expected one of {', '.join(ARCH_NAMES)}")
    if arch in TORCHVISION_ARCHS:
        return arch
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX):]
        timm = timm_module(arch)
        if not name or not timm.is_model(name):
            raise ReidError(f"{flag} {arch}: timm has no model {name!r} (see timm.list_models())")
        return arch
    raise ReidError(f"{flag} {arch}: expected one of {', '.join(ARCH_NAMES)}")


def is_timm(arch):
    return arch.startswith(TIMM_PREFIX)


def _timm_cfg(name):
    """timm's pretrained config of a model name (with or without a weights tag), or None."""
    return timm_module().models.get_pretrained_cfg(name)


def timm_fixed_input_size(name):
    """True where timm builds the model for one input size (ViTs, Swin): it needs img_size."""
    cfg = _timm_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


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


def pretrained_weights_path(arch=DEFAULT_ARCH, pretrained_path=None):
    """The ImageNet weights file of `arch`: `pretrained_path`, or the file in the cache of
    torchvision (torchvision backbones) or of timm (timm models). Never downloads: a missing
    file is a one-line error saying where to put it."""
    if pretrained_path:
        if os.path.isdir(pretrained_path):
            raise ReidError(f"--pretrained-path {pretrained_path}: is a folder, expected the weights file")
        if not os.path.isfile(pretrained_path):
            raise ReidError(f"--pretrained-path {pretrained_path}: no such file")
        return pretrained_path
    if is_timm(arch):
        return _timm_cached_weights(arch[len(TIMM_PREFIX):])
    spec = TORCHVISION_ARCHS[arch]
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    for name in spec.files:
        if os.path.isfile(os.path.join(cache, name)):
            return os.path.join(cache, name)
    raise ReidError(f"--pretrained: ImageNet {spec.display} weights not found offline; download {spec.url} "
                    f"into {cache}/ or pass --pretrained-path FILE")


def _timm_cached_weights(name):
    """The weights file of timm model `name` in timm's caches, looked up without the network."""
    cfg = _timm_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ReidError(f"--pretrained: timm has no pretrained weights for {name}")
    places = []
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for fname in ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")):
            found = try_to_load_from_cache(repo, fname, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        places.append(f"Hugging Face repo {repo} in {constants.HF_HUB_CACHE}")
    if cfg.url and not cfg.custom_load:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(cache, os.path.basename(cfg.url))
        if os.path.isfile(path):
            return path
        places.append(f"{cfg.url} in {cache}/")
    raise ReidError(f"--pretrained: timm weights of {name} not found offline ({' or '.join(places)}); fetch them "
                    f"once online (python -c \"import timm; timm.create_model('{name}', pretrained=True)\") "
                    "or pass --pretrained-path FILE")


def _read_state_dict(path, what, described):
    """A state dict of tensors from a .safetensors or torch file (`weights_only`), or one line:
    `what` names the file ("ResNet50 weights file"), `described` the expected dict."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types for foreign or truncated files
            raise ReidError(f"{path} is not a {what}: {_first_message_line(err)}") from None
    else:
        state = load_torch_file(path, what)
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise ReidError(f"{path} is not a {described} (found a {type(state).__name__} that is not a dict of tensors)")
    return state


def _torchvision_backbone(arch, weights_file):
    """The torchvision network (classifier replaced by Identity, ImageNet weights loaded
    from `weights_file` if given) and its pooled feature size."""
    spec = TORCHVISION_ARCHS[arch]
    net = spec.build(weights=None)
    dim = net.get_submodule(spec.classifier).in_features
    _replace_submodule(net, spec.classifier, nn.Identity())
    if weights_file:
        state = _read_state_dict(weights_file, f"{spec.display} weights file",
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
        state = _read_state_dict(weights_file, f"timm {name} weights file", f"timm {name} state dict")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    try:
        net = timm.create_model(name, num_classes=0, **kwargs)
    except Exception as err:  # timm's errors for a size or a weights file it cannot take vary in type
        if weights_file:
            raise ReidError(f"{weights_file}: timm cannot load it into {name} ({_first_message_line(err)})") from None
        size = f" for {img_size[0]}x{img_size[1]} inputs" if img_size else ""
        raise ReidError(f"--arch {arch}: timm cannot build it{size} ({_first_message_line(err)})") from None
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
