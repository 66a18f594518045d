"""Defended training: GOAT (CVPRW 2020) and training against universal perturbations (TPAMI 2022),
each an objective or a batch preparation of the one training loop (`reid.training`).
"""

from reid.defences.goat import Goat, GuidePool, goat_config
from reid.defences.universal import (MetaObjective, UapDefence, check_defence_flags, defence_config, meta_batch_size,
                                     meta_seed, saved_settings)

__all__ = ["Goat", "GuidePool", "MetaObjective", "UapDefence", "check_defence_flags", "defence_config", "goat_config",
           "meta_batch_size", "meta_seed", "saved_settings"]
