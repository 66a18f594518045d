"""Re-ID dataset parsers: Market-1501, DukeMTMC-reID and MSMT17 here, the open-reid layout in
`reid.data.openreid`; `LAYOUTS` (the `--dataset` names) and `load_dataset`.

Each parser turns a dataset folder into three lists of `Sample(path, pid, camid)`:
`train` with identities relabelled 0..N-1 in sorted pid order (the classifier's
labels), and `query` / `gallery` with their original pids (the ranking protocol
compares pids, and pid 0 / -1 keep their meaning there). Gallery junk (pid -1) is
left out; distractors (pid 0) stay. Camera ids are 0-based.
"""

import os
import re

from reid.data.openreid import OPENREID_FOLDERS, OpenReidLayout
from reid.data.samples import ReidDataset, Sample, list_images, relabel
from reid.runtime import ReidError

# Market-1501: 0002_c1s1_000451_03.jpg; DukeMTMC-reID: 0001_c2_f0046182.jpg
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
# MSMT17: 0000_000_01_0303morning_0015_0.jpg (pid, index, camera, ...)
MSMT_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")


def _parse_market_name(folder, fname):
    m = MARKET_NAME.match(fname)
    if m is None:
        raise ReidError(f"cannot parse image name {os.path.join(folder, fname)}: "
                        "expected PPPP_cC..., e.g. 0002_c1s1_000451_03.jpg")
    return int(m.group(1)), int(m.group(2)) - 1


class _FolderLayout:
    """Market-1501 / DukeMTMC-reID: three folders of images named by pid and camera."""

    subdirs = ("bounding_box_train", "query", "bounding_box_test")

    def __init__(self, name, folder_names):
        self.name = name
        self.folder_names = folder_names

    def matches(self, path):
        return all(os.path.isdir(os.path.join(path, d)) for d in self.subdirs)

    def expected(self):
        return "sub-folders " + ", ".join(self.subdirs)

    def _read(self, root, sub):
        folder = os.path.join(root, sub)
        out = []
        for fname in list_images(folder):
            pid, camid = _parse_market_name(folder, fname)
            out.append(Sample(os.path.join(folder, fname), pid, camid))
        if not out:
            raise ReidError(f"no images in {folder}")
        return out

    def load(self, root):
        train = [s for s in self._read(root, "bounding_box_train") if s.pid >= 0]
        train, train_pids = relabel(train)
        query = self._read(root, "query")
        gallery = [s for s in self._read(root, "bounding_box_test") if s.pid != -1]
        return ReidDataset(self.name, root, train, query, gallery, train_pids)


class _MSMT17Layout:
    """MSMT17: list files `list_{train,query,gallery}.txt` of `relpath pid` lines."""

    lists = ("list_train.txt", "list_query.txt", "list_gallery.txt")
    image_dirs = (("train", "test"), ("mask_train_v2", "mask_test_v2"))  # V1, V2

    def __init__(self, name, folder_names):
        self.name = name
        self.folder_names = folder_names

    def _dirs(self, path):
        for train_dir, test_dir in self.image_dirs:
            if os.path.isdir(os.path.join(path, train_dir)) and os.path.isdir(os.path.join(path, test_dir)):
                return train_dir, test_dir
        return None

    def matches(self, path):
        return self._dirs(path) is not None and all(os.path.isfile(os.path.join(path, f)) for f in self.lists)

    def expected(self):
        return "list files " + ", ".join(self.lists) + " and image folders train/ + test/ (V1) or mask_train_v2/ + mask_test_v2/ (V2)"

    def _read(self, root, list_name, image_dir):
        list_path = os.path.join(root, list_name)
        out = []
        with open(list_path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split()
                fname = os.path.basename(parts[0])
                m = MSMT_NAME.match(fname)
                if len(parts) != 2 or m is None or not parts[1].lstrip("-").isdigit():
                    raise ReidError(f"{list_path}:{lineno}: expected 'PID/PID_IDX_CAM_..._.jpg PID', got {line.strip()!r}")
                out.append(Sample(os.path.join(root, image_dir, parts[0]), int(parts[1]), int(m.group(3)) - 1))
        return out

    def load(self, root):
        train_dir, test_dir = self._dirs(root)
        train, train_pids = relabel(self._read(root, "list_train.txt", train_dir))
        query = self._read(root, "list_query.txt", test_dir)
        gallery = self._read(root, "list_gallery.txt", test_dir)
        return ReidDataset(self.name, root, train, query, gallery, train_pids)


LAYOUTS = {
    "market": _FolderLayout("market", ("Market-1501-v15.09.15", "market1501", "Market-1501")),
    "duke": _FolderLayout("duke", ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid")),
    "msmt17": _MSMT17Layout("msmt17", ("MSMT17_V2", "MSMT17_V1", "msmt17")),
    "openreid": OpenReidLayout("openreid", tuple(n for names in OPENREID_FOLDERS.values() for n in names)),
    **{alias: OpenReidLayout(alias, names) for alias, names in OPENREID_FOLDERS.items()},
}


def resolve_dataset_root(path, name="market"):
    """The dataset folder itself, or a root holding it under one of its usual names."""
    if name not in LAYOUTS:
        raise ReidError(f"--dataset {name!r}: expected one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[name]
    if not os.path.isdir(path):
        raise ReidError(f"dataset folder {path} does not exist")
    for candidate in (path, *(os.path.join(path, n) for n in layout.folder_names)):
        if layout.matches(candidate):
            return os.path.normpath(candidate)
    article = "an" if name[0] in "aeiou" else "a"
    raise ReidError(f"{path} is not {article} {name} dataset: expected {layout.expected()} "
                    f"(in it or in a sub-folder named {' or '.join(layout.folder_names)})")


def load_dataset(path, name="market"):
    """Parse the dataset at `path` (see `resolve_dataset_root`) into a ReidDataset."""
    root = resolve_dataset_root(path, name)
    data = LAYOUTS[name].load(root)
    for sample in (*data.train, *data.query, *data.gallery):  # now, not at the first evaluation after an epoch
        if os.path.getsize(sample.path) == 0:
            raise ReidError(f"{sample.path}: the image file is empty")
    return data
