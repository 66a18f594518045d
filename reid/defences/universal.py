"""Training against universal perturbations (Yang et al., TPAMI 2022, "Towards Robust Person
Re-identification by Defending Against Universal Attackers").

Two pieces, both plugged into the one training loop (``reid.training.train_epoch``):

``UapDefence`` is the loop's ``prepare_batch``. For every training batch of B images a random
half (B // 2 rows, drawn from a generator seeded with (seed, epoch, step), so a run is
reproducible and ``--resume`` exact) is perturbed with a universal perturbation delta
(3, H, W) *in pixel space*, ``clamp(x + delta, 0, 1)`` (``reid.attacks.universal.apply_delta``),
and appended to the batch with the same labels: the step trains on B + B // 2 images, each
perturbed copy beside its clean original. The delta is

  ``file``    a fixed universal perturbation learned beforehand against a model
              (``gen_adv.py -a UAP`` writes ``uap.pt``): the TPAMI paper's defence;
  ``online``  ours, after Shafahi et al. (AAAI 2020, universal adversarial training): delta
              starts at 0 and, before each batch is perturbed, takes one MI-SGD step
              (``mi_sgd_step``, step eps / 10, budget eps) against the current model. Its
              objective is MetaAttack / TPAMI's in-batch hinge (``UapConfig(loss="batch")``:
              for each perturbed image, the furthest same-identity and the furthest
              other-identity *clean* feature of the whole batch, weight 10, margin 0.5, on
              L2-normalised features), evaluated by ``uap_objective`` itself. Clean features
              come from one no-grad forward pass in eval mode; the gradient with respect to
              delta is taken in eval mode with frozen parameters (``attack_mode``), as GOAT
              does, on the half that is about to be perturbed. Delta and its momentum are
              part of the training state (checkpoints hold them).

``MetaObjective`` replaces ``reid.training.Objective`` for the paper's meta-learning branch
(``--meta-dataset``), first order: per step, with L_src the usual loss of the (perturbed and
appended) batch, params' = params - meta_lr * grad L_src (the inner gradient detached), and
L_meta(params') the batch-hard triplet loss (soft margin) on the features of a P x K batch of
the meta dataset's training split, perturbed the same way. The meta dataset's identities are
not the classifier's, so L_meta is a metric loss for every model kind. The step minimises
L_src + L_meta; its gradient, grad L_src(params) + grad L_meta(params'), is what one backward
pass of L_src + L_meta through the first-order graph gives; the returned loss reuses the inner
gradient instead of backpropagating L_src a second time (same gradient, same value). The meta
forward pass runs in train mode like the source one, so BatchNorm running statistics see the
meta batches too.

Cost per step, in passes of a clean batch of B images (forward 1, backward about 2, so a
clean step is 3): ``file`` trains on 1.5 B (4.5, ~1.5x); ``online`` adds a no-grad clean
forward (1) and the delta gradient on B / 2 images (forward 0.5, input-only backward about
0.5), ~2.2x; ``--meta-dataset`` adds the meta batch's forward and backward (~1.5 B: +4.5).
"""

import os
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from reid.attacks import (UapConfig, UniversalGuides, apply_delta, attack_mode, load_uap, mi_sgd_step,
                          uap_objective)
from reid.runtime import ReidError, check_number, file_sha256
from reid.training import batch_hard_triplet_loss

DEFENCE_MODES = ("file", "online")
ONLINE = "online"
DEFAULT_EPS = 8.0  # /255, the online delta's budget


@dataclass(frozen=True)
class UapDefenceConfig:
    """What a ``--uap-adv`` run does; stored in its checkpoints (``uap_adv``) so a resume can check it."""

    mode: str                               # one of DEFENCE_MODES
    eps: float                              # /255: the online budget, or the file's recorded one
    file: Optional[str] = None              # file: absolute path of the uap.pt
    sha256: Optional[str] = None            # file: its SHA-256
    meta_dataset: Optional[str] = None      # absolute path of the meta dataset, if any
    meta_dataset_kind: Optional[str] = None
    meta_lr: Optional[float] = None

    def __post_init__(self):
        if self.mode not in DEFENCE_MODES:
            raise ValueError(f"UapDefenceConfig.mode {self.mode!r}: expected one of {DEFENCE_MODES}")

    @property
    def step(self):
        """The online MI-SGD step in /255 (eps / 10)."""
        return self.eps / 10.0

    def settings(self):
        """What a resumed run must keep: everything but where the file lies (its content counts)."""
        return {k: v for k, v in asdict(self).items() if k != "file"}

    def describe(self):
        if self.mode == ONLINE:
            what = (f"online delta (one MI-SGD step of {self.step:g}/255 per batch against the current "
                    f"model), eps {self.eps:g}/255")
        else:
            what = f"fixed delta {self.file} (eps {self.eps:g}/255)"
        text = f"universal-perturbation defence: {what}; a random half of each batch perturbed and appended"
        if self.meta_dataset:
            text += (f"; meta branch on {self.meta_dataset} ({self.meta_dataset_kind}, triplet loss, "
                     f"inner lr {self.meta_lr:g})")
        return text


def check_defence_flags(uap_adv, adv=None, eps=None, meta_dataset=None, meta_dataset_kind=None,
                        meta_lr=None):
    """train.py's defence flags without touching files; a ReidError (one line) if they clash."""
    if uap_adv is not None and adv:
        goat = adv in (True, "goat")
        raise ReidError(f"--uap-adv and {'--adv' if goat else '--defence ' + adv}: choose one defence (universal "
                        f"perturbations or {'GOAT' if goat else adv.upper()})")
    if uap_adv is None:
        given = [flag for flag, value in (("--uap-eps", eps), ("--meta-dataset", meta_dataset),
                                          ("--meta-dataset-kind", meta_dataset_kind), ("--meta-lr", meta_lr))
                 if value is not None]
        if given:
            raise ReidError(f"{given[0]}: only used with --uap-adv FILE|online")
        return
    if meta_dataset is None:
        given = [flag for flag, value in (("--meta-dataset-kind", meta_dataset_kind), ("--meta-lr", meta_lr))
                 if value is not None]
        if given:
            raise ReidError(f"{given[0]}: only used with --meta-dataset")
    if uap_adv == "":
        raise ReidError("--uap-adv: expected a uap.pt file or 'online'")
    if eps is not None:
        if uap_adv != ONLINE:
            raise ReidError(f"--uap-eps: only for --uap-adv online (the budget of {uap_adv} is the file's own)")
        check_number("--uap-eps", eps, 0, 255, strict=True)
    check_number("--meta-lr", meta_lr, 0, strict=True)


def defence_config(uap_adv, input_size, eps=None, meta_dataset=None, meta_dataset_kind=None, meta_lr=None):
    """The settings and the starting delta (3, H, W) of a ``--uap-adv`` run: the file is read
    (and resized to ``input_size``) now, so a bad one stops the run before any work."""
    meta = {}
    if meta_dataset is not None:
        meta = {"meta_dataset": os.path.abspath(meta_dataset), "meta_dataset_kind": meta_dataset_kind,
                "meta_lr": float(meta_lr)}
    if uap_adv == ONLINE:
        eps = DEFAULT_EPS if eps is None else float(eps)
        return UapDefenceConfig(ONLINE, eps, **meta), torch.zeros(3, *input_size)
    if os.path.isdir(uap_adv):
        raise ReidError(f"--uap-adv {uap_adv}: is a folder, expected a uap.pt file (or 'online')")
    if not os.path.isfile(uap_adv):
        raise ReidError(f"--uap-adv {uap_adv}: no such file (expected a uap.pt from gen_adv.py -a UAP, or 'online')")
    try:
        delta, record = load_uap(uap_adv, input_size)
    except ReidError as err:   # its messages name gen_adv.py's --uap
        message = str(err)
        message = message[len("--uap "):] if message.startswith("--uap ") else message
        raise ReidError(f"--uap-adv: {message}") from None
    config = UapDefenceConfig("file", float(record["eps"]), os.path.abspath(uap_adv), file_sha256(uap_adv), **meta)
    if record.get("resized_from"):
        print(f"note: --uap-adv {uap_adv}: delta resized from {record['resized_from'][0]}x"
              f"{record['resized_from'][1]} to {input_size[0]}x{input_size[1]}")
    return config, delta


def batch_guides_of(clean, labels):
    """A ``UniversalGuides`` for one batch: its clean features (L2-normalised) and labels, which
    is all the ``batch`` objective reads (it has no centroids)."""
    feats = F.normalize(clean.float(), dim=1)
    none = torch.zeros(0, dtype=torch.long, device=feats.device)
    return UniversalGuides(feats, labels.long(), feats.new_zeros(0, feats.shape[1]), none, none)


def half_objective_grad(model, config, images, labels, rows, delta):
    """(objective, d objective / d delta) of the ``batch`` objective with only ``rows`` perturbed.

    Guides are chosen among the whole batch's clean features; the unperturbed rows keep their
    clean features (constants), so the gradient is the perturbed rows'. One no-grad clean
    forward of the batch and one forward / input backward of ``rows``, in attack mode (eval,
    parameters frozen; the caller's state comes back after).
    """
    with attack_mode(model):
        with torch.no_grad():
            clean = model(images).float()
        guides = batch_guides_of(clean, labels)
        d = delta.detach().clone().requires_grad_(True)
        feats = clean.index_put((rows,), model(apply_delta(images[rows], d)).float())
        value = uap_objective(config, feats, torch.arange(len(images), device=images.device), guides)
        (grad,) = torch.autograd.grad(value, d)
    return float(value.detach()), grad


def _seed(*parts):
    """One 63-bit seed from several integers (seed, epoch, step, stream)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % (1 << 63)
    return value


class UapDefence:
    """``prepare_batch`` of the training loop: returns (batch + its perturbed random half, labels).

    ``start_epoch(epoch)`` before each epoch (the half of step s of epoch e is drawn from
    (seed, e, s), so a resumed run draws the same). ``state()`` / ``load_state()``: the
    checkpoint record, with the online delta and momentum.
    """

    def __init__(self, config: UapDefenceConfig, delta, momentum=None, seed=0):
        self.config, self.seed = config, int(seed)
        self.delta = delta.detach().float().clone()
        self.momentum = torch.zeros_like(self.delta) if momentum is None else momentum.detach().float().clone()
        self.objective = UapConfig(loss="batch", eps=config.eps)
        self.start_epoch(0)

    @property
    def online(self):
        return self.config.mode == ONLINE

    def start_epoch(self, epoch):
        self.epoch, self.step, self.total, self.updates = int(epoch), -1, 0.0, 0

    def rows(self, batch_size, stream=0):
        """The B // 2 rows of this step's batch to perturb (stream 0: the training batch,
        1: the meta batch), sorted."""
        gen = torch.Generator().manual_seed(_seed(self.seed, self.epoch, self.step, stream))
        return torch.randperm(batch_size, generator=gen)[: batch_size // 2].sort().values

    def perturb_and_append(self, images, labels, rows=None, stream=0):
        """(images + their perturbed rows, labels + theirs); ``rows`` drawn for this step if None."""
        if rows is None:
            rows = self.rows(len(images), stream)
        rows = rows.to(images.device)
        adv = apply_delta(images[rows], self.to(images.device).delta)
        return torch.cat([images, adv]), torch.cat([labels, labels[rows]])

    def to(self, device):
        """Keep delta and momentum on the training device (moved once, not per batch)."""
        if self.delta.device != torch.device(device):
            self.delta, self.momentum = self.delta.to(device), self.momentum.to(device)
        return self

    def update(self, model, images, labels, rows):
        """One MI-SGD ascent step of the online delta on this batch (``rows`` perturbed)."""
        self.to(images.device)
        value, grad = half_objective_grad(model, self.objective, images, labels, rows.to(images.device),
                                          self.delta)
        eps = self.config.eps / 255.0
        self.delta, self.momentum = mi_sgd_step(self.delta, self.momentum, grad, self.objective.alpha, eps)
        self.total, self.updates = self.total + value, self.updates + 1
        return value

    def __call__(self, model, images, labels):
        self.step += 1
        rows = self.rows(len(images))
        if self.online:
            self.update(model, images, labels, rows)
        return self.perturb_and_append(images, labels, rows)

    def epoch_stats(self):
        """The mean online objective over the epoch's steps (before each update), if online."""
        return {"uap_objective": self.total / self.updates} if self.updates else {}

    def state(self):
        """The ``uap_adv`` checkpoint record: the settings, plus the online delta and momentum."""
        record = asdict(self.config)
        if self.online:
            record.update(delta=self.delta.detach().cpu().clone(), momentum=self.momentum.detach().cpu().clone())
        return record

    def load_state(self, record):
        """Continue from a checkpoint's ``uap_adv`` record (online: its delta and momentum)."""
        if self.online and isinstance(record.get("delta"), torch.Tensor):
            if record["delta"].shape != self.delta.shape:
                raise ReidError(f"the checkpoint's online delta is {tuple(record['delta'].shape)}, "
                                f"this run's input size needs {tuple(self.delta.shape)}")
            self.delta = record["delta"].float().to(self.delta.device)
            self.momentum = record["momentum"].float().to(self.delta.device)


def saved_settings(record):
    """The settings part of a checkpoint's ``uap_adv`` record (None stays None)."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in ("file", "delta", "momentum")}


class MetaObjective:
    """The training objective with the TPAMI paper's meta branch (first-order MAML); see the module.

    ``inner``: the plain objective (``reid.training.Objective``), the loss L_src. ``defence``: the
    ``UapDefence`` whose delta and step perturb the meta batches too. ``make_batches(epoch,
    cycle)``: an iterable of the meta dataset's training batches (images, labels, ...), restarted
    with the next ``cycle`` when it runs out within an epoch. ``start_epoch(epoch)`` before each
    epoch.
    """

    def __init__(self, inner, defence, meta_lr, make_batches):
        self.inner, self.defence, self.meta_lr, self.make_batches = inner, defence, float(meta_lr), make_batches
        self.kind = inner.kind
        self.start_epoch(0)

    def start_epoch(self, epoch):
        self.epoch, self.cycle, self.batches = int(epoch), 0, None
        self.src_total, self.meta_total, self.n = 0.0, 0.0, 0

    def next_batch(self):
        for _ in range(2):
            if self.batches is None:
                self.batches = iter(self.make_batches(self.epoch, self.cycle))
            try:
                return next(self.batches)[:2]
            except StopIteration:
                self.batches, self.cycle = None, self.cycle + 1
        raise ReidError("--meta-dataset: its training split gives no P x K batch")

    def meta_loss(self, model, params, images, labels):
        """L_meta at ``params`` (a dict name -> tensor over the model's parameters)."""
        feats = functional_call(model, params, (images,))
        return batch_hard_triplet_loss(feats, labels, soft_margin=True)

    def __call__(self, model, images, labels):
        loss_src, acc = self.inner(model, images, labels)
        meta_images, meta_labels = self.next_batch()
        meta_images = meta_images.to(images.device, non_blocking=True)
        meta_labels = meta_labels.to(images.device, non_blocking=True)
        meta_images, meta_labels = self.defence.perturb_and_append(meta_images, meta_labels, stream=1)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss_src, [p for _, p in named], allow_unused=True)
        used = [(n, p, g) for (n, p), g in zip(named, grads) if g is not None]
        fast = {n: p - self.meta_lr * g for n, p, g in used}      # g carries no graph: first order
        loss_meta = self.meta_loss(model, fast, meta_images, meta_labels)
        # grad L_src(params) + grad L_meta(params'), without a second backward pass of L_src
        reuse = sum((p * g).sum() for _, p, g in used) if used else loss_src.new_zeros(())
        loss = loss_src.detach() + loss_meta + (reuse - reuse.detach())
        self.src_total += float(loss_src.detach())
        self.meta_total += float(loss_meta.detach())
        self.n += 1
        return loss, acc

    def epoch_stats(self):
        if not self.n:
            return {}
        return {"src_loss": self.src_total / self.n, "meta_loss": self.meta_total / self.n}


def meta_batch_size(batch_size, num_instances):
    """P x K meta batches: K = -ni, P = -b // K (at least 2 identities, for triplets)."""
    p = batch_size // num_instances
    if p < 2:
        raise ReidError(f"--meta-dataset: P x K meta batches need -b {batch_size} >= 2 x -ni {num_instances}")
    return p * num_instances


def meta_seed(seed, epoch, cycle):
    """The meta loader's seed for an epoch and a restart within it (its own stream)."""
    return _seed(seed, epoch, cycle, 7) % (1 << 62)


__all__ = ["DEFENCE_MODES", "MetaObjective", "UapDefence", "UapDefenceConfig", "batch_guides_of",
           "check_defence_flags", "defence_config", "half_objective_grad", "meta_batch_size", "meta_seed",
           "saved_settings"]
