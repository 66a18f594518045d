"""The synthetic dataset generator: Market-1501 and open-reid layouts, real and virtual
styles, protocol guarantees, determinism."""

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from reid.data import load_dataset
from reid.data.synthetic import SPLITS, generate, main
from reid.runtime import ReidError, cli_main
from tests.conftest import train_cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
OPENREID_NAME = re.compile(r"^(\d{8})_(\d{2})_(\d{4})\.jpg$")
SMALL = dict(ids=8, cams=3, height=64, width=32, distractors=5, junk=3)


def _parse(root):
    """{split: [(pid, cam, fname)]}, asserting every name matches the Market pattern."""
    out = {}
    for split in SPLITS:
        rows = []
        for fname in sorted(os.listdir(os.path.join(root, split))):
            m = NAME.match(fname)
            assert m, f"{split}/{fname} does not look like a Market-1501 name"
            rows.append((int(m.group(1)), int(m.group(2)), fname))
        out[split] = rows
    return out


def _read_all(root):
    """{(split, fname): file bytes} of a generated dataset."""
    return {(split, p.name): p.read_bytes() for split in SPLITS for p in (Path(root) / split).iterdir()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    counts = generate(str(root), seed=3, **SMALL)
    return str(root), counts


def test_layout_and_counts(small):
    root, counts = small
    assert sorted(os.listdir(root)) == sorted(SPLITS)
    files = _parse(root)
    assert len(files["bounding_box_train"]) == counts["train_images"]
    assert len(files["query"]) == counts["query"]
    assert len(files["bounding_box_test"]) == counts["gallery"]
    assert len({p for p, _, _ in files["bounding_box_train"]}) == counts["train_ids"] == 8
    assert len({p for p, _, _ in files["query"]}) == counts["test_ids"] == 8
    for split, rows in files.items():
        assert all(1 <= cam <= 3 for _, cam, _ in rows), split


def test_open_set_with_scattered_pids(small):
    files = _parse(small[0])
    train = {p for p, _, _ in files["bounding_box_train"]}
    query = {p for p, _, _ in files["query"]}
    gallery = {p for p, _, _ in files["bounding_box_test"]} - {0, -1}
    assert not train & (query | gallery)
    assert query == gallery
    assert all(1 <= p <= 9999 for p in train | query)
    assert sorted(train) != list(range(min(train), min(train) + len(train)))  # relabelling needed


def test_every_query_has_a_cross_camera_match(small):
    files = _parse(small[0])
    gallery_cams = defaultdict(set)
    for pid, cam, _ in files["bounding_box_test"]:
        gallery_cams[pid].add(cam)
    for pid, cam, fname in files["query"]:
        assert gallery_cams[pid] - {cam}, f"query {fname} has no match in another camera"
    query_cams = defaultdict(list)
    for pid, cam, _ in files["query"]:
        query_cams[pid].append(cam)
    assert all(len(cams) >= 2 and len(set(cams)) == len(cams) for cams in query_cams.values())


def test_distractors_and_junk_in_gallery(small):
    root, counts = small
    gallery = _parse(root)["bounding_box_test"]
    assert sum(p == 0 for p, _, _ in gallery) == counts["distractors"] == 5
    assert sum(p == -1 for p, _, _ in gallery) == counts["junk"] == 3
    assert any(f.startswith("-1_c") for _, _, f in gallery)
    assert any(f.startswith("0000_c") for _, _, f in gallery)


def test_the_market_parser_reads_it(small):
    root, counts = small
    data = load_dataset(root, "market")
    assert data.num_train_pids == counts["train_ids"]
    assert sorted({s.pid for s in data.train}) == list(range(counts["train_ids"]))
    assert len(data.query) == counts["query"]
    assert len(data.gallery) == counts["gallery"] - counts["junk"]


def test_images_have_the_requested_size(small):
    root, _ = small
    for split in SPLITS:
        fname = sorted(os.listdir(os.path.join(root, split)))[0]
        with Image.open(os.path.join(root, split, fname)) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (32, 64)


def test_deterministic_per_seed(small, tmp_path):
    root, counts = small
    assert generate(str(tmp_path / "same"), seed=3, **SMALL) == counts
    assert _read_all(str(tmp_path / "same")) == _read_all(root)
    generate(str(tmp_path / "other"), seed=4, **SMALL)
    assert _read_all(str(tmp_path / "other")) != _read_all(root)


def test_refuses_to_mix_with_an_existing_dataset(small, tmp_path):
    generate(str(tmp_path), seed=1, **SMALL)
    with pytest.raises(ReidError, match="--overwrite"):
        generate(str(tmp_path), seed=3, **SMALL)
    generate(str(tmp_path), seed=3, overwrite=True, **SMALL)
    assert _read_all(str(tmp_path)) == _read_all(small[0])


@pytest.mark.parametrize("kwargs", [dict(ids=1), dict(cams=1), dict(cams=10), dict(test_ids=1),
                                    dict(height=8), dict(junk=-1)])
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ReidError):
        generate(str(tmp_path), **{**SMALL, **kwargs})


def test_cli(tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "reid.data.synthetic", str(out), "--ids", "3", "--cams", "2",
            "--height", "64", "--width", "32", "--distractors", "2", "--junk", "1", "--seed", "5"]
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train images" in done.stdout
    assert len(_parse(str(out))["bounding_box_test"]) > 3


@pytest.mark.parametrize("flags, shown", [(["--cams", "1"], "--cams 1"),
                                          (["--seed", "-1"], "--seed -1: expected an integer >= 0")])
def test_cli_error_is_one_line(tmp_path, capsys, flags, shown):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: main([str(tmp_path), *flags]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and shown in err


# --- open-reid layout, virtual style ---

# sha256 of test_synthetic's `small` set (seed 3) before --layout / --style existed; the
# bytes depend on numpy's random streams and Pillow's JPEG encoder, so it is checked
# with the versions requirements.lock pins.
SMALL_SEED3_SHA256 = "a55f4964d807ecc3d6248d1763491c48cfa1e31fe2e3e827da07c6a3f9b2c7f6"
LOCKED_VERSIONS = ("2.4.6", "13.0.0")  # numpy, pillow


def _tree_sha256(root):
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for fname in sorted(files):
            path = os.path.join(folder, fname)
            digest.update(os.path.relpath(path, root).encode())
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@pytest.mark.skipif((np.__version__, PIL.__version__) != LOCKED_VERSIONS,
                    reason="golden bytes recorded with requirements.lock's numpy and pillow")
def test_default_output_is_unchanged(small):
    assert _tree_sha256(small[0]) == SMALL_SEED3_SHA256


@pytest.fixture(scope="module")
def small_openreid(tmp_path_factory):
    root = tmp_path_factory.mktemp("openreid")
    counts = generate(str(root), seed=3, layout="openreid", **SMALL)
    return str(root), counts


def test_openreid_layout_files(small_openreid):
    root, counts = small_openreid
    assert sorted(os.listdir(root)) == ["images", "meta.json", "splits.json"]
    names = os.listdir(os.path.join(root, "images"))
    assert all(OPENREID_NAME.match(n) for n in names)
    assert {int(n[9:11]) for n in names} == {0, 1, 2}  # 0-based cameras
    meta = json.loads(Path(root, "meta.json").read_text())
    splits = json.loads(Path(root, "splits.json").read_text())
    assert meta["num_cameras"] == 3 and meta["shot"] == "multiple"
    listed = [n for cams in meta["identities"] for cam in cams for n in cam]
    assert sorted(listed) == sorted(names)
    assert len(splits) == 1 and len(splits[0]["trainval"]) == 8 and len(splits[0]["query"]) == 8
    assert splits[0]["gallery"] == [0] + splits[0]["query"]  # distractors are pid 0, gallery only
    assert counts["junk"] == 0 and counts["distractors"] == 5


def test_openreid_layout_loads(small_openreid):
    root, counts = small_openreid
    data = load_dataset(root, "openreid")
    assert data.num_train_pids == counts["train_ids"] == 8
    assert len(data.train) == counts["train_images"]
    assert len(data.query) == counts["query"] and len(data.gallery) == counts["gallery"]
    assert sum(s.pid == 0 for s in data.gallery) == 5
    for q in data.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in data.gallery)


def test_openreid_holds_the_market_images(small, small_openreid):
    """Same seed: the same images, pids and cameras in both layouts (junk aside)."""
    market, openreid = load_dataset(small[0], "market"), load_dataset(small_openreid[0], "openreid")
    assert market.train_pids == openreid.train_pids

    def content(samples):
        return sorted((s.pid, s.camid, Path(s.path).read_bytes()) for s in samples)
    for split in ("train", "query", "gallery"):
        assert content(getattr(market, split)) == content(getattr(openreid, split)), split


def _stats(root):
    """(mean HSV saturation, mean brightness, fraction of flat pixels) of a Market-layout set."""
    images = [Image.open(p).convert("RGB") for split in SPLITS for p in sorted((Path(root) / split).iterdir())]
    saturation = np.mean([np.asarray(im.convert("HSV"))[..., 1].mean() for im in images])
    grey = np.stack([np.asarray(im.convert("L"), np.float32) for im in images])
    lap = np.abs(4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2]
                 - grey[:, 1:-1, 2:])
    return saturation, grey.mean(), (lap < 2).mean()


def test_virtual_style_looks_different_and_is_deterministic(small, tmp_path):
    root = str(tmp_path / "virtual")
    counts = generate(root, seed=3, style="virtual", **SMALL)
    real_sat, real_bright, real_flat = _stats(small[0])
    sat, bright, flat = _stats(root)
    assert sat > real_sat + 5  # saturated colours
    assert bright > real_bright + 20  # bright, clean scenes
    assert flat > 1.5 * real_flat  # flat shading, no sensor noise
    assert not set(_read_all(root).values()) & set(_read_all(small[0]).values())
    # deterministic, and the Market parser reads it
    assert generate(str(tmp_path / "again"), seed=3, style="virtual", **SMALL) == counts
    assert _read_all(str(tmp_path / "again")) == _read_all(root)
    assert load_dataset(root, "market").num_train_pids == 8


def test_cli_layout_and_style(tmp_path, capsys):
    out = tmp_path / "virtual_openreid"
    main([str(out), "--layout", "openreid", "--style", "virtual", "--ids", "3", "--cams", "2",
          "--height", "64", "--width", "32", "--distractors", "2", "--seed", "5"])
    assert "junk 0" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "synthetic-virtual"
    assert load_dataset(str(out), "openreid").num_train_pids == 3


@pytest.mark.parametrize("kwargs", [dict(layout="duke"), dict(style="cartoon")])
def test_invalid_layout_or_style(tmp_path, kwargs):
    with pytest.raises(ReidError, match="--layout|--style"):
        generate(str(tmp_path), **{**SMALL, **kwargs})
    assert not os.listdir(tmp_path)


def test_refuses_to_mix_layouts(tmp_path):
    small = dict(SMALL, ids=2, distractors=0, junk=0)
    generate(str(tmp_path), seed=1, **small)
    with pytest.raises(ReidError, match="--overwrite"):
        generate(str(tmp_path), seed=1, layout="openreid", **small)
    generate(str(tmp_path), seed=1, layout="openreid", overwrite=True, **small)
    assert sorted(os.listdir(tmp_path)) == ["images", "meta.json", "splits.json"]


def test_train_on_an_openreid_synthetic_set(tmp_path):
    data = tmp_path / "openreid"
    generate(str(data), ids=2, cams=2, height=64, width=32, train_per_cam=2, gallery_per_cam=1,
             distractors=0, seed=1, layout="openreid")
    proc = train_cli(data, tmp_path / "ckpt", "--dataset", "openreid", "-b", 8)
    assert "openreid at" in proc.stdout
    assert (tmp_path / "ckpt" / "m.th").is_file()


def test_openreid_allows_two_digit_cameras(tmp_path):
    generate(str(tmp_path / "a"), ids=6, cams=12, height=32, width=16, distractors=0, seed=2, layout="openreid")
    data = load_dataset(str(tmp_path / "a"), "openreid")
    cams = {s.camid for s in data.train + data.query + data.gallery}
    assert max(cams) < 12 and len(cams) > 9
    with pytest.raises(ReidError, match="2..99"):
        generate(str(tmp_path / "b"), ids=2, cams=100, layout="openreid")
