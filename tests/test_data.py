import os
from collections import Counter

import pytest
import torch

from reid.data import RandomIdentitySampler, build_transforms, eval_loader, load_dataset, resolve_dataset_root
from reid.runtime import ReidError
from tests.conftest import make_market, write_image


def test_market_parsing_and_relabelling(tiny_market):
    data = load_dataset(tiny_market, "market")
    # Independent expectation from the file names: labels follow sorted original pids.
    assert data.train_pids == [3, 7, 42]
    names = {os.path.basename(s.path): s for s in data.train}
    for fname, s in names.items():
        pid, cam = int(fname[:4]), int(fname.split("_c")[1][0])
        assert s.pid == [3, 7, 42].index(pid) and s.camid == cam - 1
    assert data.num_train_pids == 3
    assert sorted(s.pid for s in data.query) == [5, 9]
    # junk (-1) left out of the gallery, distractor (0) kept
    assert sorted(s.pid for s in data.gallery) == [0, 5, 5, 9]


def test_root_with_usual_folder_name(tiny_market):
    parent = os.path.dirname(tiny_market)
    assert resolve_dataset_root(parent, "market") == os.path.normpath(tiny_market)
    assert resolve_dataset_root(tiny_market, "market") == os.path.normpath(tiny_market)


def test_missing_folder_and_wrong_layout(tmp_path):
    with pytest.raises(ReidError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"), "market")
    (tmp_path / "query").mkdir()
    with pytest.raises(ReidError) as err:
        load_dataset(str(tmp_path), "market")
    msg = str(err.value)
    assert str(tmp_path) in msg and "bounding_box_train" in msg and "\n" not in msg


def test_unknown_dataset_name(tiny_market):
    with pytest.raises(ReidError, match="--dataset"):
        load_dataset(tiny_market, "cuhk03")


def test_bad_file_name_is_named(tiny_market):
    write_image(os.path.join(tiny_market, "query", "person.jpg"))
    with pytest.raises(ReidError, match="person.jpg"):
        load_dataset(tiny_market, "market")


def test_non_image_files_ignored(tiny_market):
    open(os.path.join(tiny_market, "query", "Thumbs.db"), "w").close()
    assert len(load_dataset(tiny_market).query) == 2


def test_duke_names(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    for sub, name in (("bounding_box_train", "0001_c2_f0046182.jpg"), ("query", "0005_c1_f0001.jpg"),
                      ("bounding_box_test", "0005_c3_f0002.jpg")):
        write_image(str(root / sub / name))
    data = load_dataset(str(tmp_path), "duke")
    assert data.train[0].pid == 0 and data.train[0].camid == 1
    assert data.gallery[0].camid == 2


def test_msmt17_lists(tmp_path):
    root = _mk(tmp_path / "MSMT17_V1")
    lines = {"list_train.txt": [("train", "0010/0010_000_05_0303morning_0015_0.jpg", 10),
                                ("train", "0002/0002_001_01_0303noon_0001_1.jpg", 2)],
             "list_query.txt": [("test", "0000/0000_000_01_0303morning_0015_0.jpg", 0)],
             "list_gallery.txt": [("test", "0000/0000_001_14_0303morning_0016_0.jpg", 0)]}
    for list_name, rows in lines.items():
        with open(root / list_name, "w") as f:
            for image_dir, rel, pid in rows:
                write_image(str(root / image_dir / rel))
                f.write(f"{rel} {pid}\n")
    data = load_dataset(str(tmp_path), "msmt17")
    assert data.train_pids == [2, 10]
    assert {(s.pid, s.camid) for s in data.train} == {(1, 4), (0, 0)}
    assert data.gallery[0].camid == 13 and os.path.isfile(data.gallery[0].path)


def _mk(path):
    path.mkdir(parents=True)
    return path


def test_msmt17_bad_line(tmp_path):
    root = _mk(tmp_path / "msmt")
    for d in ("train", "test"):
        (root / d).mkdir()
    for name in ("list_train.txt", "list_query.txt", "list_gallery.txt"):
        (root / name).write_text("garbage\n")
    with pytest.raises(ReidError, match="list_train.txt:1"):
        load_dataset(str(root), "msmt17")


def test_unreadable_image_stops_with_its_path(tiny_market):
    bad = os.path.join(tiny_market, "query", "0005_c2s1_000099_01.jpg")
    with open(bad, "w") as f:
        f.write("not an image")
    data = load_dataset(tiny_market)
    loader = eval_loader(data.query, build_transforms(32, 16), batch_size=4)
    with pytest.raises(ReidError, match="000099"):
        list(loader)


def test_transforms_shape_and_range():
    from PIL import Image
    img = Image.new("RGB", (50, 100), (255, 0, 0))
    for train in (False, True):
        x = build_transforms(64, 32, train=train)(img)
        assert x.shape == (3, 64, 32) and 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("k", [2, 4])
def test_identity_sampler_batches(k):
    # 9 identities with uneven counts (one with fewer than K images)
    labels = [pid for pid, n in enumerate([1, 5, 8, 4, 3, 9, 2, 6, 7]) for _ in range(n)]
    p = 3
    gen = torch.Generator().manual_seed(0)
    sampler = RandomIdentitySampler(labels, batch_size=p * k, num_instances=k, generator=gen)
    indices = list(sampler)
    assert len(indices) % (p * k) == 0 and len(indices) <= len(sampler)
    for b in range(0, len(indices), p * k):
        batch = [labels[i] for i in indices[b:b + p * k]]
        counts = Counter(batch)
        assert len(counts) == p and set(counts.values()) == {k}
        # each group of K consecutive indices is one identity
        for g in range(0, p * k, k):
            assert len(set(batch[g:g + k])) == 1
    # identities with >= K images never repeat an image inside an epoch
    rich = [i for i in indices if labels.count(labels[i]) >= k]
    assert len(rich) == len(set(rich))
    # same generator seed -> same order
    again = list(RandomIdentitySampler(labels, p * k, k, torch.Generator().manual_seed(0)))
    assert again == indices


def test_identity_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError):
        RandomIdentitySampler([0, 0, 1, 1], batch_size=6, num_instances=4)
    with pytest.raises(ValueError):
        RandomIdentitySampler([0, 0, 1, 1], batch_size=12, num_instances=4)


# --- open-reid layout (PersonX / UnrealPerson / RandPerson as prepared for MetaAttack) ---

def _or(pid, cam, idx):
    return f"{pid:08d}_{cam:02d}_{idx:04d}.jpg"


def _identities(spec):
    """{pid: [images per camera]} -> open-reid identities (3 cameras, empty slots for absent pids)."""
    out = [[[] for _ in range(3)] for _ in range(max(spec) + 2)]
    for pid, counts in spec.items():
        out[pid] = [[_or(pid, cam, i) for i in range(n)] for cam, n in enumerate(counts)]
    return out


# pid 0: distractor (gallery only); 1: multi-shot test id; 5: single-shot test id (cameras 1, 2);
# 2, 4, 6: training ids; 3 and 7: no images.
OPENREID_SPEC = {0: [1, 1, 0], 1: [3, 2, 1], 2: [1, 1, 0], 4: [0, 0, 2], 5: [0, 1, 1], 6: [1, 0, 0]}
OPENREID_SPLIT = {"trainval": [6, 2, 4], "query": [1, 5], "gallery": [0, 1, 5]}


def make_openreid(root, spec=None, split=None, meta_extra=None, write=True):
    """Write an open-reid folder: images/, meta.json, splits.json (one split)."""
    import json
    identities = _identities(spec or OPENREID_SPEC)
    for i, name in enumerate(n for cams in identities for cam in cams for n in cam):
        if write:
            write_image(os.path.join(root, "images", name), seed=i)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    meta = {"name": "PersonX", "shot": "multiple", "num_cameras": 3, "identities": identities, **(meta_extra or {})}
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(root, "splits.json"), "w") as f:
        json.dump([split or OPENREID_SPLIT], f)
    return root


def _names(samples):
    return sorted(os.path.basename(s.path) for s in samples)


def test_openreid_parsing_relabelling_and_query_gallery_rule(tmp_path):
    root = make_openreid(str(tmp_path / "personx"))
    data = load_dataset(root, "openreid")
    assert data.name == "openreid" and data.root == os.path.normpath(root)
    assert data.train_pids == [2, 4, 6]
    assert sorted((s.pid, s.camid, os.path.basename(s.path)) for s in data.train) == [
        (0, 0, _or(2, 0, 0)), (0, 1, _or(2, 1, 0)), (1, 2, _or(4, 2, 0)), (1, 2, _or(4, 2, 1)),
        (2, 0, _or(6, 0, 0))]
    assert all(os.path.isfile(s.path) for s in data.train + data.query + data.gallery)
    # pid 1: first image of each camera with two or more images is a query, the rest gallery;
    # its single-image camera 2 goes to the gallery. pid 5 (single-shot): first camera's image is the query.
    assert _names(data.query) == [_or(1, 0, 0), _or(1, 1, 0), _or(5, 1, 0)]
    assert _names(data.gallery) == [_or(0, 0, 0), _or(0, 1, 0), _or(1, 0, 1), _or(1, 0, 2), _or(1, 1, 1),
                                    _or(1, 2, 0), _or(5, 2, 0)]
    # original pids and cameras from the names; every query keeps a match in another camera
    for s in data.query + data.gallery:
        name = os.path.basename(s.path)
        assert (s.pid, s.camid) == (int(name[:8]), int(name[9:11]))
    for q in data.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in data.gallery)


@pytest.mark.parametrize("alias,folder", [("openreid", "UnrealPerson"), ("personx", "PersonX"),
                                          ("personx", "personx"), ("unreal", "unreal"),
                                          ("randperson", "RandPerson"), ("openreid", "randperson")])
def test_openreid_aliases_find_their_folders(tmp_path, alias, folder):
    make_openreid(str(tmp_path / folder))
    data = load_dataset(str(tmp_path), alias)
    assert data.name == alias and os.path.basename(data.root) == folder and data.num_train_pids == 3


def test_openreid_alias_wrong_folder_name(tmp_path):
    make_openreid(str(tmp_path / "RandPerson"))
    with pytest.raises(ReidError) as err:
        load_dataset(str(tmp_path), "personx")
    msg = str(err.value)
    assert "meta.json" in msg and "PersonX" in msg and "\n" not in msg


def test_openreid_explicit_file_lists(tmp_path):
    # splits.json may list the query / gallery files themselves
    split = {**OPENREID_SPLIT, "query": [_or(1, 2, 0)], "gallery": [_or(1, 0, 0), _or(0, 1, 0)]}
    data = load_dataset(make_openreid(str(tmp_path / "a"), split=split), "openreid")
    assert _names(data.query) == [_or(1, 2, 0)] and data.query[0].camid == 2
    assert _names(data.gallery) == [_or(0, 1, 0), _or(1, 0, 0)]
    # MetaAttack's PersonX preparation keeps them in meta.json
    extra = {"query_fnames": [_or(5, 2, 0)], "gallery_fnames": [_or(5, 1, 0), _or(1, 1, 1)]}
    data = load_dataset(make_openreid(str(tmp_path / "b"), meta_extra=extra), "openreid")
    assert _names(data.query) == [_or(5, 2, 0)]
    assert _names(data.gallery) == [_or(1, 1, 1), _or(5, 1, 0)]
    assert data.train_pids == [2, 4, 6]


def _break(root, what):
    """Damage an open-reid folder; returns the text the error must name."""
    import json
    meta_path, splits_path = os.path.join(root, "meta.json"), os.path.join(root, "splits.json")
    if what == "no meta":
        os.remove(meta_path)
        return "meta.json is missing"
    if what == "no splits":
        os.remove(splits_path)
        return "splits.json is missing"
    if what == "no images":
        import shutil
        shutil.rmtree(os.path.join(root, "images"))
        return "images is missing"
    if what == "bad meta json":
        with open(meta_path, "w") as f:
            f.write('{"identities": [[[')
        return "meta.json is not valid JSON"
    if what == "bad splits json":
        with open(splits_path, "w") as f:
            f.write("[{trainval: 1}]")
        return "splits.json is not valid JSON"
    if what == "no identities":
        with open(meta_path, "w") as f:
            json.dump({"name": "x"}, f)
        return "meta.json: no 'identities'"
    if what == "split keys":
        with open(splits_path, "w") as f:
            json.dump([{"trainval": [2]}], f)
        return "splits.json: split 0 has no"
    if what == "pid out of range":
        with open(splits_path, "w") as f:
            json.dump([{**OPENREID_SPLIT, "trainval": [2, 99]}], f)
        return "'trainval' holds 99"
    meta = json.load(open(meta_path))
    if what == "bad name":
        meta["identities"][6][0] = ["person.jpg"]
        write_image(os.path.join(root, "images", "person.jpg"))
        msg = "identities[6][0]: cannot parse image name 'person.jpg'"
    elif what == "misplaced name":
        meta["identities"][6][1] = [_or(6, 0, 0)]
        msg = "identities[6][1] lists 00000006_00_0000.jpg"
    elif what == "missing image":
        os.remove(os.path.join(root, "images", _or(1, 1, 1)))
        msg = "lists 00000001_01_0001.jpg, which is missing"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return msg


@pytest.mark.parametrize("what", ["no meta", "no splits", "no images", "bad meta json", "bad splits json",
                                  "no identities", "split keys", "pid out of range", "bad name",
                                  "misplaced name", "missing image"])
def test_openreid_errors_are_one_line(tmp_path, what):
    root = make_openreid(str(tmp_path / "personx"))
    expected = _break(root, what)
    with pytest.raises(ReidError) as err:
        load_dataset(str(tmp_path), "personx")
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg
    assert root in msg
