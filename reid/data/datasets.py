"""Re-ID dataset parsers: Market-1501, DukeMTMC-reID, MSMT17 and the open-reid layout.

Each parser turns a dataset folder into three lists of `Sample(path, pid, camid)`:
`train` with identities relabelled 0..N-1 in sorted pid order (the classifier's
labels), and `query` / `gallery` with their original pids (the ranking protocol
compares pids, and pid 0 / -1 keep their meaning there). Gallery junk (pid -1) is
left out; distractors (pid 0) stay. Camera ids are 0-based.

The open-reid layout (Cysu/open-reid, used for PersonX, UnrealPerson and RandPerson
as prepared for MetaAttack) is a folder holding

* `images/PPPPPPPP_CC_NNNN.jpg`: pid, 0-based camera, index within (pid, camera);
* `meta.json`: `{"name", "shot", "num_cameras", "identities"}` where
  `identities[pid][cam]` lists that pid's file names in that camera;
* `splits.json`: a list of `{"trainval", "query", "gallery"}`; split 0 is used.

`train` holds the images of the `trainval` pids. `query` and `gallery` are taken from
explicit file lists when the preparation wrote them (`query` / `gallery` in the split
given as file names, or `query_fnames` / `gallery_fnames` in meta.json, as MetaAttack's
PersonX preparation does). Otherwise they list pids and the images come from
`identities`: a pid listed on one side only gives all its images to that side (e.g.
distractors, gallery only), and the images of a pid listed on both sides are split
deterministically, camera by camera in meta.json order: in a camera holding two or
more images the first is a query and the others are gallery images; a camera holding
a single image gives it to the gallery, except for an identity that has no camera with
two images (single-shot), whose first camera's image is its query. So every query of
an identity seen by two cameras keeps a true match in another camera, which the
Market protocol (same pid and camera dropped from the gallery) needs. Cameras always
come from the file names, which must agree with their place in `identities`.
"""

import json
import os
import re
from dataclasses import dataclass, field
from typing import List, NamedTuple

from reid.utils import ReidError

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


# Market-1501: 0002_c1s1_000451_03.jpg; DukeMTMC-reID: 0001_c2_f0046182.jpg
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
# MSMT17: 0000_000_01_0303morning_0015_0.jpg (pid, index, camera, ...)
MSMT_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_")


def _list_images(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _parse_market_name(folder, fname):
    m = MARKET_NAME.match(fname)
    if m is None:
        raise ReidError(f"cannot parse image name {os.path.join(folder, fname)}: "
                        "expected PPPP_cC..., e.g. 0002_c1s1_000451_03.jpg")
    return int(m.group(1)), int(m.group(2)) - 1


def _relabel(samples):
    pids = sorted({s.pid for s in samples})
    label = {pid: i for i, pid in enumerate(pids)}
    return [Sample(s.path, label[s.pid], s.camid) for s in samples], pids


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
        for fname in _list_images(folder):
            pid, camid = _parse_market_name(folder, fname)
            out.append(Sample(os.path.join(folder, fname), pid, camid))
        if not out:
            raise ReidError(f"no images in {folder}")
        return out

    def load(self, root):
        train = [s for s in self._read(root, "bounding_box_train") if s.pid >= 0]
        train, train_pids = _relabel(train)
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
        train, train_pids = _relabel(self._read(root, "list_train.txt", train_dir))
        query = self._read(root, "list_query.txt", test_dir)
        gallery = self._read(root, "list_gallery.txt", test_dir)
        return ReidDataset(self.name, root, train, query, gallery, train_pids)


# open-reid: 00000042_01_0003.jpg (pid, 0-based camera, index within pid and camera)
OPENREID_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.\w+$")
OPENREID_EXAMPLE = "PPPPPPPP_CC_NNNN.jpg (pid, 0-based camera, index), e.g. 00000042_01_0003.jpg"
META_EXPECTED = ('open-reid meta.json: {"name", "shot", "num_cameras", '
                 '"identities": [per pid, per camera, file names]}')
SPLITS_EXPECTED = 'open-reid splits.json: a list of {"trainval": [pids], "query": [...], "gallery": [...]}'


def _read_json(path, expected):
    if not os.path.isfile(path):
        raise ReidError(f"{path} is missing: expected the {expected}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ReidError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
                        f"expected the {expected}") from None
    except UnicodeDecodeError:
        raise ReidError(f"{path} is not UTF-8 text: expected the {expected}") from None
    except OSError as err:
        raise ReidError(f"cannot read {path}: {err.strerror}") from None


def _is_pid(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_name_list(x):
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


class _OpenReidLayout:
    """open-reid: images/ of PPPPPPPP_CC_NNNN.jpg, meta.json and splits.json (split 0)."""

    def __init__(self, name, folder_names):
        self.name = name
        self.folder_names = folder_names

    def matches(self, path):
        # Any of the three marks the folder, so that a missing one is reported by name.
        return (os.path.isdir(os.path.join(path, "images"))
                or any(os.path.isfile(os.path.join(path, f)) for f in ("meta.json", "splits.json")))

    def expected(self):
        return "images/, meta.json and splits.json"

    def load(self, root):
        images = os.path.join(root, "images")
        if not os.path.isdir(images):
            raise ReidError(f"{images} is missing: expected the open-reid image folder of {OPENREID_EXAMPLE}")
        meta_path, splits_path = os.path.join(root, "meta.json"), os.path.join(root, "splits.json")
        meta = _read_json(meta_path, META_EXPECTED)
        splits = _read_json(splits_path, SPLITS_EXPECTED)
        identities = meta.get("identities") if isinstance(meta, dict) else None
        if not isinstance(identities, list):
            raise ReidError(f"{meta_path}: no 'identities' list: expected the {META_EXPECTED}")
        if not (isinstance(splits, list) and splits and isinstance(splits[0], dict)
                and all(isinstance(splits[0].get(k), list) for k in ("trainval", "query", "gallery"))):
            raise ReidError(f"{splits_path}: split 0 has no 'trainval', 'query' and 'gallery' lists: "
                            f"expected the {SPLITS_EXPECTED}")
        reader = _OpenReidReader(images, meta_path, splits_path, identities)
        split = splits[0]
        train, train_pids = _relabel([s for pid in reader.pids(split, "trainval") for cam in reader.identity(pid)
                                      for s in cam])
        query, gallery = self._test_sets(reader, meta, split)
        for what, samples, source in (("training", train, "trainval"), ("query", query, "query"),
                                      ("gallery", gallery, "gallery")):
            if not samples:
                raise ReidError(f"{splits_path}: split 0 gives no {what} images "
                                f"('{source}' lists {len(split[source])} entries)")
        return ReidDataset(self.name, root, train, query, gallery, train_pids)

    @staticmethod
    def _test_sets(reader, meta, split):
        named = [_is_name_list(split[k]) and split[k] != [] for k in ("query", "gallery")]
        if all(named):  # explicit file lists in splits.json
            return (reader.files(split["query"], f"{reader.splits_path}: split 0 'query'"),
                    reader.files(split["gallery"], f"{reader.splits_path}: split 0 'gallery'"))
        if any(named):
            raise ReidError(f"{reader.splits_path}: split 0 gives 'query' and 'gallery' one as file names, "
                            "the other as pids: expected both as file names or both as pids")
        if _is_name_list(meta.get("query_fnames")) and _is_name_list(meta.get("gallery_fnames")):
            return (reader.files(meta["query_fnames"], f"{reader.meta_path}: 'query_fnames'"),
                    reader.files(meta["gallery_fnames"], f"{reader.meta_path}: 'gallery_fnames'"))
        query_pids, gallery_pids = set(reader.pids(split, "query")), set(reader.pids(split, "gallery"))
        query, gallery = [], []
        for pid in sorted(query_pids | gallery_pids):
            cams = reader.identity(pid)
            if pid not in gallery_pids:
                query.extend(s for cam in cams for s in cam)
            elif pid not in query_pids:
                gallery.extend(s for cam in cams for s in cam)
            else:
                q, g = _split_query_gallery(cams)
                query.extend(q)
                gallery.extend(g)
        return query, gallery


def _split_query_gallery(cams):
    """One identity's images per camera -> (query, gallery): the rule in the module docstring."""
    multi_shot = any(len(cam) >= 2 for cam in cams)
    query, gallery = [], []
    for cam in cams:
        if len(cam) >= 2 or (cam and not multi_shot and not query):
            query.append(cam[0])
            gallery.extend(cam[1:])
        else:
            gallery.extend(cam)
    return query, gallery


class _OpenReidReader:
    """Checked access to one open-reid folder: pid lists, identities, file names."""

    def __init__(self, images, meta_path, splits_path, identities):
        self.images, self.meta_path, self.splits_path = images, meta_path, splits_path
        self.identities = identities
        self.present = set(os.listdir(images))

    def pids(self, split, key):
        pids = split[key]
        bad = next((p for p in pids if not (_is_pid(p) and p < len(self.identities))), None)
        if bad is not None:
            raise ReidError(f"{self.splits_path}: split 0 '{key}' holds {bad!r}: expected pids, indices into "
                            f"meta.json's identities (0..{len(self.identities) - 1})")
        return sorted(set(pids))

    def identity(self, pid):
        """identities[pid] as a list (per camera) of lists of Samples, names checked against their place."""
        cams = self.identities[pid]
        where = f"{self.meta_path}: identities[{pid}]"
        if not isinstance(cams, list) or not all(_is_name_list(cam) for cam in cams):
            raise ReidError(f"{where} is not a list of per-camera lists of file names")
        out = []
        for camid, names in enumerate(cams):
            samples = [self.sample(fname, f"{where}[{camid}]") for fname in names]
            for s, fname in zip(samples, names):
                if (s.pid, s.camid) != (pid, camid):
                    raise ReidError(f"{where}[{camid}] lists {fname}, whose name says pid {s.pid} camera "
                                    f"{s.camid}: expected {pid:08d}_{camid:02d}_NNNN")
            out.append(samples)
        return out

    def files(self, names, where):
        return [self.sample(fname, where) for fname in names]

    def sample(self, fname, where):
        m = OPENREID_NAME.match(os.path.basename(fname))
        if m is None or not fname.lower().endswith(IMAGE_EXTENSIONS):
            raise ReidError(f"{where}: cannot parse image name {fname!r}: expected {OPENREID_EXAMPLE}")
        path = os.path.join(self.images, fname)
        if fname not in self.present and not os.path.isfile(path):
            raise ReidError(f"{where} lists {fname}, which is missing from {self.images}")
        return Sample(path, int(m.group(1)), int(m.group(2)))


# The open-reid datasets of MetaAttack; `openreid` looks for any of their usual folder names.
OPENREID_FOLDERS = {"personx": ("personx", "PersonX"), "unreal": ("unreal", "UnrealPerson", "unrealperson"),
                    "randperson": ("randperson", "RandPerson")}

LAYOUTS = {
    "market": _FolderLayout("market", ("Market-1501-v15.09.15", "market1501", "Market-1501")),
    "duke": _FolderLayout("duke", ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid")),
    "msmt17": _MSMT17Layout("msmt17", ("MSMT17_V2", "MSMT17_V1", "msmt17")),
    "openreid": _OpenReidLayout("openreid", tuple(n for names in OPENREID_FOLDERS.values() for n in names)),
    **{alias: _OpenReidLayout(alias, names) for alias, names in OPENREID_FOLDERS.items()},
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
    return LAYOUTS[name].load(root)
