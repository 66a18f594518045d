"""Guide selection: which features each attacked image is pushed from and pulled towards.

Computed once per run from clean features, with whole-set tensor operations (sorting by
identity, gathers, one distance matrix in row chunks), never a Python loop over images or
identities. The result is an ``AttackPlan``:

  bank    (M, D)  every distinct guide feature (guide-set features, own features, their
                  opposites, identity centroids: whichever the rule needs), in the loss's
                  feature space (L2-normalised in cosine mode);
  index   (N, K)  row of ``bank`` for each guide slot of each attacked-set image;
  weight  (N, K)  its weight; 0 = padding, so images with fewer guides need no filler.

Weights of the pushing guides (``weighting``; the same rule for every attack, and for GOAT):
  ``"reference"`` (default) the weighting of the paper's reference code: every pushing guide
                weighs 1, and when the guides come from the attacked set itself, the
                image's own clean feature joins them with weight m - n, m the size of the
                largest identity of the guide set and n the number of other images of the
                image's identity (the reference stacks every image of the identity, the
                image included, and pads the stack to m with the image's own feature). The
                own-feature term has no gradient at the clean image, but from the first
                step on it pushes like SMA, and it weighs most for identities with few
                images; measured on the same model, it makes IFGSM / MIFGSM / FNA
                stronger than ``"mean"`` (benchmarks/parity_reference.md).
  ``"mean"``     the pushing guides share a total weight of +1 (each of n gets 1/n) and the
                own feature is not a guide: the loss is the mean squared distance to the
                other images (FNA: mean_push ||f - g||^2 - ||f - c||^2).
A pulling guide weighs -1 in both. With ``single`` or guides from the other set
(``--cross_attack``) the own feature is never a guide, as in the reference.

Self exclusion: when the guide set is the attacked set (``guide_feats=None``), an image is
never one of its own "other images"; its own feature enters only through the weighting rule
above (or as the pushing guide of SMA and of the fallback). Images with pid <= 0 (0 = distractor, -1 = junk) are never
attacked and never used as guides or in centroids.
"""

import itertools
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from .loss import GuidedLoss, pack_bank_guides
from .optimisers import OPTIMISERS

PUSH_RULES = ("others", "self")
WEIGHTINGS = ("reference", "mean")
PULL_RULES = ("opposite", "furthest_centroid", "random_centroid")


class PlanBase:
    """What every plan of the attacked set shares (``AttackPlan`` here, the universal
    ``AdditivePlan``): ``attacked`` (N,) bool and ``feats`` (N, D) tensor fields."""

    def __len__(self):
        return len(self.attacked)

    @property
    def num_attacked(self):
        return int(self.attacked.sum())

    @property
    def device(self):
        return self.feats.device

    def to(self, device):
        """A copy with every tensor on ``device`` (do it once, before the batches)."""
        return tensors_to(self, device)


@dataclass(frozen=True)
class AttackPlan(PlanBase):
    """Everything an attack run needs besides the images; see the module docstring.

    ``attacked`` (N,) bool: images the attack perturbs (pid > 0). ``rand_start`` (N,) bool:
    images that start from a random point of the eps-ball (own feature as pushing guide).
    ``num_fallback``: images whose identity had no other image in the guide set.
    ``feats``: the attacked set's clean features as given (returned for unattacked images).
    """

    name: str
    spec: Any
    bank: torch.Tensor
    bank_sqnorm: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor
    attacked: torch.Tensor
    rand_start: torch.Tensor
    feats: torch.Tensor
    cosine: bool
    single: bool
    num_fallback: int

    def iterations(self, max_iter):
        """Forward/backward passes per attacked image."""
        return self.spec.iterations(max_iter)

    @property
    def random(self):
        """Whether a run draws anything at random: a random start (SMA, or an image whose identity
        has no other image), a random guide (``single``, ``random_centroid``), the optimiser (Square's
        windows; a random start is the plan's ``rand_start``, the optimisers' start point)."""
        return (bool((self.rand_start & self.attacked).any()) or self.single or self.spec.pull == "random_centroid"
                or OPTIMISERS[self.spec.optimiser].random)

    def guides(self, rows):
        """Guides (B, K, D) and weights (B, K) of the images at ``rows``."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return self.bank[self.index[rows]], self.weight[rows]

    def packed(self, rows):
        """The (B, D + 2) target of ``GuidedLoss`` for the images at ``rows``."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return pack_bank_guides(self.bank, self.index[rows], self.weight[rows], self.bank_sqnorm)

    def objective(self, rows):
        """(loss_fn, target) of the images at ``rows``: the guided loss and their packed guides."""
        return GuidedLoss(self.cosine), self.packed(rows)


def tensors_to(record, device):
    """A copy of the frozen dataclass ``record`` with every tensor field on ``device``."""
    moved = {f.name: getattr(record, f.name).to(device) for f in fields(record)
             if isinstance(getattr(record, f.name), torch.Tensor)}
    return replace(record, **moved)


class _Clusters:
    """The guide set grouped by identity (pid > 0 only): a sort, not a dict of lists."""

    def __init__(self, gpids):
        valid = (gpids > 0).nonzero().squeeze(1)
        sorted_pids, perm = torch.sort(gpids[valid], stable=True)
        self.order = valid[perm]                       # guide indices, grouped by pid
        self.pids, self.counts = torch.unique_consecutive(sorted_pids, return_counts=True)
        self.starts = self.counts.cumsum(0) - self.counts
        self.pos = torch.full_like(gpids, -1)          # guide index -> position in order
        self.pos[self.order] = torch.arange(len(self.order), device=gpids.device)

    def __len__(self):
        return len(self.pids)

    def lookup(self, pids):
        """Cluster index of each pid (any value where absent) and whether it is present."""
        if len(self) == 0:
            return torch.zeros_like(pids), torch.zeros_like(pids, dtype=torch.bool)
        c = torch.searchsorted(self.pids, pids).clamp(max=len(self) - 1)
        return c, self.pids[c] == pids

    def centroids(self, gf):
        cluster = torch.repeat_interleave(torch.arange(len(self), device=gf.device), self.counts)
        sums = torch.zeros(len(self), gf.shape[1], dtype=gf.dtype, device=gf.device)
        sums.index_add_(0, cluster, gf[self.order])
        return sums / self.counts.unsqueeze(1).to(gf.dtype)


def _uniform_below(n, generator, device):
    """Per-row uniform integer in [0, n) (0 where n == 0), from ``generator`` when given."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n.shape, generator=generator, device=gen_device).to(device)
    r = (u * n.to(u.dtype)).floor().long()
    return torch.minimum(r, (n - 1).clamp(min=0))


def _push_others(cl, c, present, attacked, same, single, generator, each):
    """Pushing guides = the other images of the same identity, as (index, weight, count).

    ``each``: every guide weighs 1 (the weights sum to n) instead of 1 / n."""
    n_rows = c.shape[0]
    device = c.device
    rows = torch.arange(n_rows, device=device)
    n = torch.where(attacked & present, cl.counts[c] - int(same), torch.zeros_like(c))
    n = n.clamp(min=0)
    start = cl.starts[c] if len(cl) else torch.zeros_like(c)
    last = max(len(cl.order) - 1, 0)
    order = cl.order if len(cl.order) else torch.zeros(1, dtype=torch.long, device=device)

    if single:
        slot = (start + _uniform_below(n, generator, device)).unsqueeze(1)
        valid = (n > 0).unsqueeze(1)
        weight = valid.float()
    else:
        k = torch.arange(int(n.max()) if n_rows else 0, device=device)
        slot = start.unsqueeze(1) + k
        valid = k < n.unsqueeze(1)
        weight = valid.float() if each else valid.float() / n.clamp(min=1).unsqueeze(1).float()
    if same:
        # Skip the image itself: slots at or after its own position move one further.
        self_pos = cl.pos[rows].unsqueeze(1)
        slot = slot + (slot >= self_pos).long()
    index = torch.where(valid, order[slot.clamp(max=last)], torch.zeros_like(slot))
    return index, weight, n


def _pull_centroid(rule, f, cent, c, present, attacked, generator, chunk):
    """Pulling guide = an other identity's centroid, as (cluster index, has-one mask)."""
    n_rows, n_clusters = f.shape[0], cent.shape[0]
    eligible = n_clusters - present.long()
    ok = attacked & (eligible > 0)
    if rule == "random_centroid":
        r = _uniform_below(eligible, generator, f.device)
        return r + (present & (r >= c)).long(), ok
    # furthest_centroid: argmax of squared distances, chunked to bound memory at N x chunk.
    best = torch.zeros(n_rows, dtype=torch.long, device=f.device)
    if n_clusters == 0:
        return best, ok
    cent_sq = cent.pow(2).sum(1)
    for s in range(0, n_rows, chunk):
        fs = f[s:s + chunk]
        d = fs.pow(2).sum(1, keepdim=True) - 2 * fs @ cent.T + cent_sq
        own = F.one_hot(c[s:s + chunk], n_clusters).bool() & present[s:s + chunk, None]
        best[s:s + chunk] = d.masked_fill(own, float("-inf")).argmax(1)
    return best, ok


def _pull_weight(mask):
    """-1 where ``mask``, 0 (padding) elsewhere, as an (N, 1) column."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill(mask, -1.0).unsqueeze(1)


def _as_feats(x, name):
    x = torch.as_tensor(x).detach()
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected float features (N, D), got {x.dtype} {tuple(x.shape)}")
    return x.float()


def _as_pids(p, n, device, name):
    p = torch.as_tensor(p, device=device).long().reshape(-1)
    if p.numel() != n:
        raise ValueError(f"{name}: {p.numel()} ids for {n} features")
    return p


def select_guides(name, spec, feats, pids, guide_feats=None, guide_pids=None, *,
                  single=False, cosine=False, generator=None, chunk=4096, weighting="reference"):
    """Build the ``AttackPlan`` of attack ``spec`` (see ``registry.ATTACKS``).

    ``guide_feats=None`` means the guide set *is* the attacked set (query attacks with query
    guides, gallery with gallery); otherwise it is the other set (``--cross_attack``).
    ``generator`` drives the random choices (single guide, random centroid). ``weighting``:
    one of ``WEIGHTINGS`` (see the module docstring).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r}: expected one of {WEIGHTINGS}")
    feats = _as_feats(feats, "feats")
    device = feats.device
    pids = _as_pids(pids, len(feats), device, "pids")
    same = guide_feats is None
    if same:
        if guide_pids is not None:
            raise ValueError("guide_pids given without guide_feats")
        gfeats, gpids = feats, pids
    else:
        gfeats = _as_feats(guide_feats, "guide_feats").to(device)
        gpids = _as_pids(guide_pids, len(gfeats), device, "guide_pids")
        if gfeats.shape[1] != feats.shape[1]:
            raise ValueError(f"feature sizes differ: {feats.shape[1]} vs {gfeats.shape[1]}")

    f = F.normalize(feats, dim=1) if cosine else feats
    gf = f if same else (F.normalize(gfeats, dim=1) if cosine else gfeats)
    n_rows = len(f)
    rows = torch.arange(n_rows, device=device)
    attacked = pids > 0
    cl = _Clusters(gpids)
    c, present = cl.lookup(pids)

    bank, index, weight = [], [], []

    def add(part, idx, w):
        # A part already in the bank (own features when the guide set is the attacked set)
        # is referenced again, not copied.
        offsets = itertools.accumulate((len(b) for b in bank), initial=0)
        offset = next((o for b, o in zip(bank, offsets) if b is part), None)
        if offset is None:
            offset = sum(len(b) for b in bank)
            bank.append(part)
        index.append(idx + offset)
        weight.append(w)

    fallback = torch.zeros_like(attacked)
    own = torch.zeros(n_rows, device=device)       # weight of the own feature as a pushing guide
    if spec.push == "others":
        each = weighting == "reference"
        idx, w, n = _push_others(cl, c, present, attacked, same, single, generator, each)
        add(gf, idx, w)
        fallback = attacked & (n == 0)
        if each and same and not single and len(cl):
            own = torch.where(attacked & (n > 0), (cl.counts.max() - n).float(), own)
    if spec.pull == "opposite":
        add(-f, rows.unsqueeze(1), _pull_weight(attacked))
    elif spec.pull in ("furthest_centroid", "random_centroid"):
        cent = cl.centroids(gf)
        j, ok = _pull_centroid(spec.pull, f, cent, c, present, attacked, generator, chunk)
        add(cent, j.unsqueeze(1), _pull_weight(ok))
        if spec.push is None:
            # Pull-only: an image with no other identity to pull towards has no guide at
            # all, so it falls back to pushing from itself like the others.
            fallback = attacked & ~ok
    self_push = attacked if spec.push == "self" else fallback
    own = own + self_push.float()
    if bool((own > 0).any()):
        add(f, rows.unsqueeze(1), own.unsqueeze(1))

    bank = torch.cat(bank) if bank else f.new_zeros(0, f.shape[1])
    if len(bank) == 0:              # keep index 0 valid for all-padding plans
        bank = f.new_zeros(1, f.shape[1])
    index = torch.cat(index, 1) if index else torch.zeros(n_rows, 0, dtype=torch.long,
                                                          device=device)
    weight = torch.cat(weight, 1) if weight else torch.zeros(n_rows, 0, device=device)
    bank = bank.contiguous()
    return AttackPlan(name=name, spec=spec, bank=bank, bank_sqnorm=bank.pow(2).sum(1),
                      index=index, weight=weight, attacked=attacked,
                      rand_start=self_push.clone(), feats=feats, cosine=bool(cosine),
                      single=bool(single), num_fallback=int(fallback.sum()))
