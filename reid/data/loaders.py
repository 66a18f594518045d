"""Torch datasets and loaders over lists of `Sample`."""

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from reid.data.sampler import RandomIdentitySampler, ShardedBatchSampler
from reid.runtime import ReidError


def read_image(path):
    """Open an image as RGB; an unreadable file stops with its path."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise ReidError(f"cannot read image {path}: {err}") from None


class ImageDataset(Dataset):
    """Yields (image, pid, camid, index); index lets attacks find their guides.

    ``companions(index) -> paths``, if given, adds a fifth element: those images, loaded
    through the same transform and stacked (N, 3, H, W). GOAT's pushing guides come this
    way, so they are read in the loader's workers, batch by batch, never held in memory.
    """

    def __init__(self, samples, transform, companions=None):
        self.samples = list(samples)
        self.transform = transform
        self.companions = companions

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, pid, camid = self.samples[index]
        item = (self.transform(read_image(path)), pid, camid, index)
        if self.companions is None:
            return item
        extra = torch.stack([self.transform(read_image(p)) for p in self.companions(index)])
        return item + (extra,)


def train_loader(samples, transform, batch_size, num_instances=None, workers=0, seed=0, companions=None,
                 shard=(0, 1)):
    """Training loader; `num_instances` switches to P x K identity batches.

    The order depends only on `seed` (pass seed and epoch combined), not on the
    global RNG state, so a resumed run sees the same batches as an unbroken one.
    `companions`: extra images per sample (see `ImageDataset`). `shard` = (rank, world):
    `batch_size` is the global batch, of which this process takes its part (see
    `ShardedBatchSampler`); (0, 1) is the whole batch.
    """
    gen = torch.Generator().manual_seed(seed)
    dataset = ImageDataset(samples, transform, companions)
    if num_instances:
        try:
            sampler = RandomIdentitySampler([s.pid for s in samples], batch_size, num_instances, gen)
        except ValueError as err:
            raise ReidError(f"-b/-ni: {err}") from None
    else:
        sampler = RandomSampler(dataset, generator=gen)
    try:
        batches = ShardedBatchSampler(sampler, batch_size, *shard)
    except ValueError as err:
        raise ReidError(f"-b {batch_size}: {err}") from None
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=gen)


def eval_loader(samples, transform, batch_size, workers=0):
    """Evaluation loader: the samples in order. It has its own generator, so iterating it
    leaves the global RNG alone (a DataLoader draws its workers' base seed from it
    otherwise): evaluating during training does not change the training run."""
    return DataLoader(ImageDataset(samples, transform), batch_size=batch_size,
                      shuffle=False, num_workers=workers, generator=torch.Generator().manual_seed(0))
