"""Universal adversarial perturbations (UAP): one delta for every image.

After Yang et al., "Learning to Attack Real-World Models for Person Re-identification via
Virtual-Guided Meta-Learning" (AAAI 2021, MetaAttack) and "Towards Robust Person
Re-identification by Defending Against Universal Attackers" (TPAMI 2022).

A universal perturbation is a single tensor delta (3, H, W) at the model's input size,
applied in pixel space as ``clamp(x + delta, 0, 1)`` with ``|delta| <= eps/255``. It is
learned once, on the *training* split of a source dataset against a source model (in eval
mode), then added unchanged to any query. What is learned is the same thing the per-image
attacks learn (a perturbation that moves features away from their identity), only planned
for the whole distribution at once:

* guides are chosen once from clean features (``UniversalGuides``): k-means centroids of the
  L2-normalised training features (k = min(512, N / 4)), and for each image its nearest
  centroid (pushing) and furthest centroid (pulling); the ``batch`` loss picks them inside
  each P x K batch instead;
* the objective (to maximise, like the guided loss) is one of ``UAP_LOSSES``:
    ``centroid``  MetaAttack's: -(10 mean[d(f, c-) - d(f, c+) + 0.5]_+ + label hinge), with
                  d the Euclidean distance of L2-normalised features and the label hinge
                  relu(mean <f, c_own> - mean max_{j != own} <f, c_j>);
    ``batch``     the TPAMI paper's: -10 mean[d(f, n) - d(f, p) + 0.5]_+ with p the furthest
                  same-identity and n the furthest other-identity clean feature of the batch;
    ``guided``    ours, a universal FNA on the project's one guided loss (``GuidedLoss``,
                  cosine): push from the image's own clean feature (+1), pull towards its
                  furthest centroid (-1);
* the optimiser is MI-SGD (``mi_sgd_step``): g <- grad / ||grad||_1, m <- m + g,
  delta <- clip_eps(delta + alpha sign(m)) (ascent on the objective), alpha = step/255
  (default eps/10), multiplied by exp(-decay) every epoch;
* with a meta dataset (``meta_step``, first-order): delta' = clip_eps(delta + alpha sign(m +
  g_src / ||g_src||_1)), then the update uses g = grad L_src(delta) + grad L_meta(delta').

Per step the learning costs one forward/backward pass of the batch (two with a meta batch):
clean features, centroids and guide assignments are computed once before the first epoch.
Evaluation reuses the per-image attacks' path: ``AdditivePlan`` is a plan whose perturbation
is added rather than optimised (the learned delta, or random sign noise of the same budget
as the baseline), and ``reid.evaluation.attack_loop.attack_split`` runs it like any other attack.
"""

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import scipy.cluster.vq
import torch
import torch.nn.functional as F

from .core import attack_mode
from .guides import PlanBase, tensors_to
from .loss import GuidedLoss, pack_bank_guides

from reid.runtime import ReidError, atomic_path, image_generator, load_torch_file

UAP_LOSSES = ("centroid", "batch", "guided")
UAP_FORMAT = "reid-uap-1"


@dataclass(frozen=True)
class UapConfig:
    """How a universal perturbation is learned (recorded in ``uap.pt``)."""

    loss: str = "centroid"
    eps: float = 8.0                 # /255
    epochs: int = 5
    step: Optional[float] = None     # /255; None = eps / 10
    decay: float = 0.01              # alpha *= exp(-decay) per epoch
    margin: float = 0.5
    weight: float = 10.0
    max_clusters: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.loss not in UAP_LOSSES:
            raise ReidError(f"--uap-loss {self.loss!r}: expected one of {', '.join(UAP_LOSSES)}")
        if not (math.isfinite(self.eps) and 0 < self.eps <= 255):
            raise ReidError(f"--eps {self.eps:g}: must be in (0, 255] (an L-inf budget in /255 units)")
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 1:
            raise ReidError(f"--uap-epochs {self.epochs}: expected an integer >= 1")
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise ReidError(f"--uap-step {self.step:g}: must be a finite number > 0 (in /255 units)")

    @property
    def alpha(self):
        """The first epoch's step, as a fraction of 1."""
        return (self.eps / 10.0 if self.step is None else self.step) / 255.0


# --------------------------------------------------------------------------- guides


def kmeans_centroids(feats, k, seed=0):
    """k-means (scipy, k-means++ start, seeded) of L2-normalised features -> (k, D), unit rows."""
    x = F.normalize(torch.as_tensor(feats).float(), dim=1).cpu().numpy().astype(np.float64)
    centroids, _ = scipy.cluster.vq.kmeans2(x, int(k), minit="++", seed=np.random.default_rng(seed))
    return F.normalize(torch.from_numpy(centroids).float(), dim=1)


def num_clusters(n, max_clusters=512):
    """The number of centroids for n training images: min(max_clusters, n // 4), at least 2."""
    return max(2, min(int(max_clusters), n // 4))


def centroid_assignment(feats, centroids):
    """(nearest, furthest) centroid of each feature by cosine similarity, each (N,) long."""
    scores = F.normalize(feats, dim=1) @ centroids.T
    return scores.argmax(1), scores.argmin(1)


def batch_guides(feats, pids):
    """In-batch guides of each image: (furthest same-identity, furthest other-identity) rows.

    feats (B, D) clean features (any space; distances are Euclidean), pids (B,). An image
    alone with its identity gets itself as positive; a batch of one identity gets the
    image itself as negative (a zero hinge term rather than a wrong pull).
    """
    d = torch.cdist(feats, feats)
    same = pids.view(-1, 1) == pids.view(1, -1)
    pos = d.masked_fill(~same, -1.0).argmax(1)
    has_other = (~same).any(1)
    neg = d.masked_fill(same, -1.0).argmax(1)
    neg = torch.where(has_other, neg, torch.arange(len(pids), device=feats.device))
    return pos, neg


@dataclass(frozen=True)
class UniversalGuides:
    """Clean guides of one dataset's training split, computed once before learning.

    ``feats`` (N, D) L2-normalised clean features in dataset order, ``pids`` (N,) training
    labels, ``centroids`` (K, D) unit rows, ``pos`` / ``neg`` (N,) nearest / furthest centroid.
    """

    feats: torch.Tensor
    pids: torch.Tensor
    centroids: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    @classmethod
    def build(cls, feats, pids, max_clusters=512, seed=0):
        feats = F.normalize(torch.as_tensor(feats).float(), dim=1)
        if len(feats) < 8:
            raise ReidError(f"a universal perturbation needs at least 8 training images, got {len(feats)}")
        centroids = kmeans_centroids(feats, num_clusters(len(feats), max_clusters), seed).to(feats.device)
        pos, neg = centroid_assignment(feats, centroids)
        return cls(feats, torch.as_tensor(pids, device=feats.device).long(), centroids, pos, neg)

    def to(self, device):
        return tensors_to(self, device)


def hinge(f, positive, negative, margin):
    """[d(f, negative) - d(f, positive) + margin]_+ per row: small when f is near negative."""
    return F.relu((f - negative).norm(dim=1) - (f - positive).norm(dim=1) + margin)


def uap_objective(config, features, rows, guides):
    """The objective to maximise for perturbed ``features`` (B, D) of training images ``rows``."""
    f = F.normalize(features, dim=1)
    if config.loss == "centroid":
        c = guides.centroids
        pair = hinge(f, c[guides.pos[rows]], c[guides.neg[rows]], config.margin).mean()
        scores = f @ c.T
        own = F.one_hot(guides.pos[rows], len(c)).bool()
        label = F.relu(scores[own].mean() - scores.masked_fill(own, float("-inf")).amax(1).mean())
        return -(config.weight * pair + label)
    if config.loss == "batch":
        clean = guides.feats[rows]
        pos, neg = batch_guides(clean, guides.pids[rows])
        return -config.weight * hinge(f, clean[pos], clean[neg], config.margin).mean()
    # guided: the per-image attacks' loss, with the guides of a universal FNA
    bank = torch.cat([guides.feats, guides.centroids])
    index = torch.stack([rows, len(guides.feats) + guides.neg[rows]], 1)
    weight = torch.tensor([1.0, -1.0], device=f.device).expand(len(rows), 2)
    return GuidedLoss(cosine=True)(features, pack_bank_guides(bank, index, weight))


# --------------------------------------------------------------------------- optimiser


def apply_delta(images, delta):
    """Perturbed images clamp(images + delta, 0, 1); delta (3, H, W) broadcasts over the batch."""
    return (images + delta.to(images.device, images.dtype)).clamp(0.0, 1.0)


def mi_sgd_step(delta, momentum, grad, alpha, eps):
    """One MI-SGD ascent step; returns (delta, momentum). eps and alpha as fractions of 1."""
    momentum = momentum + grad / grad.abs().sum().clamp_min(1e-12)
    return (delta + alpha * momentum.sign()).clamp(-eps, eps), momentum


def meta_step(delta, momentum, grad_src, meta_grad, alpha, eps):
    """The first-order meta update: look ahead with the source gradient, add the meta
    gradient taken there. ``meta_grad(delta')`` returns grad L_meta at delta'."""
    ahead = momentum + grad_src / grad_src.abs().sum().clamp_min(1e-12)
    delta_ahead = (delta + alpha * ahead.sign()).clamp(-eps, eps)
    return mi_sgd_step(delta, momentum, grad_src + meta_grad(delta_ahead), alpha, eps)


def objective_grad(model, config, images, rows, guides, delta):
    """(objective value, d objective / d delta) for one batch; model already in attack mode."""
    d = delta.detach().clone().requires_grad_(True)
    value = uap_objective(config, model(apply_delta(images, d)).float(), rows, guides)
    (grad,) = torch.autograd.grad(value, d)
    return float(value.detach()), grad


def _cycle(loader):
    while True:
        yield from loader


def learn_uap(model, loader, guides, config, input_size, *, meta_loader=None, meta_guides=None,
              device="cpu", progress=None, log=print):
    """Learn a universal perturbation; returns (delta (3, H, W) on CPU, per-epoch history).

    ``loader`` yields training batches (images, labels, camids, indices) of the split that
    ``guides`` describes (indices are its rows); ``meta_loader`` / ``meta_guides`` the meta
    dataset's, if any. ``progress(iterable, desc)`` wraps the batch loop (a progress bar).
    """
    eps = config.eps / 255.0
    delta = torch.zeros(3, *input_size, device=device)
    momentum = torch.zeros_like(delta)
    guides = guides.to(device)
    meta_batches = None
    if meta_loader is not None:
        meta_guides = meta_guides.to(device)
        meta_batches = _cycle(meta_loader)
    history = []
    with attack_mode(model):
        for epoch in range(config.epochs):
            alpha = config.alpha * math.exp(-config.decay * epoch)
            total, n = 0.0, 0
            batches = loader if progress is None else progress(loader, f"UAP epoch {epoch}")
            for images, _, _, rows in batches:
                images, rows = images.to(device), rows.to(device)
                value, grad = objective_grad(model, config, images, rows, guides, delta)
                if meta_batches is None:
                    delta, momentum = mi_sgd_step(delta, momentum, grad, alpha, eps)
                else:
                    m_images, _, _, m_rows = next(meta_batches)
                    m_images, m_rows = m_images.to(device), m_rows.to(device)

                    def meta_grad(d):
                        return objective_grad(model, config, m_images, m_rows, meta_guides, d)[1]

                    delta, momentum = meta_step(delta, momentum, grad, meta_grad, alpha, eps)
                total, n = total + value, n + 1
            history.append({"epoch": epoch, "objective": total / max(n, 1), "alpha": alpha * 255.0})
            log(f"UAP epoch {epoch}: objective {total / max(n, 1):.4f} (step {alpha * 255:.3f}/255)")
    return delta.detach().cpu(), history


# --------------------------------------------------------------------------- evaluation plans


@dataclass(frozen=True)
class AdditivePlan(PlanBase):
    """A perturbation added to each attacked image without optimisation: a universal delta
    (``delta`` set), the Mis-Ranking generator's (``generator`` set: one forward pass per
    batch) or uniform random sign noise of the budget (neither set: drawn per image from
    (seed, image index) so results do not depend on batches).

    Quacks like ``AttackPlan`` for ``attack_batch`` / ``attack_split``.
    """

    name: str
    feats: torch.Tensor
    attacked: torch.Tensor
    delta: Optional[torch.Tensor] = None
    eps: float = 0.0                 # /255, for noise
    seed: int = 0
    num_fallback: int = 0
    generator: Optional[torch.nn.Module] = None

    def iterations(self, max_iter):
        return 0

    @property
    def random(self):
        """Noise is drawn anew each run; a delta or a generator's output is the same."""
        return self.delta is None and self.generator is None

    def apply(self, images, rows):
        """The perturbed version of ``images`` (B, 3, H, W), the attacked set's rows ``rows``."""
        if self.delta is not None:
            return apply_delta(images, self.delta)
        if self.generator is not None:
            with torch.no_grad():
                return self.generator.perturb(images)
        signs = torch.stack([
            torch.randint(0, 2, images.shape[1:], generator=image_generator(self.seed, r))
            for r in rows.tolist()]).to(images.device)
        return (images + (2 * signs.to(images.dtype) - 1) * (self.eps / 255.0)).clamp(0.0, 1.0)


def universal_plan(name, feats, pids, delta=None, eps=0.0, seed=0):
    """The plan of a universal perturbation (``delta`` a tensor), of a generator (``delta`` a
    module: ``misrank.PerturbationGenerator``) or of sign noise (``delta`` None)."""
    feats = torch.as_tensor(feats).float()
    attacked = torch.as_tensor(pids, device=feats.device).long().reshape(-1) > 0
    if isinstance(delta, torch.nn.Module):
        return AdditivePlan(name, feats, attacked, None, float(eps), int(seed), generator=delta)
    return AdditivePlan(name, feats, attacked, None if delta is None else delta.float(), float(eps), int(seed))


# --------------------------------------------------------------------------- files


def save_uap(path, delta, config, **info):
    """Write ``uap.pt`` atomically: the delta, its budget and how it was learned."""
    record = {"format": UAP_FORMAT, "delta": delta.detach().cpu().float(), "eps": float(config.eps),
              "input_size": list(delta.shape[1:]), "config": asdict(config), **info}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: the archive's records are named
        torch.save(record, f)                               # "archive/", not after the temporary file


def load_uap(path, input_size=None):
    """Read a ``uap.pt``; returns (delta (3, H, W), record). ``input_size`` (H, W): a delta of
    another size is resized bilinearly (``record["resized_from"]`` says so). Every problem is a
    one-line ReidError."""
    record = load_torch_file(path, "universal perturbation file")
    if not isinstance(record, dict) or not isinstance(record.get("delta"), torch.Tensor) \
            or not isinstance(record.get("eps"), (int, float)):
        raise ReidError(f"--uap {path} is not a universal perturbation file (expected a dict with "
                        f"'delta' (3, H, W) and 'eps', as gen_adv.py -a UAP writes)")
    delta = record["delta"].float()
    if delta.dim() != 3 or delta.shape[0] != 3 or min(delta.shape[1:]) < 1:
        raise ReidError(f"--uap {path}: delta has shape {tuple(delta.shape)}, expected (3, H, W)")
    if not torch.isfinite(delta).all():
        raise ReidError(f"--uap {path}: delta holds non-finite values")
    largest = float(delta.abs().max()) * 255.0
    if largest > record["eps"] + 1e-3:
        raise ReidError(f"--uap {path}: delta reaches {largest:.3f}/255, above its recorded eps "
                        f"{record['eps']:g}/255")
    if input_size is not None and tuple(delta.shape[1:]) != tuple(input_size):
        record = {**record, "resized_from": list(delta.shape[1:])}
        eps = record["eps"] / 255.0
        delta = F.interpolate(delta[None], size=tuple(input_size), mode="bilinear",
                              align_corners=False)[0].clamp(-eps, eps)
    return delta, record
