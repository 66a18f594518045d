"""ImageNet weights, never downloaded: the file of a backbone in torchvision's or timm's local
caches (or `--pretrained-path`), and reading a state dict from a torch or safetensors file."""

import os

import torch

from reid.models.archs import DEFAULT_ARCH, TIMM_PREFIX, TORCHVISION_ARCHS, is_timm, timm_cfg
from reid.runtime import ReidError, first_message_line, load_torch_file


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
    cfg = timm_cfg(name)
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


def read_state_dict(path, what, described):
    """A state dict of tensors from a .safetensors or torch file (`weights_only`), or one line:
    `what` names the file ("ResNet50 weights file"), `described` the expected dict."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types for foreign or truncated files
            raise ReidError(f"{path} is not a {what}: {first_message_line(err)}") from None
    else:
        state = load_torch_file(path, what)
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise ReidError(f"{path} is not a {described} (found a {type(state).__name__} that is not a dict of tensors)")
    return state
