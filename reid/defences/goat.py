"""GOAT: guide-sampling online adversarial training (Bouniot et al., CVPRW 2020).

Each training batch is replaced by its adversarial version before the training step. The
attack is the one of ``reid.attacks`` (PGD from a random start on the guided loss, through
``perturb``; L-inf by default, L2 with ``--adv-norm l2``): only the guides are GOAT's own.
Where the pushing guides come from:

  ``self``   SMA: the image's own clean feature (``--adv --sma``), no pool needed;
  ``pool``   N images of the same identity drawn at random from ``<dataset>/sorted/train``
             (``--adv --push [N]``), the image itself excluded where its identity has others;
  ``batch``  the other instances of the same identity in the P x K batch (``--adv`` with
             ``--id_batch``), no pool needed.

``pull`` (``--pull``) adds one pulling guide: the clean feature, in the batch, furthest from
the image among the other identities (FNA during training). Weights follow the attacks'
convention (``weighting``, default ``reference``: each pushing guide 1; ``mean``: sharing
+1); the pulling guide weighs -1.

Every guide is a clean feature of the current model, computed with the model in eval mode
and no gradient, batch and pool guide images together in one forward pass. The attack also
runs in eval mode (BatchNorm statistics are not moved by attack passes); the training step
that follows is in train mode. The pool is an index of file paths: guide images are loaded
by the training loader's workers with each sample (``GuidePool`` is their ``companions``).
"""

import os
from dataclasses import dataclass
from typing import List

import torch

from reid.attacks import DEFAULT_EPS, WEIGHTINGS, attack_mode, check_budget, pack_bank_guides, perturb, resolve_step
from reid.data import same_image
from reid.metrics import pairwise_distance
from reid.runtime import ReidError

PUSH_SOURCES = ("self", "pool", "batch")


@dataclass(frozen=True)
class GoatConfig:
    """What a GOAT run does; stored in its checkpoints (as a dict) so a resume can check it."""

    push: str            # one of PUSH_SOURCES
    num_push: int        # pool guides per image (pool only; 0 otherwise)
    pull: bool
    eps: float = 5.0     # /255 (L2: a radius in [0, 1] pixel units)
    iters: int = 7
    step: float = 1.0    # /255 (L2: [0, 1] pixel units)
    weighting: str = "reference"   # pushing-guide weights, as the attacks' (reid.attacks.WEIGHTINGS)
    norm: str = "linf"   # the threat model, as gen_adv.py's --norm (checkpoints without it: linf)

    def __post_init__(self):
        if self.push not in PUSH_SOURCES:
            raise ValueError(f"GoatConfig.push {self.push!r}: expected one of {PUSH_SOURCES}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"GoatConfig.weighting {self.weighting!r}: expected one of {WEIGHTINGS}")

    def describe(self):
        push = {"self": "SMA (own feature)", "pool": f"{self.num_push} pool guides",
                "batch": "in-batch same-identity guides"}[self.push]
        return (f"GOAT: push {push}{' + furthest pull' if self.pull else ''} ({self.weighting} weights), "
                f"{describe_budget(self.eps, self.iters, self.step, self.norm)}")


def adv_budget(eps, iters, step, norm):
    """The inner attack's (eps, step) from train.py's ``--adv-*`` flags, checked (shared by every
    defence): None takes the norm's defaults (L-inf 5/255 and 1/255; L2 radius 0.5 and 2.5 eps /
    iters); step may be ``"auto"``."""
    check_budget(eps, step, iters, flags=("--adv-eps", "--adv-step", "--adv-iters", "--adv-norm"), norm=norm)
    eps = DEFAULT_EPS[norm] if eps is None else float(eps)
    return eps, float(resolve_step(step, eps, iters, norm))


def describe_budget(eps, iters, step, norm):
    if norm == "linf":
        return f"PGD eps {eps:g}/255, {iters} iterations of {step:g}/255"
    return f"L2 PGD radius {eps:g}, {iters} iterations of {step:g}"


def goat_config(adv, sma=False, push=None, pull=False, id_batch=False, eps=None, iters=7, step=None,
                weighting="reference", norm="linf"):
    """The GoatConfig train.py's flags ask for (None without ``--adv``); ReidError if they clash.

    eps / step None: the norm's defaults (L-inf 5/255 and 1/255; L2 radius 0.5 and 2.5 eps /
    iters); step may be ``"auto"``. The config holds the resolved numbers."""
    if not adv:
        given = [flag for flag, on in (("--sma", sma), ("--push", push is not None), ("--pull", pull)) if on]
        if given:
            raise ReidError(f"{' '.join(given)}: GOAT options need --adv")
        return None
    eps, step = adv_budget(eps, iters, step, norm)
    if sma and push is not None:
        raise ReidError("--sma and --push: choose one source of pushing guides")
    if push is not None and push < 1:
        raise ReidError(f"--push {push}: expected a number of guides >= 1")
    if sma:
        source = "self"
    elif push is not None:
        source = "pool"
    elif id_batch:
        source = "batch"
    else:
        raise ReidError("--adv needs pushing guides: --sma, --push [N] (from sorted/train) "
                        "or --id_batch (other instances in the P x K batch)")
    return GoatConfig(source, push if source == "pool" else 0, bool(pull), eps, int(iters), step, weighting, norm)


class GuidePool:
    """Per-identity index of the guide images in ``<dataset>/sorted/train`` (paths only).

    Called with a training sample's index, returns ``num_guides`` paths of its identity,
    drawn at random (without replacement when the identity has enough images), the sample's
    own image excluded unless it is its identity's only one. Picklable, for loader workers.
    """

    def __init__(self, paths_by_label: List[List[str]], labels: List[int], own: List[int], num_guides: int):
        self.paths_by_label, self.labels, self.own = paths_by_label, labels, own
        self.num_guides = int(num_guides)

    @classmethod
    def from_dataset(cls, data, num_guides):
        """Index ``data.root/sorted/train`` and check it matches ``data.train`` image for image."""
        root = os.path.join(data.root, "sorted", "train")
        fix = f"run `python sort_dataset.py {data.root} --dataset {data.name}`"
        if not os.path.isdir(root):
            raise ReidError(f"GOAT --push needs the guide pool {root}, which does not exist: {fix}")
        expected = {}
        for path, label, _ in data.train:
            expected.setdefault(f"{data.train_pids[label]:04d}", set()).add(os.path.basename(path))
        found = {d: set(os.listdir(os.path.join(root, d))) for d in os.listdir(root)
                 if os.path.isdir(os.path.join(root, d))}
        for folder in sorted(set(expected) | set(found)):
            if found.get(folder) != expected.get(folder):
                what = ("is missing" if folder not in found else
                        "is not a training identity" if folder not in expected else
                        "does not hold this identity's training images")
                raise ReidError(f"guide pool {root} is incomplete or from another dataset "
                                f"(identity folder {folder} {what}): {fix}")
        for path, label, _ in data.train:  # the same names, and the same images (`same_image`)
            entry = os.path.join(root, f"{data.train_pids[label]:04d}", os.path.basename(path))
            if not same_image(path, entry):
                raise ReidError(f"guide pool {root} is out of date ({entry} is not the training image {path}): {fix}")
        paths_by_label = [sorted(os.path.join(root, f"{pid:04d}", name) for name in expected[f"{pid:04d}"])
                          for pid in data.train_pids]
        own = [[os.path.basename(p) for p in paths_by_label[label]].index(os.path.basename(path))
               for path, label, _ in data.train]
        return cls(paths_by_label, [s.pid for s in data.train], own, num_guides)

    def __call__(self, index):
        paths, own = self.paths_by_label[self.labels[index]], self.own[index]
        n = len(paths) - (len(paths) > 1)            # candidates: the others, or itself alone
        if n >= self.num_guides:
            slots = torch.randperm(n)[: self.num_guides]
        else:
            slots = torch.randint(n, (self.num_guides,))
        if len(paths) > 1:
            slots = slots + (slots >= own).long()    # skip the sample's own image
        return [paths[i] for i in slots.tolist()]


def guide_weights(config, feats, labels, num_pool):
    """Guide weights (B, B + B * num_pool) over the bank [batch features | pool features].

    feats (B, D): the batch's clean features; labels (B,); the pool features of image b are
    bank rows B + b * num_pool ... B + (b + 1) * num_pool - 1. Images with no usable guide
    (``batch`` source, an identity alone in its batch) push from their own feature.
    Pushing weights follow the attacks' rule (``reid.attacks.guides``): ``reference``, each
    guide 1 and, for in-batch guides, the own feature padding the identity to the batch's
    largest one (pool guides are N for everyone: no padding); ``mean``, sharing 1.
    """
    b = len(feats)
    eye = torch.eye(b, dtype=torch.bool, device=feats.device)
    same = labels.view(-1, 1) == labels.view(1, -1)
    each = config.weighting == "reference"
    if config.push == "self":
        push = eye.float()
    elif config.push == "batch":
        others = same & ~eye
        n = others.sum(1, keepdim=True)
        if each:
            push = others.float() + eye.float() * (n.max() + 1 - n).float()  # itself + padding
        else:
            push = others.float() / n.clamp(min=1)
        push = torch.where(others.any(1, keepdim=True), push, eye.float())
    else:
        push = torch.zeros(b, b, device=feats.device)
    weights = torch.zeros(b, b + b * num_pool, device=feats.device)
    weights[:, :b] = push
    if config.push == "pool":  # image b's own pool rows, 1 (reference) or 1 / num_pool (mean) each
        weights[:, b:] = eye.float().repeat_interleave(num_pool, dim=1) / (1 if each else num_pool)
    if config.pull:  # the furthest other identity; none if the batch holds only this one
        furthest = pairwise_distance(feats, feats).masked_fill(same, -1.0).argmax(1)
        weights[torch.arange(b, device=feats.device), furthest] -= (~same).any(1).float()
    return weights


class Goat:
    """``prepare_batch`` of the training loop: returns the adversarial version of a batch."""

    def __init__(self, config: GoatConfig):
        self.config = config

    def __call__(self, model, images, labels, pool_images=None):
        """images (B, 3, H, W) in [0, 1]; pool_images (B, N, 3, H, W) for the ``pool`` source."""
        b = len(images)
        num_pool = 0 if pool_images is None else pool_images.shape[1]
        if (self.config.push == "pool") != (num_pool > 0):
            raise ValueError("GOAT: pool images are needed by, and only by, the pool source")
        batch = images if num_pool == 0 else torch.cat([images, pool_images.flatten(0, 1)])
        with attack_mode(model), torch.no_grad():
            bank = model(batch).float()
        weights = guide_weights(self.config, bank[:b], labels, num_pool)
        packed = pack_bank_guides(bank, None, weights)
        c = self.config
        return perturb(model, images, packed, optimiser="pgd", eps=c.eps, step=c.step,
                       max_iter=c.iters, rand_start=True, norm=c.norm)
