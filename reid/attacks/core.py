"""Running an attack: plan once per run, then perturb batch after batch.

``plan_attack`` validates the attack and selects every image's guides from clean features
(``guides.py``); ``attack_batch`` perturbs one batch of the attacked set with the attack's
advertorch optimiser (``optimisers.py``) on the guided loss (``loss.py``). Per batch the only
extra work is one gather of the batch's guides into the packed loss target, one optional
random start draw and one no-grad forward pass for the adversarial features: the iterations
themselves are advertorch's loop with an O(B * D) loss, no Python loop over samples.

During the attack the model is put in eval mode and its parameters stop requiring gradients
(so the backward pass computes input gradients only and leaves no ``.grad`` on the weights,
which matters when attacking inside a training loop); both are restored afterwards.

Two options of every optimiser live here, around the one call: ``restarts`` R (each image
keeps the best of R runs by its loss, the runs after the first from random starts of their
own) and ``eot`` K (expectation over transformation, for models that are random at
inference: the loss, and so its gradient, is the mean over K forward passes; the random
state of the model is seeded per batch from the run's seed and the batch's first row).
"""

import math
from contextlib import contextmanager, nullcontext

import torch

from .diversity import TransferModel
from .guides import select_guides
from .loss import GuidedLoss
from .optimisers import OPTIMISERS, l2_directions, linf_box, project_l2
from .ranking import ranking_plan
from .registry import ATTACKS, check_budget, check_single
from .targeted import targeted_plan

from reid.runtime import image_generator


def plan_attack(name, feats, pids, guide_feats=None, guide_pids=None, *, single=False,
                cosine=False, generator=None, weighting="reference", ranking=None, m=1, w=1):
    """Select the guides of attack ``name`` for every image of the attacked set, once per run.

    feats (N, D), pids (N,): the attacked set's clean features and identities (tensors or
    arrays); guide_feats (M, D), guide_pids (M,): the guide set when it is the *other* set
    (``--cross_attack``); leave them None to take guides from the attacked set itself.
    ``single``: one random pushing guide (FGSM / IFGSM / MIFGSM). ``cosine``: guides and loss
    in L2-normalised feature space. ``weighting``: ``"reference"`` or ``"mean"`` (see
    ``guides.py``). ``generator``: a ``torch.Generator`` for the random
    choices (None: the global RNG). Raises ReidError for an unknown name or a bad ``single``.
    ``ranking``: for the ranking-loss and targeted attacks, (camids (N,) of the attacked set,
    (features, pids, camids) of the other split's clean images, k) (see ``ranking.py``,
    ``targeted.py``); ``m`` / ``w``: the targeted attacks' candidates per query (QA) and
    queries per gallery image (CA).
    """
    name = check_single(name, single)
    if name not in ATTACKS:
        raise ValueError(f"{name} is not a per-image attack: build its plan with universal_plan")
    if ATTACKS[name].uses_gallery:
        if ranking is None:
            raise ValueError(f"{name} attacks the ranking: give ranking=(camids, other split, k)")
        camids, other, k = ranking
        if ATTACKS[name].loss == "targeted":
            return targeted_plan(name, ATTACKS[name], feats, pids, camids, other, m=m, w=w, cosine=cosine,
                                 generator=generator)
        return ranking_plan(name, ATTACKS[name], feats, pids, camids, other, k=k, cosine=cosine)
    return select_guides(name, ATTACKS[name], feats, pids, guide_feats, guide_pids,
                         single=single, cosine=cosine, generator=generator, weighting=weighting)


@contextmanager
def attack_mode(model):
    """Eval mode, parameters frozen, gradients enabled; the caller's state comes back after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _start_point(x, rand_start, eps, norm, generator, rows=None):
    """x, with the ``rand_start`` rows moved to a uniform random point of their ball ∩ [0, 1].

    L-inf: uniform in the box. L2: uniform in the ball (a Gaussian direction, radius
    eps * U^(1 / n) for n values per image), then clipped to [0, 1], which only shortens it.
    With ``rows`` (the images' positions in the attacked set) and a ``generator``, image i's
    start is drawn from its own generator, seeded with (``generator.initial_seed()``, i): the
    same start whatever the batch size or the process that attacks it. Otherwise the starts
    come from ``generator``'s (or the global) stream, in batch order."""
    if rand_start is None:
        return x
    if isinstance(rand_start, bool):
        rand_start = torch.full((len(x),), rand_start, dtype=torch.bool)
    sel = rand_start.to(x.device).nonzero().squeeze(1)
    if sel.numel() == 0:
        return x
    own = None
    if rows is not None and generator is not None:
        seed = generator.initial_seed()
        own = [image_generator(seed, i) for i in rows[sel.to(rows.device)].tolist()]

    def draw(fn, shape):
        """fn(shape) per selected image, from its own generator or from the shared stream."""
        if own is not None:
            return torch.stack([fn(shape, generator=g) for g in own]).to(x.device, x.dtype)
        gen_device = generator.device if generator is not None else x.device
        return fn((len(sel),) + shape, generator=generator, device=gen_device).to(x.device, x.dtype)

    x0 = x.clone()
    if norm == "linf":
        noise = draw(torch.rand, tuple(x.shape[1:]))
        lo, hi = linf_box(x[sel], eps)
        x0[sel] = torch.minimum(torch.maximum(x[sel] + (2 * noise - 1) * eps, lo), hi)
    else:
        direction = draw(torch.randn, tuple(x.shape[1:]))
        radius = eps * draw(torch.rand, ()).pow(1.0 / x[0].numel())
        x0[sel] = project(x[sel], x[sel] + l2_directions(direction) * radius.view(-1, *([1] * (x.dim() - 1))),
                          eps, norm)
    return x0


def project(x, adv, eps, norm="linf"):
    """``adv`` moved into (ball of radius eps around x) ∩ [0, 1], eps in [0, 1] pixel units.

    Both bounds hold exactly in the returned float values: L-inf clamps to the box; L2 shrinks
    the rows outside the ball to eps minus a margin of sqrt(n) * 2^-24 (n values per image),
    more than the rounding of the result to float32 can add back, and leaves the others as
    they are.
    """
    if norm == "linf":
        lo, hi = linf_box(x, eps)
        return torch.minimum(torch.maximum(adv, lo), hi)
    margin = math.sqrt(x[0].numel()) * 2.0 ** -24
    norms = (adv.double() - x.double()).flatten(1).norm(dim=1)
    outside = (norms > eps - margin) | (adv < 0).flatten(1).any(1) | (adv > 1).flatten(1).any(1)
    if not outside.any():
        return adv
    out = adv.clone()
    out[outside] = project_l2(x[outside], adv[outside], max(eps - margin, 0.0))
    return out


class EotModel(torch.nn.Module):
    """K forward passes of a model that is random at inference, side by side: (B, K * D)."""

    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, int(k)

    def forward(self, x):
        return torch.cat([self.model(x) for _ in range(self.k)], dim=1)


class EotLoss(torch.nn.Module):
    """The mean of ``loss_fn`` over the K feature blocks of an ``EotModel``'s output."""

    def __init__(self, loss_fn, k):
        super().__init__()
        self.loss_fn, self.k = loss_fn, int(k)

    def per_sample(self, features, target):
        return torch.stack([self.loss_fn.per_sample(f, target) for f in features.chunk(self.k, dim=1)]).mean(0)

    def forward(self, features, target):
        return self.per_sample(features, target).sum()


# Random starts of restart r >= 1 and the Square attack's draws come from image streams of
# their own: image i's generator is seeded with (seed, i + slot * 2**32).
_STREAM = 2 ** 32
_SQUARE_SLOT = 2 ** 16


def _perturb(model, x, loss_fn, y, optimiser, eps, step, max_iter, rand_start, generator, norm="linf",
             rows=None, restarts=1, eot=1, diversity=0.0, smoothing=0):
    """The core loop, budget already in [0, 1] pixel units. Returns the adversarial images."""
    opt = OPTIMISERS[optimiser]
    shaped = model if not (diversity or smoothing) else TransferModel(model, diversity, smoothing)
    predict = shaped if eot == 1 else EotModel(shaped, eot)
    score = model if eot == 1 else EotModel(model, eot)  # restarts compare their points without the techniques
    loss_fn = loss_fn if eot == 1 else EotLoss(loss_fn, eot)
    best, best_loss = None, None
    for restart in range(int(restarts)):
        start_rows = rows if restart == 0 or rows is None else rows + restart * _STREAM
        x0 = _start_point(x, rand_start if restart == 0 else True, eps, norm, generator, start_rows)
        extra = {}
        if opt.random:
            extra["generators"] = None if rows is None or generator is None else [
                image_generator(generator.initial_seed(), i + (_SQUARE_SLOT + restart) * _STREAM)
                for i in rows.tolist()]
        x_adv = opt.run(norm)(predict, loss_fn, x, x0, y, eps, step, max_iter, **extra)
        # One last projection: advertorch's momentum attack returns x0 + delta, which float
        # rounding can put one ulp outside [0, 1], and an L2 norm rounds too; this makes every
        # bound hold exactly.
        x_adv = project(x, x_adv.detach(), eps, norm)
        if restarts == 1:
            return x_adv
        with torch.no_grad():
            loss = loss_fn.per_sample(score(x_adv), y)
        if best is None:
            best, best_loss = x_adv, loss
        else:
            better = loss > best_loss
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_loss = torch.where(better, loss, best_loss)
    return best


@contextmanager
def seeded_model_rng(seed, device):
    """The global RNG (CPU, and ``device``'s if CUDA) seeded with ``seed`` inside, restored after:
    a model that is random at inference draws the same in a rerun of the same batches."""
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % 2 ** 63)
        yield


def perturb(model, images, packed, *, optimiser="pgd", eps=None, step=None, max_iter=15,
            rand_start=None, cosine=False, generator=None, norm="linf", loss=None):
    """Maximise the guided loss over ``images`` within the ball of radius eps (``norm``).

    The lower-level entry point (e.g. for adversarial training): ``packed`` is the (B, D + 2)
    target from ``pack_guides``; ``optimiser`` one of ``OPTIMISERS`` ("fgsm", "pgd",
    "momentum"); ``rand_start`` a bool or a (B,) bool mask of images to start from a uniform
    random point of the ball. ``norm="linf"``: eps and step in /255 units (default 5 and 1);
    ``norm="l2"``: an L2 radius and step in [0, 1] pixel units of the whole image (default
    0.5 and 2.5 eps / max_iter); see ``registry.check_budget``. Returns images in [0, 1].
    ``loss``: another loss module of the same interface (``per_sample(features, y)`` and its
    sum), ``packed`` then being its ``y`` (the hardness target of ``reid.defences.triplet``).
    """
    eps, step, max_iter = check_budget(eps, step, max_iter, norm=norm, input_size=images.shape[-2:])
    if optimiser not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {optimiser!r}; expected one of {list(OPTIMISERS)}")
    with attack_mode(model):
        loss = GuidedLoss(cosine) if loss is None else loss
        return _perturb(model, images.detach(), loss, packed.to(images.device), optimiser, eps,
                        step, max_iter, rand_start, generator, norm)


def _rows(batch_indices, batch_size, plan):
    if isinstance(batch_indices, slice):
        batch_indices = range(len(plan))[batch_indices]
    if isinstance(batch_indices, range):
        batch_indices = list(batch_indices)
    rows = torch.as_tensor(batch_indices, dtype=torch.long, device=plan.device).reshape(-1)
    if rows.numel() != batch_size:
        raise ValueError(f"attack_batch: {rows.numel()} indices for {batch_size} images")
    return rows


def attack_batch(model, images, plan, batch_indices, *, eps=None, step=None, max_iter=15,
                 generator=None, return_features=True, norm="linf", restarts=1, eot=1, diversity=0.0, smoothing=0):
    """Attack one batch of the attacked set.

    images (B, 3, H, W) in [0, 1]; ``batch_indices``: their positions in the attacked set
    (tensor, list, range or slice), i.e. rows of ``plan``. eps / step in /255 units for
    ``norm="linf"``, in L2 units of [0, 1] pixels for ``"l2"`` (see ``perturb``).
    Random starts: image i's from a generator seeded with (``generator.initial_seed()``, i),
    so they do not depend on the batches (None: the global RNG's stream).

    Returns ``(adv_images, adv_features)``: adv_images (B, 3, H, W) in [0, 1] with
    |adv - images| <= eps/255 (L-inf) or ||adv - images||_2 <= eps per image (L2); images
    ``restarts`` and ``eot``: see the module docstring (1: off); ``diversity`` P and
    ``smoothing`` K: the transfer techniques of ``diversity.py`` (0: off). Images
    the plan does not attack (pid <= 0) come back
    unchanged, with their clean features from the plan. adv_features (B, D) are the model's
    raw outputs (not normalised), from one no-grad forward pass on the attacked images
    (None if ``return_features`` is False).
    """
    eps, step, max_iter = check_budget(eps, step, max_iter, norm=norm, input_size=images.shape[-2:])
    if hasattr(plan, "apply") and norm != "linf":
        raise ValueError("universal perturbations are L-inf only")
    device = images.device
    rows = _rows(batch_indices, len(images), plan)
    adv = images.detach().clone()
    feats = plan.feats[rows].to(device) if return_features else None
    local = plan.attacked[rows].nonzero().squeeze(1)
    if local.numel() == 0:
        return adv, feats
    rows, local = rows[local], local.to(device)
    # A generator makes the run reproducible: the model's own randomness too (None: the global RNG's stream).
    seeded = nullcontext() if generator is None else seeded_model_rng(
        generator.initial_seed() * 1000003 + int(rows[0]), device)
    with attack_mode(model), seeded:
        if hasattr(plan, "apply"):  # a universal perturbation or noise: added, not optimised
            x_adv = plan.apply(adv[local], rows)
        else:
            loss_fn, target = plan.objective(rows)
            x_adv = _perturb(model, adv[local], loss_fn, target.to(device), plan.spec.optimiser, eps, step,
                             max_iter, plan.rand_start[rows], generator, norm, rows, restarts, eot, diversity,
                             smoothing)
        if return_features:
            with torch.no_grad():
                feats[local] = model(x_adv).to(feats.dtype)
    adv[local] = x_adv
    return adv, feats
