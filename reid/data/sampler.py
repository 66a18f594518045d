"""P x K identity sampler for triplet training, and the per-process share of training batches."""

from collections import defaultdict

import torch
from torch.utils.data import BatchSampler, Sampler


class RandomIdentitySampler(Sampler):
    """Yields batches' indices as P identities x K instances (K = `-ni`).

    The batch-hard triplet loss needs positives and negatives in every batch, so
    each batch of `batch_size` = P*K indices holds P distinct identities with K
    images each. An identity with fewer than K images is sampled with replacement;
    otherwise its images are split into as many groups of K as they fill. The epoch
    ends when fewer than P identities have groups left. Randomness comes from
    `generator` (re-seeded per epoch for exact resumption).
    """

    def __init__(self, labels, batch_size, num_instances=4, generator=None):
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} must be a multiple of num_instances {num_instances}")
        self.k = num_instances
        self.p = batch_size // num_instances
        self.generator = generator
        self.index_by_pid = defaultdict(list)
        for i, pid in enumerate(labels):
            self.index_by_pid[int(pid)].append(i)
        if len(self.index_by_pid) < self.p:
            raise ValueError(f"batch size {batch_size} needs {self.p} identities, data has {len(self.index_by_pid)}")

    def _rand(self, n):
        return torch.randperm(n, generator=self.generator).tolist()

    def _groups(self):
        groups = {}
        for pid, indices in self.index_by_pid.items():
            idx = torch.tensor(indices)
            if len(idx) < self.k:
                idx = idx[torch.randint(len(idx), (self.k,), generator=self.generator)]
            else:
                idx = idx[self._rand(len(idx))][: len(idx) // self.k * self.k]
            groups[pid] = idx.view(-1, self.k).tolist()
        return groups

    def __iter__(self):
        groups = self._groups()
        while len(groups) >= self.p:
            pids = sorted(groups)
            for j in self._rand(len(pids))[: self.p]:
                pid = pids[j]
                yield from groups[pid].pop()
                if not groups[pid]:
                    del groups[pid]

    def __len__(self):
        # Upper bound (exact when identities have balanced image counts).
        n = sum(max(len(v), self.k) // self.k for v in self.index_by_pid.values())
        return n // self.p * self.p * self.k


class ShardedBatchSampler(Sampler):
    """Global batches of ``batch_size`` indices from ``sampler`` (an incomplete last one
    dropped), of which process ``rank`` of ``world`` yields its contiguous part of
    ``batch_size // world`` indices.

    Every process runs the same ``sampler`` with the same seed, so at each step the parts
    are disjoint and together make the batch a single process would take; over the epoch
    they cover the same samples. P x K batches (``RandomIdentitySampler``) list each
    identity's K instances together, so a part holds whole identities when P is a multiple
    of ``world``. With ``world`` 1 this is the usual batching (``drop_last=True``).
    """

    def __init__(self, sampler, batch_size, rank=0, world=1):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of {world} processes")
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not a multiple of the {world} processes")
        self.batches = BatchSampler(sampler, batch_size, drop_last=True)
        self.part = batch_size // world
        self.rank = rank

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank * self.part:(self.rank + 1) * self.part]

    def __len__(self):
        return len(self.batches)
