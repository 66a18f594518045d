"""Batched feature extraction."""

import numpy as np
import torch
import torch.nn.functional as F

from reid.metrics import retrieval_metrics
from reid.runtime import distributed, progress


@torch.no_grad()
def extract_features(model, loader, device, desc="features", normalize=False):
    """Features (N, D) float32 of every image of `loader`, in loader order, on `device`.

    Also returns the pids and camids as numpy arrays. The model is put in eval mode
    and its previous mode restored. Under torchrun each process extracts its block of the
    split and every process gets the whole (every process must call it).
    """
    loader = distributed.shard_loader(loader)
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    try:
        for images, pid, camid, _ in progress(loader, desc):
            feats.append(model(images.to(device, non_blocking=True)).float())
            pids.append(pid)
            camids.append(camid)
    finally:
        model.train(was_training)
    if not feats:  # under torchrun, a process with no batch of this split
        feats, pids, camids = [torch.empty(0, device=device)], [torch.empty(0)], [torch.empty(0)]
    feats = distributed.gather_shards(torch.cat(feats))
    pids, camids = (distributed.gather_shards(torch.cat(x)) for x in (pids, camids))
    if normalize:
        feats = F.normalize(feats, dim=1)
    return feats, pids.numpy().astype(np.int64), camids.numpy().astype(np.int64)


def evaluate(model, query_loader, gallery_loader, device, metric="euclidean"):
    """Clean retrieval metrics of `model` on a query / gallery split."""
    qf, q_pids, q_camids = extract_features(model, query_loader, device, desc="query features")
    gf, g_pids, g_camids = extract_features(model, gallery_loader, device, desc="gallery features")
    return retrieval_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, metric)
