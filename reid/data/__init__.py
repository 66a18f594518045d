"""Datasets (Market-1501, DukeMTMC-reID, MSMT17, open-reid layout), transforms, samplers, loaders.

The synthetic dataset generator lives in `reid.data.synthetic` (run it with
`python -m reid.data.synthetic OUT`).
"""

from reid.data.datasets import LAYOUTS, load_dataset, resolve_dataset_root
from reid.data.loaders import ImageDataset, eval_loader, read_image, train_loader
from reid.data.openreid import OPENREID_NAMES, write_openreid_like
from reid.data.pool import same_image, sort_dataset
from reid.data.samples import ReidDataset, Sample
from reid.data.sampler import RandomIdentitySampler, ShardedBatchSampler
from reid.data.transforms import build_transforms

DATASET_NAMES = tuple(LAYOUTS)

__all__ = ["DATASET_NAMES", "ImageDataset", "OPENREID_NAMES", "RandomIdentitySampler", "ReidDataset", "Sample",
           "ShardedBatchSampler", "build_transforms", "eval_loader", "load_dataset", "read_image",
           "resolve_dataset_root", "same_image", "sort_dataset", "train_loader", "write_openreid_like"]
