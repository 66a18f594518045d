"""Writing a synthetic dataset: identities as tracklets per camera, distractors and junk, in the
Market-1501 or the open-reid layout; `generate` and the command line (`python -m reid.data.synthetic`)."""

import argparse
import json
import math
import os
import shutil
import time

import numpy as np

from reid.data.synthetic.appearance import Pose, sample_person
from reid.data.synthetic.drawing import STYLES
from reid.runtime import ReidError

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MAX_CAMS_PER_ID = 6
MAX_PID = 9999  # pids are written with four digits
MAX_PER_CAM = 100  # images per tracklet; keeps frame numbers within six digits


class _Tracklet:
    """Successive images of one person in one camera: same view and framing, walking on."""

    def __init__(self, rng, cam, person_height, height, width):
        self.rng = rng
        self.height, self.width = height, width
        self.view = int(rng.choice(4, p=cam.view_probs))
        self.scale = cam.scale * person_height * rng.uniform(0.95, 1.05)
        self.cx = width * (0.5 + cam.dx + rng.uniform(-0.05, 0.05))
        self.phase = rng.uniform(0, 2 * math.pi)
        self.step = rng.uniform(0.5, 1.2)
        self.seq = int(rng.integers(1, 7))
        self.frame = int(rng.integers(0, 900000))

    def next_pose(self):
        """Pose, background offset and (seq, frame, bbox) of the next image."""
        rng, h = self.rng, self.height
        self.phase += self.step
        self.frame += int(rng.integers(5, 40))
        body = self.scale * h * rng.uniform(0.9, 1.06)
        top = 0.5 * (h - body) + rng.normal(0.0, 0.015 * h)
        pose = Pose(self.view, body, self.cx + rng.normal(0.0, 0.05 * self.width), top,
                    self.phase + rng.normal(0.0, 0.2))
        bg = (int(rng.integers(0, h)), int(rng.integers(0, self.width)))  # the person walks on
        return pose, bg, (self.seq, self.frame, int(rng.integers(1, 4)))


class _MarketWriter:
    """Market-1501 files: bounding_box_train/, query/, bounding_box_test/ of PPPP_cCsS_FFFFFF_NN.jpg."""

    outputs = SPLITS
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

    def __init__(self, out_dir, quality):
        self.out_dir, self.quality = out_dir, quality

    def prepare(self):
        for split in SPLITS:
            os.makedirs(os.path.join(self.out_dir, split), exist_ok=True)

    def save(self, img, split, pid, cam_index, market_name):
        img.save(os.path.join(self.out_dir, self.folders[split], market_name), format="JPEG", quality=self.quality)

    def finish(self, train_pids, test_pids, distractors):
        pass


class _OpenReidWriter:
    """open-reid files: images/PPPPPPPP_CC_NNNN.jpg (0-based camera), meta.json, splits.json.

    Query and gallery are given as pids in splits.json; each test identity's query in a
    camera is written first there, so `--dataset openreid`'s rule (first image of each
    camera is the query) finds the same queries as the Market layout. Distractors are
    pid 0 (gallery only); open-reid has no junk class.
    """

    outputs = ("images", "meta.json", "splits.json")

    def __init__(self, out_dir, quality, cams, name):
        self.out_dir, self.quality, self.cams, self.name = out_dir, quality, cams, name
        self.identities = {}

    def prepare(self):
        os.makedirs(os.path.join(self.out_dir, "images"), exist_ok=True)

    def save(self, img, split, pid, cam_index, market_name):
        cams = self.identities.setdefault(pid, [[] for _ in range(self.cams)])
        fname = f"{pid:08d}_{cam_index:02d}_{len(cams[cam_index]):04d}.jpg"
        cams[cam_index].append(fname)
        img.save(os.path.join(self.out_dir, "images", fname), format="JPEG", quality=self.quality)

    def finish(self, train_pids, test_pids, distractors):
        identities = [self.identities.get(pid, [[] for _ in range(self.cams)])
                      for pid in range(max(self.identities) + 1)]
        meta = {"name": self.name, "shot": "multiple", "num_cameras": self.cams, "identities": identities}
        split = {"trainval": train_pids, "query": test_pids, "gallery": ([0] if distractors else []) + test_pids}
        for fname, obj in (("meta.json", meta), ("splits.json", [split])):
            with open(os.path.join(self.out_dir, fname), "w") as f:
                json.dump(obj, f)


def _render_identity(pid, seed, cameras, per_cam, height, width, style):
    """All images of one identity: a list of (cam_index, [(PIL image, name parts)])."""
    rng = np.random.default_rng([seed, 1, pid, *style.stream])
    person = sample_person(rng, style)
    n_cams = int(rng.integers(2, min(len(cameras), MAX_CAMS_PER_ID) + 1))
    out = []
    for c in sorted(rng.choice(len(cameras), n_cams, replace=False).tolist()):
        track = _Tracklet(rng, cameras[c], person.height, height, width)
        images = []
        for _ in range(per_cam):
            pose, bg, name_parts = track.next_pose()
            images.append((style.render(person, cameras[c], pose, bg, rng, height, width), name_parts))
        out.append((c, images))
    return out


def _render_extra(rng, cameras, height, width, junk, style):
    """A distractor (a random person-like figure) or, if `junk`, a junk image."""
    c = int(rng.integers(len(cameras)))
    person = sample_person(rng, style)
    track = _Tracklet(rng, cameras[c], person.height, height, width)
    pose, bg, name_parts = track.next_pose()
    blur = None
    if junk:
        kind = rng.integers(3)
        if kind == 0:  # badly blurred detection
            blur = rng.uniform(3.0, 5.0)
        elif kind == 1:  # too close: only part of the body in the box
            pose.height *= rng.uniform(1.7, 2.4)
            pose.top = -rng.uniform(0.2, 0.9) * pose.height + 0.5 * height
        else:  # mostly background, a sliver of a person at the edge
            pose.cx = rng.choice((-0.1, 1.1)) * width
            pose.height *= rng.uniform(0.5, 1.0)
    return c, style.render(person, cameras[c], pose, bg, rng, height, width, blur), name_parts


def _market_name(pid, cam_index, name_parts):
    seq, frame, bbox = name_parts
    pid_str = "-1" if pid < 0 else f"{pid:04d}"
    return f"{pid_str}_c{cam_index + 1}s{seq}_{frame:06d}_{bbox:02d}.jpg"


def _check_args(ids, test_ids, cams, height, width, train_per_cam, gallery_per_cam, distractors, junk, quality,
                layout, style, seed):
    if layout not in LAYOUTS:
        raise ReidError(f"--layout {layout}: expected one of {', '.join(LAYOUTS)}")
    if style not in STYLES:
        raise ReidError(f"--style {style}: expected one of {', '.join(STYLES)}")
    if ids < 2:
        raise ReidError(f"--ids {ids}: need at least 2 training identities")
    if test_ids < 2:
        raise ReidError(f"--test-ids {test_ids}: need at least 2 test identities")
    if ids + test_ids > MAX_PID:
        raise ReidError(f"--ids + --test-ids = {ids + test_ids}: at most {MAX_PID} identities (4-digit pids)")
    if layout == "market" and not 2 <= cams <= 9:
        raise ReidError(f"--cams {cams}: expected 2..9 cameras (one digit in Market names)")
    if not 2 <= cams <= 99:
        raise ReidError(f"--cams {cams}: expected 2..99 cameras (two digits in open-reid names)")
    if height < 32 or width < 16:
        raise ReidError(f"--height {height} --width {width}: images must be at least 32x16")
    if not (1 <= train_per_cam <= MAX_PER_CAM and 1 <= gallery_per_cam <= MAX_PER_CAM):
        raise ReidError(f"--train-per-cam {train_per_cam} --gallery-per-cam {gallery_per_cam}: "
                        f"expected 1..{MAX_PER_CAM}")
    if distractors < 0 or junk < 0:
        raise ReidError(f"--distractors {distractors} --junk {junk}: counts cannot be negative")
    if not 1 <= quality <= 100:
        raise ReidError(f"--quality {quality}: expected 1..100")
    if seed < 0:
        raise ReidError(f"--seed {seed}: expected an integer >= 0")


def _prepare_folders(out_dir, writer, overwrite):
    """Refuse (or, with `overwrite`, remove) a dataset of either layout already in `out_dir`."""
    for name in SPLITS + _OpenReidWriter.outputs:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and os.listdir(path) or os.path.isfile(path):
            if not overwrite:
                raise ReidError(f"{path} is not empty: pass --overwrite to replace the synthetic dataset")
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    writer.prepare()


LAYOUTS = ("market", "openreid")


def generate(out_dir, ids=100, cams=6, seed=0, height=128, width=64, test_ids=None,
             train_per_cam=3, gallery_per_cam=2, distractors=50, junk=20, quality=90, overwrite=False,
             layout="market", style="real"):
    """Write the synthetic dataset to `out_dir`; returns a dict of counts.

    `ids` training identities and `test_ids` (default: `ids`) test identities, each seen
    by 2..6 of the `cams` cameras: `train_per_cam` training images per camera, or one
    query and `gallery_per_cam` gallery images per camera. The gallery also gets
    `distractors` images with pid 0 and `junk` images with pid -1. Counts returned:
    train_ids, train_images, test_ids, query, gallery (all of bounding_box_test,
    distractors and junk included), distractors, junk.

    `layout`: "market" (Market-1501 files) or "openreid" (images/, meta.json,
    splits.json; no junk there, so `junk` is ignored and counted as 0); both hold the
    same images. `style`: "real" (camera-like) or "virtual" (a rendered, game-engine
    look: saturated flat colours, clean gradient scenes, no noise or blur), whose people
    and cameras are drawn from other random streams than the real style's.
    """
    test_ids = ids if test_ids is None else test_ids
    _check_args(ids, test_ids, cams, height, width, train_per_cam, gallery_per_cam, distractors, junk, quality,
                layout, style, seed)
    look = STYLES[style]
    if layout == "openreid":
        junk = 0
        writer = _OpenReidWriter(out_dir, quality, cams, f"synthetic-{style}")
    else:
        writer = _MarketWriter(out_dir, quality)
    _prepare_folders(out_dir, writer, overwrite)

    def rng(*key):
        return np.random.default_rng([seed, *key, *look.stream])

    cameras = [look.sample_camera(rng(0, c), height, width) for c in range(cams)]
    pool = min(MAX_PID, max(1501, 2 * (ids + test_ids)))
    pids = rng(2).choice(np.arange(1, pool + 1), ids + test_ids, replace=False)
    train_pids, test_pids = sorted(pids[:ids].tolist()), sorted(pids[ids:].tolist())

    counts = dict(train_ids=ids, train_images=0, test_ids=test_ids, query=0, gallery=0,
                  distractors=distractors, junk=junk)
    used = set()  # Market names, in both layouts, so that both hold the same images

    def save(img, split, pid, c, name_parts):
        name = _market_name(pid, c, name_parts)
        if name in used:
            return False
        used.add(name)
        writer.save(img, split, pid, c, name)
        return True

    for pid in train_pids:
        for c, images in _render_identity(pid, seed, cameras, train_per_cam, height, width, look):
            for img, name_parts in images:
                save(img, "train", pid, c, name_parts)
                counts["train_images"] += 1
    for pid in test_pids:
        q = rng(3, pid)
        for c, images in _render_identity(pid, seed, cameras, 1 + gallery_per_cam, height, width, look):
            first = int(q.integers(len(images)))  # the query, written first in its camera
            for i in [first] + [i for i in range(len(images)) if i != first]:
                split = "query" if i == first else "gallery"
                save(images[i][0], split, pid, c, images[i][1])
                counts[split] += 1
    for i in range(distractors + junk):
        is_junk = i >= distractors
        extra_rng = rng(5 if is_junk else 4, i)
        while True:  # a name clash (same camera, frame and box) is re-drawn
            c, img, name_parts = _render_extra(extra_rng, cameras, height, width, is_junk, look)
            if save(img, "gallery", -1 if is_junk else 0, c, name_parts):
                break
        counts["gallery"] += 1
    writer.finish(train_pids, test_pids, distractors)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m reid.data.synthetic",
        description="Generate a deterministic synthetic person re-ID dataset in the Market-1501 layout "
                    "(bounding_box_train/, query/, bounding_box_test/) or the open-reid layout "
                    "(images/, meta.json, splits.json).")
    parser.add_argument("out", help="output folder (the dataset root)")
    parser.add_argument("--ids", type=int, default=100, help="training identities (default 100)")
    parser.add_argument("--test-ids", type=int, default=None, help="test identities (default: same as --ids)")
    parser.add_argument("--cams", type=int, default=6, help="cameras, 2..9 (2..99 with --layout openreid; default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--height", type=int, default=128, help="image height (default 128)")
    parser.add_argument("--width", type=int, default=64, help="image width (default 64)")
    parser.add_argument("--train-per-cam", type=int, default=3,
                        help="training images per identity per camera (default 3)")
    parser.add_argument("--gallery-per-cam", type=int, default=2,
                        help="gallery images per test identity per camera, besides its query (default 2)")
    parser.add_argument("--distractors", type=int, default=50, help="gallery distractors, pid 0000 (default 50)")
    parser.add_argument("--junk", type=int, default=20,
                        help="gallery junk images, pid -1 (default 20; none with --layout openreid)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--layout", default="market", choices=LAYOUTS,
                        help="market (default: Market-1501 files) or openreid (images/, meta.json, splits.json; "
                             "load it with --dataset openreid)")
    parser.add_argument("--style", default="real", choices=tuple(STYLES),
                        help="real (default: camera-like images) or virtual (rendered look: saturated flat "
                             "colours, clean scenes, no noise), e.g. MetaAttack's virtual meta dataset")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = generate(args.out, ids=args.ids, cams=args.cams, seed=args.seed, height=args.height,
                      width=args.width, test_ids=args.test_ids, train_per_cam=args.train_per_cam,
                      gallery_per_cam=args.gallery_per_cam, distractors=args.distractors, junk=args.junk,
                      quality=args.quality, overwrite=args.overwrite, layout=args.layout, style=args.style)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
