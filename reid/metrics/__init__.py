"""Ranking metrics (CMC, mAP, mINP) under the Market-1501 protocol, and the METRICS dicts of
results.json.
"""

from reid.metrics.ranking import evaluate_rank, pairwise_distance, rank_summary
from reid.metrics.summary import METRIC_NAMES, as_metrics, retrieval_metrics, summarize_runs

__all__ = ["METRIC_NAMES", "as_metrics", "evaluate_rank", "pairwise_distance", "rank_summary", "retrieval_metrics",
           "summarize_runs"]
