"""Feature distances and re-ID ranking metrics (CMC, mAP, mINP) under the Market-1501 protocol.

`evaluate_rank` never sorts a query's gallery. Only the ranks of the true matches enter
CMC, AP and INP, and the rank of a match is one plus the number of valid gallery items
that precede it. Those counts come from a per-query histogram of the distances over a
fine uniform grid spanning the query's match distances: items in lower bins precede the
match for sure, items in higher bins follow it, and only the few items that share a bin
with a match are compared exactly. The bin index is a monotone function of the
distance, so the counts are exact, and the work is a few elementwise passes and one
`bincount` per chunk of queries, in torch on the distance matrix's device.
"""

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from reid.runtime import ReidError

AP_MODES = ("market", "standard")
METRICS = ("euclidean", "cosine")

# Distance entries per chunk of queries. The chunk's work buffers are allocated once and
# reused: fresh large allocations cost page faults that can outweigh the arithmetic.
# Larger CPU chunks mean fewer multi-threaded steps, each of which can stall for a
# scheduler time slice when other processes compete for the cores.
_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}
# Histogram bins per gallery item: fewer bins, more items to compare exactly.
_ITEMS_PER_BIN = 4
# Entries per block of bin-sharing candidates compared exactly; bounds memory when
# distances tie massively (e.g. quantised distances) and many items share bins.
_CANDIDATE_BLOCK = 1 << 22


def pairwise_distance(qf, gf, metric="euclidean"):
    """(Q, D) query and (G, D) gallery features -> (Q, G) float32 distances on their device.

    "euclidean" is the *squared* Euclidean distance ||q||^2 + ||g||^2 - 2 q.g, clamped
    at 0 against rounding: it ranks exactly like the Euclidean distance and saves the
    square root. "cosine" is 1 - cosine similarity of the L2-normalised features.
    Numpy arrays are accepted too.
    """
    if metric not in METRICS:
        raise ReidError(f"unknown distance metric {metric!r}: expected one of {', '.join(METRICS)}")
    qf = torch.as_tensor(qf).float()
    gf = torch.as_tensor(gf, device=qf.device).float()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ReidError(f"features must be (Q, D) and (G, D), got {tuple(qf.shape)} and {tuple(gf.shape)}")
    if metric == "cosine":
        return 1.0 - F.normalize(qf, dim=1) @ F.normalize(gf, dim=1).t()
    squares = qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1).unsqueeze(0)
    return torch.addmm(squares, qf, gf.t(), beta=1.0, alpha=-2.0).clamp_(min=0.0)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="market", per_query=False):
    """CMC, mAP and mINP of a (Q, G) distance matrix under the Market-1501 protocol.

    For each query, gallery items with its identity *and* camera are removed (the same
    shot seen again proves nothing), and so are junk items (pid -1); distractors (pid 0)
    stay as ordinary non-matches. Ranks count valid items only, 1-based. Items strictly
    closer come first and ties are broken by gallery index, i.e. the order of a stable
    argsort of the distances.

    ap="market" is the Market-1501 devkit's interpolated AP: each hit i at rank r_i
    scores the mean of the precision just before it, (i - 1) / (r_i - 1) (1 at rank 1),
    and the precision at it, i / r_i. ap="standard" averages i / r_i. mINP (Ye et al.,
    TPAMI 2021) averages (number of hits) / (rank of the last hit).

    Queries without any valid match are left out of every mean, with one warning that
    counts them. Distances must be finite. Inputs may be numpy arrays or torch tensors;
    the work runs on the distance matrix's device. Returns {"cmc": (max_rank,) array of fractions, "mAP",
    "mINP", "num_valid_queries"}; CMC entries beyond the gallery size stay at CMC(G).

    per_query=True adds "per_query": {"ap", "inp": (Q,) float64 arrays, "first_rank": (Q,) int64
    array (rank of the first true match, 1-based)}, one entry per query in query order; queries
    without a valid match hold NaN and 0. `rank_summary` turns such values back into the means.
    """
    if ap not in AP_MODES:
        raise ReidError(f"unknown AP mode {ap!r}: expected one of {', '.join(AP_MODES)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ReidError(f"max_rank must be a positive integer, got {max_rank!r}")
    dist = torch.as_tensor(distmat).detach()
    if dist.dim() != 2:
        raise ReidError(f"distmat must be a (Q, G) matrix, got shape {tuple(dist.shape)}")
    num_q, num_g = dist.shape
    device = dist.device
    q_pids, q_camids = (_labels(x, name, num_q, device) for x, name in ((q_pids, "q_pids"), (q_camids, "q_camids")))
    g_pids, g_camids = (_labels(x, name, num_g, device) for x, name in ((g_pids, "g_pids"), (g_camids, "g_camids")))
    # Exact, order-preserving widening: float64 and integers (e.g. Hamming distances) to
    # float64, the other float types to float32.
    work_dtype = torch.float32 if dist.is_floating_point() and dist.dtype != torch.float64 else torch.float64

    # Junk gallery items (pid -1) are invalid for every query: their columns are left out
    # (in order, so gallery-index tie-breaking is unchanged) and `kept` maps back.
    kept = None
    if (g_pids == -1).any():
        kept = (g_pids != -1).nonzero().squeeze(1)
        g_pids, g_camids = g_pids[kept], g_camids[kept]
    num_cols = len(g_pids)

    # Gallery grouped by identity: a query's candidate matches are one slice of it.
    by_pid = torch.argsort(g_pids, stable=True)
    sorted_pids = g_pids[by_pid]
    group_start = torch.searchsorted(sorted_pids, q_pids)
    group_size = torch.searchsorted(sorted_pids, q_pids, right=True) - group_start

    ranker = _MatchRanker(num_q, num_cols, work_dtype, device)
    first_ranks, ap_values, inp_values, valid_rows = [], [], [], []
    for q0 in range(0, num_q if num_cols else 0, ranker.rows):
        rows = slice(q0, min(q0 + ranker.rows, num_q))
        ranks, num_hits = ranker(dist[rows].to(work_dtype), kept, q_pids[rows], q_camids[rows], g_pids, g_camids,
                                 by_pid, group_start[rows], group_size[rows])
        valid = num_hits > 0
        valid_rows.append(valid)
        ranks, num_hits = ranks[valid].double(), num_hits[valid]
        hit_number = torch.arange(1, ranks.shape[1] + 1, device=device, dtype=torch.float64)
        precision = hit_number / ranks
        if ap == "market":
            before = torch.where(ranks > 1, (hit_number - 1) / (ranks - 1).clamp(min=1), torch.ones_like(ranks))
            precision = (precision + before) / 2
        is_hit = hit_number <= num_hits.unsqueeze(1)
        ap_values.append(torch.where(is_hit, precision, 0.0).sum(1) / num_hits)
        inp_values.append(num_hits / ranks.gather(1, (num_hits - 1).unsqueeze(1)).squeeze(1))
        first_ranks.append(ranks[:, 0].long())

    first = torch.cat(first_ranks) if first_ranks else torch.zeros(0, dtype=torch.long)
    num_valid = len(first)
    if num_valid == 0:
        raise ReidError(f"none of the {num_q} queries has a valid match in the gallery "
                        "(same identity, another camera, not junk)")
    if num_valid < num_q:
        warnings.warn(f"{num_q - num_valid} of {num_q} queries have no valid gallery match "
                      "and are left out of CMC, mAP and mINP", stacklevel=2)
    ap_values, inp_values = torch.cat(ap_values), torch.cat(inp_values)
    result = rank_summary(first, ap_values, inp_values, max_rank)
    if per_query:
        valid = torch.cat(valid_rows).cpu()
        values = {"ap": ap_values, "inp": inp_values, "first_rank": first}
        result["per_query"] = {}
        for key, value in values.items():
            full = torch.full((num_q,), 0 if key == "first_rank" else float("nan"), dtype=value.dtype)
            full[valid] = value.cpu()
            result["per_query"][key] = full.numpy()
    return result


def rank_summary(first_rank, ap, inp, max_rank=50):
    """{"cmc", "mAP", "mINP", "num_valid_queries"} from per-query values of the valid queries.

    first_rank (N,): rank of each query's first true match (1-based); ap, inp (N,): its AP
    and INP. Numpy arrays or tensors. The one place where per-query values become the means
    `evaluate_rank` reports (the worst case over attacks of `reid.evaluation.report` uses it too).
    """
    first = torch.as_tensor(first_rank).long().reshape(-1)
    if len(first) == 0:
        raise ReidError("rank_summary: no valid query")
    first_hits = torch.bincount((first - 1).clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    return {
        "cmc": (first_hits.cumsum(0).double() / len(first)).cpu().numpy(),
        "mAP": torch.as_tensor(ap).double().mean().item(),
        "mINP": torch.as_tensor(inp).double().mean().item(),
        "num_valid_queries": len(first),
    }


def _labels(values, name, length, device):
    """Identity or camera labels as an int64 vector on `device`, checked against `length`."""
    try:
        tensor = torch.as_tensor(values, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ReidError(f"{name} must be integer labels: {err}") from None
    if tensor.shape != (length,):
        raise ReidError(f"{name} must have shape ({length},) to match distmat, got {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex():
        raise ReidError(f"{name} must be integer labels, got dtype {tensor.dtype}")
    return tensor.long()


class _MatchRanker:
    """Ranks of the valid matches of chunks of up to `rows` queries, with reusable buffers.

    Each query row gets `stride` histogram bins in one flat range.
    """

    def __init__(self, num_queries, num_cols, dtype, device):
        self.num_cols = num_cols
        self.num_bins = max(num_cols // _ITEMS_PER_BIN, 1)
        self.stride = self.num_bins + 3
        elements = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS["cuda"])
        self.rows = max(1, min(num_queries, elements // max(num_cols, 1), (2**31 - 1) // self.stride))
        size = self.rows * num_cols
        self.scaled = torch.empty(size, dtype=dtype, device=device)
        self.bins = torch.empty(size, dtype=torch.int32, device=device)
        self.shares = torch.empty(-(-size // 8) * 8, dtype=torch.bool, device=device)
        self.match_bins = torch.zeros(self.rows * self.stride, dtype=torch.bool, device=device)

    def __call__(self, block, kept, q_pids, q_camids, g_pids, g_camids, by_pid, group_start, group_size):
        """(ranks (B, K) int64, num_hits (B,)): row b's first num_hits[b] ranks, ascending.

        `block` holds the chunk's distances to the whole gallery, `kept` (if not None) the
        gallery columns left after junk removal; ranks and items refer to those columns.
        """
        device = block.device
        num_rows, num_cols = block.shape[0], self.num_cols
        scaled = self.scaled[:num_rows * num_cols].view(num_rows, num_cols)
        dist = block if kept is None else torch.index_select(block, 1, kept, out=scaled)
        if not torch.isfinite(dist.sum()) and not torch.isfinite(dist).all():
            raise ReidError("distmat contains NaN or infinite values")
        row = torch.arange(num_rows, device=device)

        # Candidate matches: the gallery items of the query's identity, in gallery order.
        width = max(int(group_size.max()), 1)
        slot = torch.arange(width, device=device)
        item = by_pid[(group_start.unsqueeze(1) + slot).clamp(max=num_cols - 1)]
        same_id = g_pids[item] == q_pids.unsqueeze(1)
        same_cam = g_camids[item] == q_camids.unsqueeze(1)
        # A property of the item alone, so repeated (padding) entries agree when scattered.
        removed = same_id & same_cam  # invalid for this query
        is_match = (slot < group_size.unsqueeze(1)) & same_id & ~same_cam
        num_hits = is_match.sum(1)
        inf = torch.tensor(float("inf"), dtype=dist.dtype, device=device)
        # Stable sort of the gallery-ordered matches: equal distances stay in gallery order.
        match_dist, order = torch.sort(torch.where(is_match, dist.gather(1, item), inf), dim=1, stable=True)
        match_item = item.gather(1, order)
        real = slot < num_hits.unsqueeze(1)

        # Local bin of distance d: trunc(clamp((d - low) * scale, -1, num_bins + 1)) + 1,
        # with low / high the row's first / last match distance and scale = num_bins /
        # (high - low). Matches fall in bins 1..num_bins+1 ((high - low) * scale rounds
        # to at most num_bins * (1 + 2 eps)); bin 0 gathers what is closer by more than a
        # bin, bin num_bins + 2 what is farther and the removed items (set to +inf). Each
        # step is one correctly rounded operation or a clamp, so the bin is the same
        # monotone function of d for every entry of a row.
        low = torch.where(num_hits > 0, match_dist[:, 0], torch.zeros_like(match_dist[:, 0]))
        high = torch.where(num_hits > 0, match_dist.gather(1, (num_hits - 1).clamp(min=0).unsqueeze(1)).squeeze(1), low)
        finfo = torch.finfo(dist.dtype)
        scale = (self.num_bins / (high - low)).clamp(finfo.tiny, finfo.max)  # no 0 * inf anywhere
        torch.sub(dist, low.unsqueeze(1), out=scaled)  # `dist` may be `scaled`: no use of it below
        scaled.scatter_(1, item, torch.where(removed, inf, scaled.gather(1, item)))
        scaled.mul_(scale.unsqueeze(1)).clamp_(-1.0, self.num_bins + 1.0)
        bins = self.bins[:scaled.numel()].view_as(scaled)
        bins.copy_(scaled)
        bins.add_((row * self.stride + 1).to(torch.int32).unsqueeze(1))  # flat bin ids, one range per row

        counts = torch.bincount(bins.view(-1), minlength=num_rows * self.stride)
        cumulative = counts.view(num_rows, self.stride).cumsum(1).view(-1)
        match_bin = bins.gather(1, match_item).long()
        ranks = cumulative[match_bin] - counts[match_bin] + 1  # 1 + items in strictly lower bins

        # Items sharing a bin with a real match: compared exactly, with the tie rule.
        flagged = match_bin[real]
        self.match_bins[flagged] = True
        torch.index_select(self.match_bins, 0, bins.view(-1), out=self.shares[:bins.numel()])
        self.match_bins[flagged] = False
        cand = _nonzero_bool(self.shares, bins.numel())
        cand_row, cand_col = cand // num_cols, cand % num_cols
        step = max(1, _CANDIDATE_BLOCK // width)
        for s in range(0, len(cand_row), step):
            r, c = cand_row[s:s + step], cand_col[s:s + step]
            d, m = block[r, c if kept is None else kept[c]].unsqueeze(1), match_dist[r]
            precedes = (d < m) | ((d == m) & (c.unsqueeze(1) < match_item[r]))
            precedes &= real[r] & (match_bin[r] == bins[r, c].long().unsqueeze(1))
            ranks.index_add_(0, r, precedes.long())
        return ranks, num_hits


def _nonzero_bool(flags, length):
    """Indices of the True entries among flags[:length], for sparse flags.

    Scans the flags eight at a time as int64 words, several times faster than
    `nonzero` on the bools themselves; `flags` must hold a multiple of 8 entries.
    """
    padded = -(-length // 8) * 8
    flags[length:padded] = False
    words = flags[:padded].view(torch.int64).nonzero().squeeze(1)
    candidates = (words.unsqueeze(1) * 8 + torch.arange(8, device=flags.device)).view(-1)
    return candidates[flags[candidates]]
