"""What a parsed dataset is: `Sample(path, pid, camid)` lists in a `ReidDataset`, and the helpers
every layout's parser shares (image listing, relabelling of the training identities)."""

import os
from dataclasses import dataclass, field
from typing import List, NamedTuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class Sample(NamedTuple):
    path: str
    pid: int
    camid: int


@dataclass
class ReidDataset:
    name: str
    root: str
    train: List[Sample]
    query: List[Sample]
    gallery: List[Sample]
    train_pids: List[int] = field(default_factory=list)  # label i <-> original pid train_pids[i]

    @property
    def num_train_pids(self):
        return len(self.train_pids)

    def summary(self):
        def row(name, samples):
            pids = {s.pid for s in samples}
            cams = {s.camid for s in samples}
            return f"  {name:<8} {len(pids):>6} ids {len(samples):>8} images {len(cams):>3} cameras"
        return "\n".join([f"{self.name} at {self.root}", row("train", self.train),
                          row("query", self.query), row("gallery", self.gallery)])


def list_images(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def relabel(samples):
    pids = sorted({s.pid for s in samples})
    label = {pid: i for i, pid in enumerate(pids)}
    return [Sample(s.path, label[s.pid], s.camid) for s in samples], pids
