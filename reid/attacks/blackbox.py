"""The query-based (black-box) optimisers: they only read the loss of feature queries, never a
gradient. ``max_iter`` is the query budget per image; each spends it in steps of
``QUERIES_PER_STEP`` forward passes (the rest of a budget that is no multiple is not spent,
and results.json counts what was).

  square   Square attack (Andriushchenko et al., ECCV 2020): random square windows at the
           corners of the box, kept where the loss rose. One query a step.
  rgf      random gradient-free estimation (Nesterov & Spokoiny; as in Cheng et al., NeurIPS
           2019): per step, the loss at the current point and at RGF_SAMPLES points
           RGF_SIGMA along random unit directions u_i; the gradient estimate
           sum_i (L(x + sigma u_i) - L(x)) / sigma u_i / q, then a PGD step of ``step`` along
           its sign. RGF_SAMPLES + 1 queries a step, one forward pass of the batch each (one
           pass of all of them measured 1.4x slower on a CPU: the bound is a pass per query).
  bandits  Bandits with time and data priors (Ilyas et al., ICLR 2019, Bandits-TD): a prior
           on the gradient, kept at a coarse resolution (the data prior: about 32 rows, each
           cell a tile of the image) and carried from step to step (the time prior). Per step
           two antithetic queries at x +- FD_ETA (v +- delta u) / ||.|| give a finite
           difference along the exploration u; the prior takes an exponentiated-gradient step
           (online rate ONLINE_LR) towards it, and the image a PGD step of ``step`` along the
           sign of the upsampled prior. Two queries a step.

L-inf only: every point is clamped to the box (eps-ball around x) ∩ [0, 1]. The random draws
come from one ``torch.Generator`` per image (``generators``), or the global RNG.
"""

import math

import torch
import torch.nn.functional as F

RGF_SAMPLES = 10
RGF_SIGMA = 1e-3  # in [0, 1] pixel units; well above float32 noise of a deep model's loss
FD_ETA = 0.1      # Bandits: finite-difference radius (L2, the whole image), the paper's
EXPLORATION = 1.0  # Bandits: delta, the exploration of the prior, the paper's
ONLINE_LR = 100.0  # Bandits: the prior's exponentiated-gradient rate, the paper's
PRIOR_ROWS = 32    # Bandits: the data prior's resolution (the paper: 50 x 50 for 299 x 299 images)
QUERIES_PER_STEP = {"square": 1, "rgf": RGF_SAMPLES + 1, "bandits": 2}


def linf_box(x, eps):
    """The per-element bounds of (L-inf ball of radius eps around x) ∩ [0, 1]."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def query_losses(predict, loss_fn, x, y):
    """Per-image losses (B,) at x: queries, no gradient."""
    with torch.no_grad():
        return loss_fn.per_sample(predict(x), y).detach()


def _draw(generators, batch, device, sample):
    """``sample(generator)`` per image, stacked (B, ...): from each image's generator, or from
    the global RNG (``generator=None``) for the whole batch at once."""
    if generators is None:
        return torch.stack([sample(None) for _ in range(batch)]).to(device)
    return torch.stack([sample(g) for g in generators]).to(device)


def _unit(v):
    """v / ||v||_2 over all but the first dimension (zero where v is zero)."""
    return v / v.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (v.dim() - 1)))


def _rgf_linf(predict, loss_fn, x, x0, y, eps, step, max_iter, generators=None):
    """RGF, L-inf: ``max_iter // (RGF_SAMPLES + 1)`` steps from x0 (module docstring)."""
    batch, q = x.shape[0], RGF_SAMPLES
    lo, hi = linf_box(x, eps)
    cur = x0.detach().clone()
    for _ in range(int(max_iter) // QUERIES_PER_STEP["rgf"]):
        u = _draw(generators, batch, x.device, lambda g: torch.randn((q, *x.shape[1:]), generator=g)).to(x.dtype)
        u = _unit(u.flatten(0, 1)).view_as(u)  # (B, q, C, H, W), unit per direction
        base = query_losses(predict, loss_fn, cur, y)
        slopes = torch.stack([query_losses(predict, loss_fn, cur + RGF_SIGMA * u[:, i], y) - base
                              for i in range(q)], dim=1) / RGF_SIGMA  # (B, q): directional derivatives
        grad = (slopes.view(batch, q, *([1] * (x.dim() - 1))) * u).mean(1)
        cur = torch.minimum(torch.maximum(cur + step * grad.sign(), lo), hi)
    return cur


def prior_shape(height, width):
    """The Bandits data prior's (rows, columns): about PRIOR_ROWS rows, the image's aspect."""
    tile = max(1, round(height / PRIOR_ROWS))
    return max(1, math.ceil(height / tile)), max(1, math.ceil(width / tile))


def _bandits_linf(predict, loss_fn, x, x0, y, eps, step, max_iter, generators=None):
    """Bandits-TD, L-inf: ``max_iter // 2`` steps from x0 (module docstring). The prior v in
    (-1, 1) is kept as its logit theta (v = tanh(theta / 2)): the exponentiated-gradient step
    of the paper is then theta += 2 * ONLINE_LR * g exactly, and never saturates."""
    batch, channels, height, width = x.shape
    lo, hi = linf_box(x, eps)
    rows, cols = prior_shape(height, width)

    def upsample(v):
        return F.interpolate(v, size=(height, width), mode="nearest")

    theta = x.new_zeros(batch, channels, rows, cols)
    cur = x0.detach().clone()
    for _ in range(int(max_iter) // QUERIES_PER_STEP["bandits"]):
        u = _draw(generators, batch, x.device, lambda g: torch.randn((channels, rows, cols), generator=g))
        explore = EXPLORATION * _unit(u.to(x.dtype))
        prior = torch.tanh(theta / 2)
        q1, q2 = upsample(prior + explore), upsample(prior - explore)
        points = torch.cat([cur + FD_ETA * _unit(q1), cur + FD_ETA * _unit(q2)])
        l1, l2 = query_losses(predict, loss_fn, points, torch.cat([y, y])).chunk(2)
        slope = (l1 - l2) / (FD_ETA * EXPLORATION)
        theta = theta + 2 * ONLINE_LR * slope.view(-1, 1, 1, 1) * explore
        cur = torch.minimum(torch.maximum(cur + step * upsample(theta).sign(), lo), hi)
    return cur


def _square_linf(predict, loss_fn, x, x0, y, eps, step, max_iter, generators=None, p_init=0.8):
    """Square attack, L-inf (Andriushchenko et al., ECCV 2020): ``max_iter`` queries per image.

    Query 1: vertical stripes, each column of each channel at x +- eps. Each later query
    proposes, per image, a square window of side round(sqrt(p H W)) at a random place set to
    x +- eps (a random sign per channel, changed where it would leave the window as it is),
    and keeps it only where the loss rose. p follows the paper's schedule over the budget
    (p_init halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10000 queries). x0 is
    not used (the stripes are the start). ``generators``: one per image, or None (global RNG).
    """
    n_queries = int(max_iter)
    batch, channels, height, width = x.shape
    lo, hi = linf_box(x, eps)

    def draw(high, shape=()):
        """Integers in [0, high) of ``shape`` per image, stacked (B, *shape): from each image's
        generator, or from the global RNG."""
        if generators is None:
            return torch.randint(0, high, (batch,) + shape).to(x.device)
        return torch.stack([torch.randint(0, high, shape, generator=g) for g in generators]).to(x.device)

    def signs(shape):
        return draw(2, shape).to(x.dtype) * 2 - 1

    cur = torch.minimum(torch.maximum(x + eps * signs((channels, 1, width)), lo), hi)
    # every later query's draws at once, one (queries, 2 + channels) table per image: window
    # corner and channel signs are these integers modulo their ranges (a bias below 2^-50)
    table = draw(2 ** 62, (n_queries, 2 + channels))
    loss = query_losses(predict, loss_fn, cur, y)
    rows = torch.arange(height, device=x.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, 1, width)
    for query in range(1, n_queries):
        side = _square_side(p_init, query, n_queries, height, width)
        top = (table[:, query, 0] % (height - side + 1)).view(-1, 1, 1, 1)
        left = (table[:, query, 1] % (width - side + 1)).view(-1, 1, 1, 1)
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        sign = (table[:, query, 2:] % 2).to(x.dtype).view(-1, channels, 1, 1) * 2 - 1
        same = (torch.where(window, x + eps * sign, cur).clamp(0, 1) - cur).abs().flatten(1).amax(1) == 0
        sign = torch.where(same.view(-1, 1, 1, 1), -sign, sign)
        proposal = torch.minimum(torch.maximum(torch.where(window, x + eps * sign, cur), lo), hi)
        new_loss = query_losses(predict, loss_fn, proposal, y)
        better = new_loss > loss
        cur = torch.where(better.view(-1, 1, 1, 1), proposal, cur)
        loss = torch.where(better, new_loss, loss)
    return cur


def _square_side(p_init, query, n_queries, height, width):
    """The window side at ``query`` of ``n_queries``: the paper's schedule of the window
    fraction p (stated for 10000 queries, rescaled to the budget), side round(sqrt(p H W))."""
    at = int(query / n_queries * 10000)
    halvings = sum(at > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    p = p_init / 2 ** halvings
    return max(1, min(int(round(math.sqrt(p * height * width))), height, width))


QUERY_OPTIMISERS = {"square": _square_linf, "rgf": _rgf_linf, "bandits": _bandits_linf}
