"""Randomness: one seed for python, numpy and torch, and a generator of its own per image."""

import random

import numpy as np
import torch


def seed_everything(seed):
    """Seed python, numpy and torch so the same seed gives the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def image_generator(seed, index):
    """A generator of its own for image ``index`` of a run seeded with ``seed``: what is drawn
    for an image does not depend on the batch it comes in, nor on the process that attacks it."""
    return torch.Generator().manual_seed((int(seed) * 1000003 + int(index)) % 2**64)
