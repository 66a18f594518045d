"""Re-ID networks: the backbone registry, ImageNet weights from the local caches, checkpoints, and a
researcher's own model (`--model-factory`).
"""

from reid.models.archs import ARCH_NAMES, DEFAULT_ARCH, check_arch
from reid.models.backbones import build_model, check_input_size
from reid.models.checkpoint import load_model, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from reid.models.factory import check_feature_model, check_materialised, model_from_factory
from reid.models.weights import pretrained_weights_path

__all__ = ["ARCH_NAMES", "DEFAULT_ARCH", "build_model", "check_arch", "check_feature_model", "check_input_size",
           "check_materialised", "load_model", "model_from_factory", "pretrained_weights_path", "read_checkpoint",
           "rng_state", "save_checkpoint", "set_rng_state"]
