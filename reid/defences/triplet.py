"""Adversarial training of the triplet: ACT and HM (Zhou et al.), objectives of the one training loop.

Both mine triplets (anchor, positive, negative) from the clean features of a P x K batch,
perturb some of their images with the attack library's ``perturb`` (eval mode, PGD from a
random start, the budget of ``--adv-eps / --adv-iters / --adv-step / --adv-norm``, as GOAT's),
and train the model on a triplet loss of the perturbed images. The anchors are every second
image of the batch (B / 2 triplets, as RobRank's pair batches), so their inner attacks cost
about GOAT's (B images attacked for ACT, 3B / 2 for HM).

  ACT  (anti-collapse triplet, Zhou et al., TPAMI 2024): the adversary collapses the positive
       and the negative onto each other. Each is pulled towards the midpoint of their clean
       features (one pulling guide of the guided loss: a fixed point, so two strong attacks
       cannot swap them). The model then learns [d(a, p') - d(a, n') + m]_+ with the clean
       anchor a.
  HM   (hardness manipulation, Zhou & Patel, CVPR 2022, its strongest form "ghmetsmi"):
       source triplets mined soft-hard; the adversary raises each triplet's hardness
       H = d(a', p') - d(a', n') up to a destination H* and no further (the loss
       -min(H - H*, 0)^2, ``HardnessLoss``), all three images perturbed; the destination is
       gradual, H* = -clamp(L, 0, m) with L the previous step's adversarial triplet loss (a
       weak model meets an easy adversary; a model that learns meets H* -> 0). The model learns
       [H(a', p', n') + m]_+ plus the intra-class structure term
       0.5 [d(a, a') - d(a, p)]_+ (clean anchor and positive).

Distances are plain Euclidean of the training features, as the batch-hard triplet's; m is the
objective's margin (softplus instead of the hinge with ``--soft_margin``). With the
classification head the triplet term is added to the cross-entropy of the images the step
trains on. Mining draws from the global RNG (recorded in the checkpoints: a resume is exact).
The training forward is one pass over all the step's images (one BatchNorm batch).
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reid.attacks import attack_mode, pack_guides, perturb
from reid.defences.goat import adv_budget, describe_budget
from reid.runtime import ReidError, distributed

TRIPLET_DEFENCES = ("act", "hm")
ICS_WEIGHT = 0.5


@dataclass(frozen=True)
class TripletDefenceConfig:
    """What an ACT / HM run does; stored in its checkpoints so a resume can check it."""

    name: str            # one of TRIPLET_DEFENCES
    eps: float = 5.0     # /255 (L2: a radius in [0, 1] pixel units)
    iters: int = 7
    step: float = 1.0
    norm: str = "linf"

    def __post_init__(self):
        if self.name not in TRIPLET_DEFENCES:
            raise ValueError(f"TripletDefenceConfig.name {self.name!r}: expected one of {TRIPLET_DEFENCES}")

    def settings(self):
        return asdict(self)

    def describe(self):
        what = {"act": "ACT: positive and negative collapsed onto their midpoint",
                "hm": "HM: soft-hard triplets raised to a gradual hardness, + intra-class structure"}[self.name]
        return f"{what} ({describe_budget(self.eps, self.iters, self.step, self.norm)})"


def triplet_config(name, eps=None, iters=7, step=None, norm="linf"):
    """The resolved config of ``--defence act|hm`` and the shared ``--adv-*`` budget flags."""
    eps, step = adv_budget(eps, iters, step, norm)
    return TripletDefenceConfig(name, eps, int(iters), step, norm)


def euclidean(x, y):
    """Row-wise Euclidean distances of (T, D) pairs, with a floor inside the root (finite gradient)."""
    return (x - y).pow(2).sum(1).clamp_min(1e-12).sqrt()


def _pick(mask, draws):
    """One column per row, uniformly among the True entries of ``mask`` (rows have at least one)."""
    return draws.masked_fill(~mask, -1.0).argmax(1)


def mine_triplets(feats, labels, rule):
    """(anchors, positives, negatives) index tensors of length B // 2: anchors 0, 2, 4, ...

    ``random``: a positive and a negative drawn uniformly (ACT). ``softhard`` (HM's source):
    the negative drawn among those closer than the anchor's furthest positive, the positive
    among those further than its nearest negative; uniformly among all when there is none.
    Every anchor needs another image of its identity and one of another identity (P x K
    batches, K >= 2, P >= 2); a ValueError otherwise."""
    b = len(labels)
    anchors = torch.arange(0, b - b % 2, 2, device=labels.device)
    same = labels[anchors, None] == labels[None, :]
    pos_mask = same.clone()
    pos_mask[torch.arange(len(anchors), device=labels.device), anchors] = False
    neg_mask = ~same
    if not (pos_mask.any(1).all() and neg_mask.any(1).all()):
        raise ValueError("mine_triplets: an anchor has no other image of its identity, or no other identity, "
                         "in the batch (P x K batches with K >= 2 and P >= 2 are needed)")
    if rule == "softhard":
        dist = torch.cdist(feats[anchors].float(), feats.float())
        furthest_pos = dist.masked_fill(~pos_mask, float("-inf")).max(1, keepdim=True).values
        nearest_neg = dist.masked_fill(~neg_mask, float("inf")).min(1, keepdim=True).values
        hard_neg, hard_pos = neg_mask & (dist < furthest_pos), pos_mask & (dist > nearest_neg)
        neg_mask = torch.where(hard_neg.any(1, keepdim=True), hard_neg, neg_mask)
        pos_mask = torch.where(hard_pos.any(1, keepdim=True), hard_pos, pos_mask)
    elif rule != "random":
        raise ValueError(f"mine_triplets: unknown rule {rule!r}")
    draws = torch.rand(2, len(anchors), b).to(feats.device)  # the global CPU RNG: a resume redraws them
    return anchors, _pick(pos_mask, draws[0]), _pick(neg_mask, draws[1])


class HardnessLoss(nn.Module):
    """HM's adversary, to be maximised: -min(H - H*, 0)^2 for each triplet, H = d(a, p) - d(a, n).

    features (3T, D): anchors, positives, negatives; target (3T,): each triplet's H* repeated
    for its three images. ``per_sample`` gives every image its triplet's value."""

    def per_sample(self, features, target):
        fa, fp, fn = features.float().chunk(3)
        hardness = euclidean(fa, fp) - euclidean(fa, fn)
        value = -(hardness - target[: len(fa)].float()).clamp(max=0).pow(2)
        return value.repeat(3)

    def forward(self, features, target):
        return self.per_sample(features, target).sum() / 3


class TripletDefence:
    """An objective of the training loop: ``base``'s loss kind, trained on ACT's or HM's triplets."""

    def __init__(self, base, config: TripletDefenceConfig):
        self.base, self.config = base, config
        self.kind = base.kind
        self.previous = float(base.margin)  # HM's gradual destination starts at -m (the easiest)

    def state(self):
        return {"previous": self.previous}

    def load_state(self, state):
        self.previous = float(state["previous"])

    def hinge(self, value):
        return F.softplus(value) if self.base.soft_margin else F.relu(value + self.base.margin)

    def _attack(self, net, images, target, loss=None):
        c = self.config
        return perturb(net, images, target, optimiser="pgd", eps=c.eps, step=c.step, max_iter=c.iters,
                       rand_start=True, norm=c.norm, loss=loss)

    def adversarial(self, model, images, labels):
        """The step's training images and their labels: ACT [a | p' | n'], HM [a' | p' | n' | a | p]
        (primes perturbed by the inner attack, in eval mode); ``model`` the bare network."""
        with attack_mode(model), torch.no_grad():
            clean = model(images).float()
        anc, pos, neg = mine_triplets(clean, labels, "random" if self.config.name == "act" else "softhard")
        t = len(anc)
        if self.config.name == "act":
            mid = (clean[pos] + clean[neg]) / 2
            target = pack_guides(torch.cat([mid, mid])[:, None], -torch.ones(2 * t, 1, device=clean.device))
            adv = self._attack(model, torch.cat([images[pos], images[neg]]), target)
            return torch.cat([images[anc], adv]), torch.cat([labels[anc], labels[pos], labels[neg]])
        target = torch.full((3 * t,), self.destination(), device=clean.device)
        adv = self._attack(model, torch.cat([images[anc], images[pos], images[neg]]), target, HardnessLoss())
        return (torch.cat([adv, images[anc], images[pos]]),
                torch.cat([labels[anc], labels[pos], labels[neg], labels[anc], labels[pos]]))

    def destination(self):
        """HM's gradual destination hardness: -clamp(previous adversarial triplet loss, 0, m)."""
        return -min(max(self.previous, 0.0), float(self.base.margin))

    def __call__(self, model, images, labels):
        batch, batch_labels = self.adversarial(distributed.unwrap(model), images, labels)
        feats = model(batch)
        parts = feats.float().chunk(3 if self.config.name == "act" else 5)
        fa, fp, fn = parts[:3]
        loss = self.hinge(euclidean(fa, fp) - euclidean(fa, fn)).mean()
        if self.config.name == "hm":
            self.previous = distributed.average({"loss": loss.item()})["loss"]  # the same on every process
            ca, cp = parts[3:]
            loss = loss + ICS_WEIGHT * F.relu(euclidean(ca, fa) - euclidean(ca, cp)).mean()
        if self.kind != "classif":
            return loss, None
        logits = model.fc(feats)
        return (loss + F.cross_entropy(logits, batch_labels),
                (logits.argmax(1) == batch_labels).float().mean())


def check_triplet_defence(name, id_batch, num_instances, batch_size, world=1):
    """ACT and HM mine triplets in P x K batches (each process's share, under torchrun): a
    one-line ReidError without them."""
    if not id_batch:
        raise ReidError(f"--defence {name}: mines triplets in identity batches; add --id_batch (P x K batches)")
    if num_instances < 2:
        raise ReidError(f"--defence {name} -ni {num_instances}: each anchor needs another image of its identity; "
                        "expected -ni >= 2")
    if batch_size < 2 * num_instances * world:
        share = f" shared by {world} processes" if world > 1 else ""
        raise ReidError(f"--defence {name} -b {batch_size}{share}: each anchor needs another identity in its batch; "
                        f"expected -b >= 2 x -ni{' x processes' if world > 1 else ''} ({2 * num_instances * world})")
