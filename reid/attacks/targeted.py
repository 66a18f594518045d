"""The deep-ranking attacks with a goal (Zhou et al., ECCV 2020 / TPAMI 2024, as RobRank names
them), measured the re-ID way: rows ``QA+``, ``QA-``, ``CA+``, ``CA-``, ``TMA``, ``LTM``,
``GTM``, ``GTT`` of the attack table, each a PGD loop over one ``TargetedLoss``.

Every goal is stated against the clean ranking of the Market-1501 protocol: a query ranks the
*valid* gallery items (its own identity seen by its own camera and junk, pid -1, removed;
distractors, pid 0, are non-matches); d is the Euclidean distance (of L2-normalised features
with ``--cosine``): it ranks as the evaluation's squared distance does, and measured against
RobRank's code on the same targets, hinges on the squared distance were weaker for QA- and
GTT (benchmarks/parity_robrank.md). The loss is maximised.

  QA+  the query rises M chosen gallery items of other identities (distractors included) to
       the top of its ranking:  -mean_c mean_x [d(q, c) - d(q, x)]_+ ,  x over its valid items;
  QA-  the query pushes M of its own true matches (its identity, another camera) to the
       bottom:  -mean_c mean_x [d(q, x) - d(q, c)]_+ ;
  SPQA+ semantics-preserving QA+: QA+ minus SP_XI (1) x the QA+ hinge of the query's SP_KEEP (5)
       nearest clean true matches, which stay near the top (the manipulation is hard to notice);
  CA+  a *gallery* image c rises in the rankings of W queries of other identities:
       -mean_w mean_x [d(c, q_w) - d(x, q_w)]_+ ,  x over q_w's valid items but c;
  CA-  a gallery image falls in the rankings of W queries of its own identity (queries it is
       a true match of): the mirror hinge;
  TMA  targeted mismatch (Tolias et al., ICCV 2019): the query's feature onto that of one
       gallery image of another identity drawn at random: cos(f(q), f(t));
  LTM  learning-to-mis-rank (RobRank's form of Wang et al., CVPR 2020): the nearest true match
       behind the furthest non-match:  -[max_{non-match} d - min_{true match} d]_+ ;
  GTM  greedy top-1 mis-ranking: the query pulled onto the nearest gallery item whose identity
       differs from that of its clean top-1 item:  -d(q, u);
  GTT  greedy top-1 translocation: the clean top-1 item pushed down (QA- on it alone).
ES (embedding shift) is the table's SMA.

Targets are drawn once per run from clean features, image i's from a generator of its own
(seeded with the run's seed and i), so they do not depend on the batches; an image with no
possible target (a query without a true match for QA-, a gallery image no query matches for
CA-) is not attacked. The hinges run over the whole valid gallery, batched: B x T x G
comparisons of cached distances per iteration, no loop over queries (RobRank's default too:
its ``Xs`` is the whole test set).

``TargetedPlan.measure`` gives each goal's metric from features: for QA / CA the normalised
rank of the targets (0 = top of the ranking, 1 = bottom; RobRank's ``prank``) and the share
of targets in the top 1 and top 10; for TMA the cosine similarity reached; for GTT the share
of queries whose clean top-1 item stays in the top 4 (RobRank's ``retain@4``).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ranking import RankingPlan

from reid.runtime import ReidError, image_generator

QUERY_GOALS = ("QA+", "QA-", "SPQA+", "TMA", "LTM", "GTM", "GTT")
GALLERY_GOALS = ("CA+", "CA-")
GOALS = QUERY_GOALS + GALLERY_GOALS
TARGETED_GOALS = ("QA+", "QA-", "SPQA+", "CA+", "CA-", "TMA")
"""Goals about chosen targets: scored by their own metric, never a candidate of the worst case
(LTM, GTM and GTT mis-rank the query's own identity, as the untargeted attacks do)."""

GOAL_METRICS = {"QA+": ("prank", "top1", "top10"), "QA-": ("prank", "top1", "top10"),
                "SPQA+": ("prank", "top1", "top10", "kept_prank"),
                "CA+": ("prank", "top1", "top10"), "CA-": ("prank", "top1", "top10"),
                "TMA": ("cosine",), "GTT": ("retain4",), "LTM": (), "GTM": ()}

SP_KEEP, SP_XI = 5, 1.0  # SPQA+: the query's nearest true matches it keeps near the top, and their weight
_SELECT_SLOT = 2 ** 17 * 2 ** 32  # target draws: image i's generator is seeded with (seed, i + this)
_CHUNK = 256  # rows per block of the measurement's distance matrices


def distances(f, bank, cosine):
    """(B, D) x (G, D) -> (B, G), differentiable in ``f``: the Euclidean distance (not squared;
    of L2-normalised features with ``cosine``), which ranks as the evaluation's distance does."""
    if cosine:
        return _root(2.0 - 2.0 * F.normalize(f, dim=1) @ F.normalize(bank, dim=1).t())
    return _root(f.pow(2).sum(1, keepdim=True) + bank.pow(2).sum(1) - 2 * f @ bank.t())


def _root(squared):
    """sqrt, with a finite gradient where a distance is 0."""
    return squared.clamp(min=1e-12).sqrt()


def valid_items(q_pids, q_camids, g_pids, g_camids):
    """(Q, G) bool: the gallery items of each query's ranking under the Market protocol."""
    same = (q_pids.view(-1, 1) == g_pids.view(1, -1)) & (q_camids.view(-1, 1) == g_camids.view(1, -1))
    return ~same & (g_pids.view(1, -1) != -1)


class TargetedLoss(nn.Module):
    """``loss_fn(features, rows)`` of one goal (module docstring), summed over the batch.

    ``ranked`` (G, D): the clean gallery; ``anchors`` (Q, D): the clean queries (CA only);
    ``targets`` (N, T) rows of ``ranked`` (query goals) or of ``anchors`` (CA), with
    ``target_mask`` (N, T) the real ones (padding False); ``own`` (N,) the attacked image's
    row in ``ranked`` (CA: excluded from its own comparisons; else -1). The pids / camids
    of both sets give each ranking's valid items.
    """

    def __init__(self, goal, ranked, r_pids, r_camids, a_pids, a_camids, targets, target_mask, cosine=False,
                 anchors=None, own=None, keep=None, keep_mask=None):
        super().__init__()
        self.goal, self.cosine = goal, bool(cosine)
        long = lambda v: torch.as_tensor(v, device=ranked.device).long().reshape(-1)  # noqa: E731
        self.register_buffer("ranked", ranked.detach().float())
        self.register_buffer("r_pids", long(r_pids))
        self.register_buffer("r_camids", long(r_camids))
        self.register_buffer("a_pids", long(a_pids))  # the attacked set's (query goals) or the anchors' (CA)
        self.register_buffer("a_camids", long(a_camids))
        self.register_buffer("targets", targets.long())
        self.register_buffer("target_mask", target_mask.bool())
        self.register_buffer("anchors", (anchors if anchors is not None else ranked.new_zeros(0, ranked.shape[1]))
                             .detach().float())
        self.register_buffer("own", own.long() if own is not None else torch.full((len(targets),), -1).long())
        self.register_buffer("keep", keep.long() if keep is not None else targets.new_zeros(len(targets), 0).long())
        self.register_buffer("keep_mask", keep_mask.bool() if keep_mask is not None else self.keep.bool())

    def per_sample(self, features, rows):
        rows = torch.as_tensor(rows, device=self.ranked.device).long().reshape(-1)
        f = features.float()
        tgt, mask = self.targets[rows], self.target_mask[rows].to(f.dtype)
        if self.goal in GALLERY_GOALS:
            anchors = self.anchors[tgt.clamp(min=0)]  # (B, W, D)
            b, w, dim = anchors.shape
            a = _pair_distance(f.unsqueeze(1), anchors, self.cosine)  # (B, W): the candidate to each query
            with torch.no_grad():
                clean = distances(anchors.reshape(-1, dim), self.ranked, self.cosine).view(b, w, -1)
                valid = valid_items(self.a_pids[tgt.clamp(min=0)].view(-1), self.a_camids[tgt.clamp(min=0)].view(-1),
                                    self.r_pids, self.r_camids).view(b, w, -1)
                valid[torch.arange(b, device=f.device), :, self.own[rows]] = False
            diff = a.unsqueeze(2) - clean if self.goal == "CA+" else clean - a.unsqueeze(2)
            return -_masked_mean(diff.clamp(min=0), valid, mask)
        dist = distances(f, self.ranked, self.cosine)  # (B, G)
        valid = valid_items(self.a_pids[rows], self.a_camids[rows], self.r_pids, self.r_camids)
        if self.goal == "TMA":
            return F.cosine_similarity(f, self.ranked[tgt[:, 0]], dim=1)
        if self.goal == "GTM":
            return -dist.gather(1, tgt[:, :1]).squeeze(1)
        if self.goal == "LTM":
            match = valid & (self.r_pids.view(1, -1) == self.a_pids[rows].view(-1, 1))
            other = valid & ~match
            furthest = dist.masked_fill(~other, float("-inf")).amax(1)
            nearest = dist.masked_fill(~match, float("inf")).amin(1)
            defined = match.any(1) & other.any(1)
            return torch.where(defined, -(furthest - nearest).clamp(min=0), torch.zeros_like(furthest))
        loss = -_hinge(dist, tgt, valid, mask, rise=self.goal != "QA-" and self.goal != "GTT")  # QA+-, SPQA+, GTT
        if self.goal == "SPQA+":  # and the query's nearest true matches kept ahead of the other items
            loss = loss - SP_XI * _hinge(dist, self.keep[rows], valid, self.keep_mask[rows].to(f.dtype), rise=True)
        return loss

    def forward(self, features, rows):
        return self.per_sample(features, rows).sum()

    def extra_repr(self):
        return f"goal={self.goal}, cosine={self.cosine}, ranked={tuple(self.ranked.shape)}"


def _pair_distance(f, g, cosine):
    """(B, 1, D) against (B, T, D) -> (B, T), the distance of each row to its own targets."""
    if cosine:
        return _root(2.0 - 2.0 * (F.normalize(f, dim=2) * F.normalize(g, dim=2)).sum(2))
    return _root((f - g).pow(2).sum(2))


def _hinge(dist, targets, valid, mask, rise):
    """(B,) the mean over real targets of the mean over valid items x of [d(t) - d(x)]_+ (``rise``:
    the target to come ahead of x) or [d(x) - d(t)]_+ (to fall behind x)."""
    a = dist.gather(1, targets.clamp(min=0)).unsqueeze(2)
    diff = a - dist.unsqueeze(1) if rise else dist.unsqueeze(1) - a
    return _masked_mean(diff.clamp(min=0), valid.unsqueeze(1).expand_as(diff), mask)


def _masked_mean(values, valid, target_mask):
    """(B, T, G) hinges -> (B,): the mean over each target's valid items, then over the real targets."""
    valid = valid.to(values.dtype)
    per_target = (values * valid).sum(2) / valid.sum(2).clamp(min=1)
    return (per_target * target_mask).sum(1) / target_mask.sum(1).clamp(min=1)


@dataclass(frozen=True)
class TargetedPlan(RankingPlan):
    """A ``RankingPlan`` whose ``loss`` is a ``TargetedLoss`` (every image's targets, module
    docstring) and which measures its goal; ``attacked`` (N,): the images with a target."""

    @property
    def random(self):
        """Whether a run draws anything at random: the targets of QA, SPQA, CA and TMA."""
        return self.spec.goal in TARGETED_GOALS

    def measure(self, feats):
        """The goal's metrics (``GOAL_METRICS``) of the attacked images with features ``feats``
        (N, D): adversarial ones, or ``self.feats`` for the clean values. Fractions."""
        goal, loss, device = self.spec.goal, self.loss, self.loss.ranked.device  # on the plan's device
        feats = torch.as_tensor(feats).detach().float().to(device)
        rows = self.attacked.to(device).nonzero().squeeze(1)
        if goal not in TARGETED_GOALS and goal != "GTT":
            return {}
        if goal == "TMA":
            cos = F.cosine_similarity(feats[rows], loss.ranked[loss.targets[rows, 0]], dim=1)
            return {"cosine": float(cos.mean())}
        ranks, sizes, kept = [], [], []
        for block in rows.split(_CHUNK):
            tgt, mask = loss.targets[block], loss.target_mask[block]
            if goal in GALLERY_GOALS:  # the candidate's rank among the clean items of each of its queries
                anchors = loss.anchors[tgt.clamp(min=0)]
                b, w, dim = anchors.shape
                clean = distances(anchors.reshape(-1, dim), loss.ranked, loss.cosine).view(b, w, -1)
                valid = valid_items(loss.a_pids[tgt.clamp(min=0)].view(-1), loss.a_camids[tgt.clamp(min=0)].view(-1),
                                    loss.r_pids, loss.r_camids).view(b, w, -1)
                valid[torch.arange(b, device=device), :, loss.own[block]] = False
                own = _pair_distance(feats[block].unsqueeze(1), anchors, loss.cosine)
                ranks.append(((clean < own.unsqueeze(2)) & valid).sum(2)[mask])
                sizes.append(valid.sum(2)[mask])  # the other items: ranks run 0 .. sizes
                continue
            dist = distances(feats[block], loss.ranked, loss.cosine)
            valid = valid_items(loss.a_pids[block], loss.a_camids[block], loss.r_pids, loss.r_camids)
            rank, size = _ranks(dist, valid, tgt, mask)
            ranks.append(rank)
            sizes.append(size)
            if goal == "SPQA+":
                kept.append(torch.div(*_ranks(dist, valid, loss.keep[block], loss.keep_mask[block])))
        rank, size = torch.cat(ranks).double(), torch.cat(sizes).double()
        if goal == "GTT":
            return {"retain4": float((rank < 4).double().mean())}
        out = {"prank": float((rank / size.clamp(min=1)).mean()), "top1": float((rank < 1).double().mean()),
               "top10": float((rank < 10).double().mean())}
        if goal == "SPQA+":
            out["kept_prank"] = float(torch.cat(kept).mean())
        return out


def _ranks(dist, valid, targets, mask):
    """Each real target's rank (the valid items strictly closer than it; 0 = top) and the number
    of the other valid items, as 1-D double tensors; ``dist`` (B, G), targets / mask (B, T)."""
    own = dist.gather(1, targets.clamp(min=0))
    others = valid.unsqueeze(1) & (torch.arange(dist.shape[1], device=dist.device).view(1, 1, -1) !=
                                   targets.unsqueeze(2))
    rank = ((dist.unsqueeze(1) < own.unsqueeze(2)) & others).sum(2)[mask]
    return rank.double(), others.sum(2)[mask].double().clamp(min=1)


def _draw(generator, rows, pool, count):
    """For each row i, ``count`` distinct columns where ``pool[i]`` is True (fewer if the pool
    is smaller), from image i's own generator; (N, count) indices and their mask."""
    seed = generator.initial_seed() if generator is not None else torch.initial_seed()
    device, pool, rows = pool.device, pool.cpu(), rows.cpu()  # drawn on the CPU (the images' generators)
    index = torch.zeros(len(pool), count, dtype=torch.long)
    mask = torch.zeros(len(pool), count, dtype=torch.bool)
    sizes = pool.sum(1)
    for i in (sizes > 0).nonzero().squeeze(1).tolist():
        n = min(count, int(sizes[i]))
        picked = torch.multinomial(pool[i].double(), n, replacement=False,
                                   generator=image_generator(seed, int(rows[i]) + _SELECT_SLOT))
        index[i, :n], mask[i, :n] = picked, True
    return index.to(device), mask.to(device)


def _block_targets(goal, rows, feats, pids, camids, ranked, other, count, cosine, generator):
    """(targets, mask) of the attacked images at ``rows`` (a block: the (rows x G) masks of the
    selection stay small on large galleries)."""
    attackable = (pids > 0).view(-1, 1)
    if goal in GALLERY_GOALS:  # W queries: of other identities (CA+), or that the image truly matches (CA-)
        o_pids, o_camids = other
        same = o_pids.view(1, -1) == pids.view(-1, 1)
        other_cam = o_camids.view(1, -1) != camids.view(-1, 1)
        pool = (o_pids.view(1, -1) > 0) & (~same if goal == "CA+" else same & other_cam)
        return _draw(generator, rows, pool & attackable, count)
    bank, r_pids, r_camids = ranked
    valid = valid_items(pids, camids, r_pids, r_camids)
    match = valid & (r_pids.view(1, -1) == pids.view(-1, 1))
    if goal in ("QA+", "QA-", "TMA", "SPQA+"):
        identity = r_pids.view(1, -1) > 0  # TMA: another person, not a distractor
        pool = match if goal == "QA-" else valid & ~match & identity if goal == "TMA" else valid & ~match
        targets, mask = _draw(generator, rows, pool & attackable, count)
        if goal != "SPQA+":
            return targets, mask
        dist = distances(feats, bank, cosine).masked_fill(~match, float("inf"))
        near = dist.topk(min(SP_KEEP, dist.shape[1]), dim=1, largest=False)
        return targets, mask, near.indices, torch.isfinite(near.values)
    if goal == "LTM":  # no target: its true matches and non-matches
        return torch.zeros(len(rows), 1, dtype=torch.long, device=feats.device), match.any(1, keepdim=True) & (
            valid & ~match).any(
            1, keepdim=True) & attackable
    dist = distances(feats, bank, cosine).masked_fill(~valid, float("inf"))
    top1 = dist.argmin(1)
    if goal == "GTM":  # the nearest item of an identity other than the top-1's
        dist = dist.masked_fill(r_pids.view(1, -1) == r_pids[top1].view(-1, 1), float("inf"))
        top1 = dist.argmin(1)
    targets = top1.view(-1, 1)
    return targets, torch.isfinite(dist.gather(1, targets)) & attackable


def targeted_plan(name, spec, feats, pids, camids, other, *, m=1, w=1, cosine=False, generator=None):
    """The ``TargetedPlan`` of goal ``spec.goal`` for the attacked set (feats (N, D), pids,
    camids: the queries, or the gallery for CA) and ``other`` = (features, pids, camids) of
    the other split's clean images. ``m``: candidates per query (QA), ``w``: queries per
    gallery image (CA). Raises ReidError if ``m`` / ``w`` is below 1 or above the set it draws from."""
    goal = spec.goal
    feats = torch.as_tensor(feats).detach().float()
    device = feats.device  # the selection's distances where the features are (a GPU's, on one)
    ids = lambda v: torch.as_tensor(v).long().reshape(-1).to(device)  # noqa: E731
    pids, camids = ids(pids), ids(camids)
    o_feats, o_pids, o_camids = torch.as_tensor(other[0]).detach().float().to(device), ids(other[1]), ids(other[2])
    for flag, value, size, what, used in (("--rank-m", m, len(o_pids), "gallery", goal in ("QA+", "QA-", "SPQA+")),
                                          ("--rank-w", w, len(o_pids), "query set", goal in GALLERY_GOALS)):
        if used and not (isinstance(value, int) and 1 <= value <= size):
            raise ReidError(f"{flag} {value}: expected an integer from 1 to the size of the {what} ({size})")
    if goal in GALLERY_GOALS:  # the gallery image is ranked by the queries; its own row of the ranked set is itself
        ranked, r_pids, r_camids = feats, pids, camids
    else:
        ranked, r_pids, r_camids = o_feats, o_pids, o_camids
    count = w if goal in GALLERY_GOALS else m if goal in ("QA+", "QA-", "SPQA+") else 1
    parts = [_block_targets(goal, rows, feats[rows], pids[rows], camids[rows], (ranked, r_pids, r_camids),
                            (o_pids, o_camids), count, cosine, generator)
             for rows in torch.arange(len(pids), device=device).split(_CHUNK)]
    targets, mask, *keep = (torch.cat(column) for column in zip(*parts))  # SPQA+: and its kept matches
    if goal in GALLERY_GOALS:
        loss = TargetedLoss(goal, ranked, r_pids, r_camids, o_pids, o_camids, targets, mask, cosine,
                            anchors=o_feats, own=torch.arange(len(pids), device=device))
    else:
        loss = TargetedLoss(goal, ranked, r_pids, r_camids, pids, camids, targets, mask, cosine,
                            **dict(zip(("keep", "keep_mask"), keep)))
    attacked = mask.any(1).to(feats.device)
    return TargetedPlan(name, spec, feats, attacked, torch.zeros_like(attacked), loss.to(feats.device), bool(cosine))
