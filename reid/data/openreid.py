"""The open-reid layout (Cysu/open-reid), used for PersonX, UnrealPerson and RandPerson as
prepared for MetaAttack: `--dataset openreid` (or `personx`, `unreal`, `randperson`).

A dataset in this layout is a folder holding

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
import shutil

from reid.data.samples import IMAGE_EXTENSIONS, ReidDataset, Sample, relabel
from reid.runtime import ReidError, link_or_copy

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


class OpenReidLayout:
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
        train, train_pids = relabel([s for pid in reader.pids(split, "trainval") for cam in reader.identity(pid)
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
OPENREID_NAMES = ("openreid", *OPENREID_FOLDERS)  # the --dataset names of this layout


def write_openreid_like(data, root, split, names):
    """Make `root` an open-reid dataset of `data` (read from an open-reid folder) whose `split`
    ("query" or "gallery") is the files `names` (one per sample, in order) that the caller writes
    into root/images (`--save-images`). The other images are linked from the dataset, meta.json
    is copied and splits.json's split 0 keeps its trainval and lists query and gallery by file
    name (explicit lists), so `load_dataset(root, "openreid")` gives the same ids and cameras."""
    source, images = os.path.join(data.root, "images"), os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    replaced = {os.path.relpath(s.path, source) for s in getattr(data, split)}
    for dirpath, _, files in os.walk(source):
        for fname in files:
            rel = os.path.relpath(os.path.join(dirpath, fname), source)
            dst = os.path.join(images, rel)
            if rel not in replaced and not os.path.lexists(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                link_or_copy(os.path.join(source, rel), dst)
    lists = {k: [os.path.relpath(s.path, source) for s in getattr(data, k)] for k in ("query", "gallery")}
    lists[split] = list(names)
    with open(os.path.join(data.root, "splits.json"), encoding="utf-8") as f:
        first = json.load(f)[0]
    shutil.copyfile(os.path.join(data.root, "meta.json"), os.path.join(root, "meta.json"))
    with open(os.path.join(root, "splits.json"), "w", encoding="utf-8") as f:
        json.dump([{**first, **lists}], f)
