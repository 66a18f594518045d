"""The METRICS dict of results.json (mAP, rank-1/5/10, mINP as fractions): from a ranking, from
a query / gallery feature pair (computed once under torchrun), and over repeated runs."""

import numpy as np

from reid.metrics.ranking import evaluate_rank, pairwise_distance
from reid.runtime import distributed

METRIC_NAMES = ("mAP", "rank1", "rank5", "rank10", "mINP")


def retrieval_metrics(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, metric="euclidean",
                      per_query=False):
    """The METRICS dict of DESIGN.md (fractions) for one query / gallery feature pair; with
    `per_query`, (METRICS, evaluate_rank's per-query AP / INP / first-hit rank arrays).
    Under torchrun, computed once by rank 0 and sent to the other ranks."""
    if not distributed.is_main():
        return distributed.broadcast_object(None)
    distmat = pairwise_distance(query_features, gallery_features, metric)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10, per_query=per_query)
    return distributed.broadcast_object((as_metrics(result), result["per_query"]) if per_query
                                        else as_metrics(result))


def as_metrics(result):
    """The METRICS dict of an `evaluate_rank` (or `rank_summary`) result."""
    cmc = result["cmc"]
    return {"mAP": float(result["mAP"]), "rank1": float(cmc[0]), "rank5": float(cmc[4]),
            "rank10": float(cmc[9]), "mINP": float(result["mINP"])}


def summarize_runs(runs):
    """mean / std / min / max over repeated runs of an attack: METRICS dicts, or any dicts of
    numbers with the same keys (a targeted attack's own metrics)."""
    keys = METRIC_NAMES if all(k in runs[0] for k in METRIC_NAMES) else tuple(runs[0])
    table = {k: np.array([r[k] for r in runs]) for k in keys}
    return {stat: {k: float(fn(v)) for k, v in table.items()}
            for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}
