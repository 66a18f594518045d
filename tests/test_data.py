import os
from collections import Counter

import pytest
import torch

from reid.data import (RandomIdentitySampler, build_transforms, eval_loader, load_dataset,
                       resolve_dataset_root)
from reid.utils import ReidError
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
