"""The plan of the ranking-loss attacks (``RANK``, ``APGD_RANK``, ``SQUARE_RANK``): no guides,
the clean gallery instead (``loss.RankingLoss``).

Where an ``AttackPlan`` packs each image's guides into the guided loss's target, a
``RankingPlan`` hands the optimiser a ``RankingLoss`` over the gallery and, as the target,
the attacked queries' rows; the rest of the path (optimisers, ``attack_batch``,
``attack_split``, metrics) is the one every attack takes.
"""

from dataclasses import dataclass, replace
from typing import Any

import torch

from .guides import PlanBase
from .loss import RankingLoss
from .optimisers import OPTIMISERS


@dataclass(frozen=True)
class RankingPlan(PlanBase):
    """``attacked`` (N,) bool: queries with pid > 0; ``feats`` (N, D) their clean features;
    ``loss`` the ``RankingLoss`` over the gallery; ``rand_start`` (N,) bool: none (the loss
    has a gradient at the clean image)."""

    name: str
    spec: Any
    feats: torch.Tensor
    attacked: torch.Tensor
    rand_start: torch.Tensor
    loss: RankingLoss
    cosine: bool
    num_fallback: int = 0

    def iterations(self, max_iter):
        return self.spec.iterations(max_iter)

    @property
    def random(self):
        """Whether a run draws anything at random: only the optimiser's (Square's windows)."""
        return OPTIMISERS[self.spec.optimiser].random

    def objective(self, rows):
        """(loss_fn, target) of the images at ``rows``: the ranking loss and their rows."""
        return self.loss, torch.as_tensor(rows, dtype=torch.long, device=self.device)

    def to(self, device):
        return replace(super().to(device), loss=self.loss.to(device))


def ranking_plan(name, spec, feats, pids, camids, gallery, *, k=1, cosine=False):
    """The ``RankingPlan`` of the queries (feats (N, D), pids, camids) against ``gallery``:
    (features (G, D), pids (G,), camids (G,)) of the clean gallery."""
    feats = torch.as_tensor(feats).detach().float()
    pids = torch.as_tensor(pids, device=feats.device).long().reshape(-1)
    g_feats, g_pids, g_camids = gallery
    loss = RankingLoss(torch.as_tensor(g_feats).detach().to(feats.device), g_pids, g_camids, pids, camids,
                       k=k, cosine=cosine)
    attacked = pids > 0
    return RankingPlan(name, spec, feats, attacked, torch.zeros_like(attacked), loss, bool(cosine))
