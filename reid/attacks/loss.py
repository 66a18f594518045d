"""The guided loss: one scalar, to be maximised, shared by every metric attack.

    L = sum_b sum_k w_bk * ||f(x_b) - g_bk||^2

with w > 0 for pushing guides, w < 0 for pulling guides and w = 0 for padding.

How the guides reach the loss. advertorch calls ``loss_fn(predict(x), y)`` and only ever
passes ``y`` through ``detach().clone()``, so ``y`` must be a single tensor. Instead of the
guides themselves (B, K, D) plus their weights, ``y`` carries their *sufficient statistics*,
expanding the square:

    sum_k w_k ||f - g_k||^2 = W ||f||^2 - 2 f . G + C,
    W = sum_k w_k,   G = sum_k w_k g_k (a D-vector),   C = sum_k w_k ||g_k||^2

so ``y = pack_guides(guides, weights)`` is a (B, D + 2) tensor ``[G | W | C]``. This is the
same function of f (value and gradient; C only fixes the value), but:
  * the loss is stateless: no closure over "the current batch's guides", nothing to keep in
    sync with advertorch's internals, and any advertorch attack can take it unchanged;
  * the per-iteration cost is O(B * D) whatever the number of guides K (an identity with 70
    gallery images costs the same as one with 2), and padding (w = 0) simply vanishes;
  * the guides are packed once per batch, not once per iteration.
The one cost is float32 cancellation in the *value* when ||f|| is large and f is close to the
guides; the gradient 2 (W f - G) is as accurate as the direct form.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def pack_guides(guides, weights):
    """Pack per-sample guides (B, K, D) and weights (B, K) into the (B, D + 2) loss target.

    Guides must already be in the loss's feature space (L2-normalised in cosine mode).
    Differentiable in both arguments, so it can also be used with guides that need gradients.
    """
    if guides.dim() != 3 or weights.shape != guides.shape[:2]:
        raise ValueError(f"pack_guides: expected guides (B, K, D) and weights (B, K), "
                         f"got {tuple(guides.shape)} and {tuple(weights.shape)}")
    weights = weights.to(guides.dtype)
    g_sum = torch.einsum("bk,bkd->bd", weights, guides)
    w_sum = weights.sum(1, keepdim=True)
    c_sum = (weights * guides.pow(2).sum(-1)).sum(1, keepdim=True)
    return torch.cat([g_sum, w_sum, c_sum], dim=1)


def pack_bank_guides(bank, index, weights, bank_sqnorm=None):
    """``pack_guides(bank[index], weights)`` without materialising the (B, K, D) gather.

    bank (M, D), index (B, K) rows of bank, weights (B, K); ``bank_sqnorm`` = the bank's
    squared row norms (M,), precomputed once per run if given. The weighted sum is one
    ``embedding_bag``, so the cost is O(B * K * D) reads and O(B * D) memory.
    ``index=None``: ``weights`` is a dense (B, M) matrix over every row of the bank (small
    banks, e.g. GOAT's batch + pool features), and the weighted sum is one matmul.
    """
    weights = weights.to(bank.dtype)
    if bank_sqnorm is None:
        bank_sqnorm = bank.pow(2).sum(1)
    if index is None:
        if weights.dim() != 2 or weights.shape[1] != bank.shape[0]:
            raise ValueError(f"pack_bank_guides: dense weights must be (B, {bank.shape[0]}), "
                             f"got {tuple(weights.shape)}")
        g_sum, sq = weights @ bank, weights * bank_sqnorm
    elif index.shape[1] == 0:
        g_sum, sq = bank.new_zeros(index.shape[0], bank.shape[1]), weights
    else:
        g_sum = F.embedding_bag(index, bank, per_sample_weights=weights, mode="sum")
        sq = weights * bank_sqnorm[index]
    return torch.cat([g_sum, weights.sum(1, keepdim=True), sq.sum(1, keepdim=True)], dim=1)


class GuidedLoss(nn.Module):
    """``loss_fn(features, packed)`` for advertorch: the guided loss summed over the batch.

    ``cosine=True`` L2-normalises the features first (the packed guides are normalised clean
    features already). The sum (not mean) over the batch keeps every sample's gradient
    independent of the batch size; sign-based optimisers do not care about the scale anyway.
    """

    def __init__(self, cosine=False):
        super().__init__()
        self.cosine = bool(cosine)

    def per_sample(self, features, packed):
        """The loss of each sample, shape (B,)."""
        if self.cosine:
            features = F.normalize(features, dim=1)
        dim = features.shape[1]
        if packed.shape != (features.shape[0], dim + 2):
            raise ValueError(f"GuidedLoss: features {tuple(features.shape)} do not match "
                             f"packed guides {tuple(packed.shape)} (expected (B, D + 2))")
        packed = packed.to(features.dtype)
        g_sum, w_sum, c_sum = packed[:, :dim], packed[:, dim], packed[:, dim + 1]
        return w_sum * features.pow(2).sum(1) - 2 * (features * g_sum).sum(1) + c_sum

    def forward(self, features, packed):
        return self.per_sample(features, packed).sum()

    def extra_repr(self):
        return f"cosine={self.cosine}"


def guided_loss(features, guides, weights, cosine=False):
    """Convenience form: the guided loss of features (B, D) for guides (B, K, D), weights (B, K)."""
    return GuidedLoss(cosine)(features, pack_guides(guides, weights))


class RankingLoss(nn.Module):
    """``loss_fn(features, rows)``: the ranking loss of attacked queries against a known gallery.

    Per query q (``rows``: its positions in the query set), with d the evaluation's distance
    (squared Euclidean, or that of L2-normalised features with ``cosine``):

        L(q) = min_{g valid true match} d(q, g) - k-th smallest_{g valid non-match} d(q, g)

    under the Market-1501 protocol: true matches are gallery items of q's identity from
    another camera; items of q's identity and camera and junk (pid -1) are neither;
    distractors (pid 0) are non-matches. L(q) > 0 exactly when the nearest true match ranks
    behind the k-th non-match, so maximising it drives rank-k and AP down. Queries without a
    valid true match (left out of the metrics) or with fewer than k non-matches score 0.
    The attacker knows the gallery: a stronger threat model than the guided loss.
    """

    def __init__(self, gallery_feats, gallery_pids, gallery_camids, query_pids, query_camids, k=1, cosine=False):
        super().__init__()
        self.cosine, self.k = bool(cosine), int(k)
        gallery = F.normalize(gallery_feats.float(), dim=1) if cosine else gallery_feats.float()
        self.register_buffer("gallery", gallery)
        self.register_buffer("gallery_sq", gallery.pow(2).sum(1))
        as_long = lambda v: torch.as_tensor(v, device=gallery.device).long().reshape(-1)  # noqa: E731
        self.register_buffer("gallery_pids", as_long(gallery_pids))
        self.register_buffer("gallery_camids", as_long(gallery_camids))
        self.register_buffer("query_pids", as_long(query_pids))
        self.register_buffer("query_camids", as_long(query_camids))

    def margins(self, features, rows):
        """(L(q) per query, whether it is defined): the loss before undefined ones become 0."""
        rows = torch.as_tensor(rows, device=self.gallery.device).long().reshape(-1)
        f = F.normalize(features, dim=1) if self.cosine else features
        dist = f.pow(2).sum(1, keepdim=True) + self.gallery_sq.to(f.dtype) - 2 * f @ self.gallery.to(f.dtype).t()
        pid, cam = self.query_pids[rows].unsqueeze(1), self.query_camids[rows].unsqueeze(1)
        same_id, same_cam = self.gallery_pids == pid, self.gallery_camids == cam
        match = same_id & ~same_cam
        other = ~same_id & (self.gallery_pids != -1)
        k = min(self.k, dist.shape[1])
        nearest_match = dist.masked_fill(~match, float("inf")).amin(1)
        kth_other = dist.masked_fill(~other, float("inf")).topk(k, dim=1, largest=False).values[:, -1]
        defined = match.any(1) & (other.sum(1) >= self.k)
        return nearest_match - kth_other, defined

    def per_sample(self, features, rows):
        margin, defined = self.margins(features, rows)
        return torch.where(defined, margin, torch.zeros_like(margin))

    def forward(self, features, rows):
        return self.per_sample(features, rows).sum()

    def extra_repr(self):
        return f"k={self.k}, cosine={self.cosine}, gallery={tuple(self.gallery.shape)}"
