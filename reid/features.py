"""Batched feature extraction."""

import numpy as np
import torch
import torch.nn.functional as F

from reid.utils import progress


@torch.no_grad()
def extract_features(model, loader, device, desc="features", normalize=False):
    """Features (N, D) float32 of every image of `loader`, in loader order, on `device`.

    Also returns the pids and camids as numpy arrays. The model is put in eval mode
    and its previous mode restored.
    """
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
    feats = torch.cat(feats)
    if normalize:
        feats = F.normalize(feats, dim=1)
    return feats, torch.cat(pids).numpy().astype(np.int64), torch.cat(camids).numpy().astype(np.int64)
