"""A split's clean features with the samples they come from, and its metrics against the other
split with either side's features replaced (adversarial ones)."""

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

from reid.data import Sample
from reid.metrics import retrieval_metrics


@dataclass
class Split:
    """Clean features of one split with the samples they come from."""

    name: str  # "query" or "gallery"
    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    samples: List[Sample]


def split_metrics(query, gallery, metric="euclidean", query_feats=None, gallery_feats=None, per_query=False):
    """METRICS of `query` against `gallery`, with either side's features optionally replaced
    (and the per-query values with `per_query`, see `retrieval_metrics`)."""
    qf = query.feats if query_feats is None else query_feats
    gf = gallery.feats if gallery_feats is None else gallery_feats
    return retrieval_metrics(qf, gf, query.pids, gallery.pids, query.camids, gallery.camids, metric, per_query)
