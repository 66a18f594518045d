"""Metric adversarial attacks on re-ID models: guide selection + one guided loss, on advertorch.

Every attack (the papers' FGSM, IFGSM, MIFGSM, SMA, ODFA, FNA, FNA_pull, FNA_rand; their APGD_*
forms; RANK, APGD_RANK; the gradient-free SQUARE_*) is one row of ``registry.ATTACKS``: a guide
rule and an optimiser (advertorch's, APGD or Square) joined by one loss, the guided loss
sum_b sum_k w_bk ||f(x_b) - g_bk||^2 or the ranking loss over the gallery (maximised). Work in pixel space: images in [0, 1],
eps and step in /255 units (``norm="linf"``, the default) or, with ``norm="l2"``, an L2
radius and step in [0, 1] pixel units of the whole image.

    plan = plan_attack("FNA", q_feats, q_pids, cosine=False, generator=gen)
    for images, idx in batches:                  # idx: positions in the query set
        adv, adv_feats = attack_batch(model, images, plan, idx, eps=5, step=1, max_iter=15,
                                      generator=gen)

This package is also the project's only door to advertorch (see ``_compat``): import the
advertorch attack classes from here.
"""

from ._compat import GradientAttack, GradientSignAttack, L2PGDAttack, LinfPGDAttack, MomentumIterativeAttack
from .diversity import TransferModel, gaussian_kernel, resize_pad
from .core import EotModel, attack_batch, attack_mode, perturb, plan_attack, project
from .guides import WEIGHTINGS, AttackPlan, select_guides
from .loss import GuidedLoss, RankingLoss, guided_loss, pack_bank_guides, pack_guides
from .optimisers import OPTIMISERS, apgd_checkpoints
from .ranking import RankingPlan
from .targeted import GALLERY_GOALS, GOAL_METRICS, GOALS, TARGETED_GOALS, TargetedLoss, TargetedPlan
from .registry import (
    ATTACK_NAMES,
    ATTACKS,
    DEFAULT_EPS,
    DEFAULT_STEP,
    NORMS,
    SUITES,
    UNIVERSAL_ATTACKS,
    AttackSpec,
    auto_step,
    canonical_name,
    check_attack_args,
    check_budget,
    check_norm,
    check_single,
    get_attack_spec,
    image_diameter,
    parse_step,
    resolve_attack_names,
    resolve_step,
)
from .misrank import GeneratorConfig, GeneratorPair, MisRankObjective, load_generator, save_generator
from .universal import (
    UAP_LOSSES,
    AdditivePlan,
    UapConfig,
    UniversalGuides,
    apply_delta,
    learn_uap,
    load_uap,
    mi_sgd_step,
    save_uap,
    uap_objective,
    universal_plan,
)

__all__ = [
    "ATTACK_NAMES", "ATTACKS", "AttackPlan", "AttackSpec", "DEFAULT_EPS", "DEFAULT_STEP", "GradientAttack",
    "GradientSignAttack", "GuidedLoss", "L2PGDAttack", "LinfPGDAttack", "MomentumIterativeAttack", "NORMS",
    "auto_step", "check_norm", "image_diameter", "parse_step", "project", "resolve_step", "OPTIMISERS",
    "attack_batch", "attack_mode",
    "canonical_name", "check_attack_args", "check_budget", "check_single", "get_attack_spec",
    "guided_loss", "pack_bank_guides", "pack_guides", "perturb", "plan_attack",
    "resolve_attack_names", "select_guides", "WEIGHTINGS", "UNIVERSAL_ATTACKS", "UAP_LOSSES", "AdditivePlan",
    "UapConfig", "UniversalGuides", "apply_delta", "learn_uap", "load_uap", "mi_sgd_step", "save_uap",
    "uap_objective", "universal_plan", "EotModel", "RankingLoss", "RankingPlan", "SUITES", "apgd_checkpoints",
    "GALLERY_GOALS", "GOAL_METRICS", "GOALS", "TARGETED_GOALS", "TargetedLoss", "TargetedPlan",
    "TransferModel", "gaussian_kernel", "resize_pad",
    "GeneratorConfig", "GeneratorPair", "MisRankObjective", "load_generator", "save_generator",
]
