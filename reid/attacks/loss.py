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
