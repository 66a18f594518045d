"""Defended training: GOAT (CVPRW 2020; EST is its own-feature guide), ACT and HM (`triplet.py`),
free adversarial training (`free.py`) and training against universal perturbations (TPAMI 2022),
each an objective or a batch preparation of the one training loop (`reid.training`; `choice.py`:
train.py's choice among them); and the input-transformation defences evaluated at inference
(`inputs.py`: bit depth, JPEG, resize-pad).
"""

from reid.defences.choice import (check_distributed_defence, check_resumed_defence, choose_defence, defence_record,
                                  defence_states, defended_objective)
from reid.defences.free import FreeObjective, check_free
from reid.defences.goat import Goat, GuidePool, goat_config
from reid.defences.inputs import (INPUT_DEFENCES, RANDOM_DEFENCES, InputDefence, check_bpda,
                                  parse_input_defence)
from reid.defences.triplet import (TRIPLET_DEFENCES, HardnessLoss, TripletDefence, TripletDefenceConfig,
                                   check_triplet_defence, mine_triplets, triplet_config)
from reid.defences.universal import (MetaObjective, UapDefence, check_defence_flags, defence_config, meta_batch_size,
                                     meta_seed, saved_settings)

DEFENCES = ("goat", "est") + TRIPLET_DEFENCES  # train.py --defence

__all__ = ["check_distributed_defence", "check_resumed_defence", "choose_defence", "defence_record",
           "defence_states", "defended_objective", "FreeObjective", "check_free", "DEFENCES", "TRIPLET_DEFENCES",
           "HardnessLoss", "TripletDefence", "TripletDefenceConfig", "check_triplet_defence", "mine_triplets",
           "triplet_config", "INPUT_DEFENCES", "RANDOM_DEFENCES", "InputDefence", "check_bpda",
           "parse_input_defence", "Goat", "GuidePool", "MetaObjective", "UapDefence", "check_defence_flags",
           "defence_config", "goat_config", "meta_batch_size", "meta_seed", "saved_settings"]
