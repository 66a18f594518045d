"""The training loss of a model kind (cross-entropy or batch-hard triplet) and the reference
learning-rate schedules."""

import torch
import torch.nn.functional as F

from reid.training.losses import batch_hard_triplet_loss


class Objective:
    """The training loss of a model kind: cross-entropy on logits or batch-hard triplet."""

    def __init__(self, kind, soft_margin=False, margin=10.0):
        self.kind, self.soft_margin, self.margin = kind, soft_margin, margin

    def __call__(self, model, images, labels):
        features = model(images)
        if self.kind == "classif":
            logits = model.fc(features)
            return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()
        return batch_hard_triplet_loss(features, labels, self.margin, self.soft_margin), None


def lr_schedule(kind, optimizer, last_epoch=-1):
    """The reference schedules: classification steps at 20 and 40; triplet decays after 50."""
    if kind == "classif":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[20, 40], gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 if e < 50 else 0.001 ** ((e - 50) / 100))
