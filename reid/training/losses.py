"""Training losses: cross-entropy and batch-hard triplet (Hermans et al. 2017)."""

import torch.nn.functional as F


def euclidean_distances(x):
    """(B, B) Euclidean distances, with a floor inside the sqrt for a finite gradient."""
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(features, labels, margin=10.0, soft_margin=False):
    """Mean over anchors of [d(a, hardest positive) - d(a, hardest negative) + margin]_+.

    `soft_margin` replaces the hinge by softplus (log(1 + exp(.))), as in the reference.
    Vectorised: masks over the (B, B) distance matrix, no loop over anchors.
    """
    dist = euclidean_distances(features)
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    diff = hardest_pos - hardest_neg
    return F.softplus(diff).mean() if soft_margin else F.relu(diff + margin).mean()
