"""The synthetic dataset generator: Market-1501 layout, protocol guarantees, determinism."""

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from reid.data import load_dataset
from reid.data.synthetic import SPLITS, generate, main
from reid.utils import ReidError, cli_main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
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


def test_cli_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: main([str(tmp_path), "--cams", "1"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cams 1" in err
