"""The backbone registry: torchvision architectures (`TORCHVISION_ARCHS`) and `timm:<name>`, their
ImageNet weight files and normalisation constants, and the check of an `--arch` value."""

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch.nn as nn
import torchvision

from reid.runtime import ReidError

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


def timm_cfg(name):
    """timm's pretrained config of a model name (with or without a weights tag), or None."""
    return timm_module().models.get_pretrained_cfg(name)


def timm_fixed_input_size(name):
    """True where timm builds the model for one input size (ViTs, Swin): it needs img_size."""
    cfg = timm_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)
