"""Deterministic synthetic person re-ID dataset in the Market-1501 layout.

Real re-ID datasets cannot be downloaded here, yet training, evaluation and the
attacks need data with the *structure* and roughly the *difficulty* of Market-1501.
This module draws one, and each choice below serves that aim:

* Same files as Market-1501: `bounding_box_train/`, `query/`, `bounding_box_test/`
  holding `PPPP_cCsS_FFFFFF_NN.jpg`, so the real parser reads it unchanged.
* Open set: training and test identities are disjoint, and person ids are scattered
  numbers in 1..1501 (as in Market), so relabelling to 0..N-1 is exercised.
* Cross-camera retrieval: every identity is seen by 2 to 6 cameras. A test identity
  has one query per camera and gallery images in each of its cameras, so every query
  keeps true matches after the Market protocol drops same-id same-camera images.
* Gallery noise as in Market: distractors (pid 0000, person-like figures that belong
  to no identity) and junk (pid -1: blurred, badly cropped or mostly background).
* Identity is learnable but not trivial: a person is a drawn figure (head, hair,
  torso, arms, legs, shoes) with clothing colours, a shirt pattern (stripes, checks,
  logo, two-tone or plain), sleeve and trouser length, body proportions, and maybe a
  hat or a bag. Colours come from small shared palettes, so many identities wear the
  same shirt and only the combination of cues tells them apart.
* Cameras change appearance: each camera has its own background, lighting gain,
  colour cast, saturation, contrast, blur, noise, shading direction, preferred
  viewpoint (front / back / side, which hides the logo or shows the backpack) and
  framing. A person's images in one camera form a tracklet (same viewpoint, similar
  framing, successive walking poses), so same-camera matches are easy and the model
  must learn to match across cameras.

Every random draw comes from a numpy Generator seeded by (seed, stream, index) and
images are saved with a fixed JPEG quality: the same arguments give byte-identical
files, and a person's attributes depend only on the seed and its pid.
"""

import argparse
import math
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.utils import ReidError, cli_main

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MAX_CAMS_PER_ID = 6
MAX_PID = 9999  # pids are written with four digits
MAX_PER_CAM = 100  # images per tracklet; keeps frame numbers within six digits

# Part labels drawn into the label map, coloured afterwards.
BG, SKIN, HAIR, UPPER, UPPER2, LOWER, SHOES, BAG, HAT = range(9)
N_LABELS = 9

FRONT, BACK, LEFT, RIGHT = range(4)

# Shared palettes (RGB): identities draw from them, so attributes repeat across people.
UPPER_COLOURS = np.array([
    (200, 30, 35), (120, 20, 30), (30, 60, 170), (25, 35, 80), (110, 160, 220),
    (40, 130, 60), (100, 110, 40), (230, 200, 40), (235, 235, 230), (130, 130, 135),
    (30, 30, 32), (230, 130, 170), (110, 50, 140), (235, 120, 30), (120, 80, 50),
], dtype=np.float32)
LOWER_COLOURS = np.array([
    (25, 25, 30), (35, 45, 90), (70, 100, 150), (120, 120, 125), (180, 160, 120),
    (90, 70, 50), (220, 220, 215), (60, 70, 45),
], dtype=np.float32)
SKIN_COLOURS = np.array([(235, 200, 170), (210, 160, 120), (170, 120, 85), (110, 75, 50)], dtype=np.float32)
HAIR_COLOURS = np.array([(20, 15, 10), (70, 45, 25), (140, 100, 60), (200, 170, 110), (110, 110, 110)],
                        dtype=np.float32)
SHOE_COLOURS = np.array([(20, 20, 20), (240, 240, 240), (90, 60, 40), (60, 60, 70)], dtype=np.float32)
BAG_COLOURS = np.array([(20, 20, 20), (90, 60, 40), (180, 40, 40), (40, 60, 120), (150, 150, 150)],
                       dtype=np.float32)
SCENE_COLOURS = np.array([
    (120, 120, 120), (160, 150, 130), (90, 100, 90), (140, 140, 150), (100, 90, 80),
    (170, 170, 160), (80, 90, 110), (130, 110, 90), (60, 60, 60), (150, 160, 120),
], dtype=np.float32)

PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "twotone")
PATTERN_PROBS = (0.25, 0.15, 0.15, 0.15, 0.15, 0.15)


@dataclass
class Person:
    """Appearance attributes of one identity (fixed across cameras)."""

    colours: np.ndarray  # (N_LABELS, 3) colour of each part label
    pattern: str
    period: float  # stripe / check period, fraction of body height
    long_sleeves: bool
    lower_kind: str  # trousers, shorts or skirt
    long_hair: bool
    hat: bool
    bag: str  # none, backpack, handbag or shoulder
    bag_side: int  # -1 / +1: which side of the body a hand or shoulder bag hangs on
    height: float  # relative body height
    build: float  # relative width
    legs: float  # leg length, fraction of body height
    head: float  # relative head size


@dataclass
class Camera:
    """Viewing conditions of one camera (shared by every person it sees)."""

    background: np.ndarray  # (2H, 2W, 3) texture, cropped per tracklet
    gain: np.ndarray  # (3,) brightness times colour cast
    saturation: float
    gamma: float
    blur: float  # Gaussian blur radius in pixels at 128x64
    noise: float  # pixel noise standard deviation (0..255 scale)
    light: float  # left-right shading slope on the figure
    view_probs: np.ndarray  # (4,) probabilities of FRONT, BACK, LEFT, RIGHT
    scale: float  # body height as a fraction of the image height
    dx: float  # horizontal offset of the person, fraction of the width


@dataclass
class Pose:
    """Where and how one person is drawn in one image."""

    view: int
    height: float  # body height in pixels
    cx: float  # body centre x in pixels
    top: float  # top of the head in pixels
    phase: float  # walking phase in radians


def _pick(rng, palette, jitter=40.0):
    """A palette colour with a small per-draw jitter."""
    colour = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return np.clip(colour, 0, 255).astype(np.float32)


def _sample_person(rng):
    """Draw the attributes of one identity."""
    colours = np.zeros((N_LABELS, 3), np.float32)
    colours[SKIN] = _pick(rng, SKIN_COLOURS, 8)
    colours[HAIR] = _pick(rng, HAIR_COLOURS, 8)
    colours[UPPER] = _pick(rng, UPPER_COLOURS)
    colours[UPPER2] = _pick(rng, UPPER_COLOURS)
    colours[LOWER] = _pick(rng, LOWER_COLOURS)
    colours[SHOES] = _pick(rng, SHOE_COLOURS, 8)
    colours[BAG] = _pick(rng, BAG_COLOURS)
    colours[HAT] = _pick(rng, UPPER_COLOURS)
    return Person(
        colours=colours,
        pattern=PATTERNS[rng.choice(len(PATTERNS), p=PATTERN_PROBS)],
        period=rng.uniform(0.035, 0.07),
        long_sleeves=bool(rng.random() < 0.5),
        lower_kind=("trousers", "shorts", "skirt")[rng.choice(3, p=(0.65, 0.2, 0.15))],
        long_hair=bool(rng.random() < 0.3),
        hat=bool(rng.random() < 0.2),
        bag=("none", "backpack", "handbag", "shoulder")[rng.choice(4, p=(0.5, 0.2, 0.15, 0.15))],
        bag_side=int(rng.choice((-1, 1))),
        height=rng.uniform(0.88, 1.0),
        build=rng.uniform(0.85, 1.2),
        legs=rng.uniform(0.43, 0.5),
        head=rng.uniform(0.9, 1.1),
    )


def _smooth_noise(rng, height, width, cells):
    """Low-frequency noise in [-1, 1]: a small random grid upsampled bilinearly."""
    grid = rng.uniform(0, 255, (cells, max(2, cells // 2))).astype(np.uint8)
    img = Image.fromarray(grid, "L").resize((width, height), Image.BILINEAR)
    return np.asarray(img, np.float32) / 127.5 - 1.0


def _background(rng, height, width):
    """A camera's scene texture: wall and floor, pillars, tiles or smooth blotches."""
    a, b = _pick(rng, SCENE_COLOURS, 20), _pick(rng, SCENE_COLOURS, 20)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # wall above a horizon, floor below
        mask = yy > rng.uniform(0.45, 0.75) * height
    elif kind == 1:  # vertical pillars / windows
        mask = (xx // rng.uniform(0.1, 0.3) / width) % 2 < 1
    elif kind == 2:  # floor tiles
        size = rng.uniform(0.08, 0.15) * height
        mask = ((xx // size) + (yy // size)) % 2 < 1
    else:  # blotchy vegetation / crowd-like texture
        mask = _smooth_noise(rng, height, width, 8) > 0
    texture = np.where(mask[..., None], a + rng.uniform(0.2, 0.5) * (b - a), a)
    texture += 12.0 * _smooth_noise(rng, height, width, 6)[..., None]
    return texture


def _sample_camera(rng, height, width):
    """Draw the viewing conditions of one camera."""
    view_probs = rng.dirichlet((2.0, 1.0, 0.3, 0.3))
    return Camera(
        background=_background(rng, 2 * height, 2 * width),
        gain=rng.uniform(0.85, 1.1) * rng.uniform(0.94, 1.06, 3).astype(np.float32),
        saturation=rng.uniform(0.8, 1.05),
        gamma=rng.uniform(0.9, 1.1),
        blur=rng.uniform(0.2, 1.0),
        noise=rng.uniform(2.0, 7.0),
        light=rng.uniform(-0.25, 0.25),
        view_probs=view_probs,
        scale=rng.uniform(0.86, 0.95),
        dx=rng.uniform(-0.06, 0.06),
    )


def _limb(x0, y0, x1, y1, w0, w1):
    """Quadrilateral from (x0, y0) to (x1, y1) with half-widths w0 and w1 at the ends."""
    dx, dy = x1 - x0, y1 - y0
    norm = math.hypot(dx, dy) or 1.0
    ux, uy = -dy / norm, dx / norm
    return [(x0 + ux * w0, y0 + uy * w0), (x1 + ux * w1, y1 + uy * w1),
            (x1 - ux * w1, y1 - uy * w1), (x0 - ux * w0, y0 - uy * w0)]


def _draw_person(labels, p, pose):
    """Draw the part labels of person `p` in `pose` into the 'L' image `labels`."""
    draw = ImageDraw.Draw(labels)
    h, cx, top, view = pose.height, pose.cx, pose.top, pose.view
    side = view in (LEFT, RIGHT)
    facing = 1 if view == RIGHT else -1 if view == LEFT else 0
    swing = math.sin(pose.phase)

    r = 0.062 * h * p.head  # head radius
    neck_y = top + 1.9 * r
    hip_y = top + h * (1.0 - p.legs)
    foot_y = top + h
    sw = 0.15 * h * p.build * (0.7 if side else 1.0)  # half shoulder width
    hw = sw * 0.85  # half hip width
    leg_w = 0.055 * h * p.build
    arm_w = 0.04 * h * p.build
    shirt_y = hip_y + 0.03 * h
    knee_y = hip_y + 0.5 * (foot_y - hip_y)
    bag_side = p.bag_side if view != BACK else -p.bag_side

    # Legs: apart and slightly swinging from the front, striding from the side.
    if side:
        stride = 0.12 * h * swing
        hips, feet = [cx, cx], [cx + stride, cx - stride]
    else:
        stride = 0.02 * h * swing
        hips = [cx - hw + leg_w, cx + hw - leg_w]
        feet = [hips[0] - 0.01 * h + stride, hips[1] + 0.01 * h - stride]
    for hx, fx in zip(hips, feet):
        knee_x = 0.5 * (hx + fx)
        draw.polygon(_limb(hx, hip_y, knee_x, knee_y, leg_w, leg_w * 0.85), fill=LOWER)
        below_knee = LOWER if p.lower_kind == "trousers" else SKIN
        draw.polygon(_limb(knee_x, knee_y, fx, foot_y - 0.02 * h, leg_w * 0.85, leg_w * 0.7), fill=below_knee)
        toe = 0.03 * h * facing
        draw.ellipse([fx - leg_w * 0.9 + min(toe, 0), foot_y - 0.04 * h,
                      fx + leg_w * 0.9 + max(toe, 0), foot_y], fill=SHOES)
    if p.lower_kind == "skirt":
        flare = hw * (1.35 if not side else 1.6)
        draw.polygon([(cx - hw, hip_y), (cx + hw, hip_y), (cx + flare, knee_y), (cx - flare, knee_y)], fill=LOWER)
    draw.polygon([(cx - hw, hip_y - 0.02 * h), (cx + hw, hip_y - 0.02 * h),
                  (cx + hw * 1.02, hip_y + 0.06 * h), (cx - hw * 1.02, hip_y + 0.06 * h)], fill=LOWER)

    if p.long_hair and view != BACK:  # hair falling behind the shoulders
        draw.rectangle([cx - r * 0.95 - facing * r * 0.4, top + r, cx + r * 0.95 - facing * r * 0.4,
                        neck_y + 0.08 * h], fill=HAIR)
    if p.bag == "backpack" and side:
        x0, x1 = sorted((cx - facing * sw * 0.5, cx - facing * (sw + 0.08 * h)))
        draw.rectangle([x0, neck_y + 0.04 * h, x1, hip_y - 0.02 * h], fill=BAG)

    # Torso (shirt), neck.
    draw.polygon([(cx - sw, neck_y + 0.2 * r), (cx + sw, neck_y + 0.2 * r),
                  (cx + hw, shirt_y), (cx - hw, shirt_y)], fill=UPPER)
    draw.ellipse([cx - sw, neck_y, cx - sw + 2 * arm_w, neck_y + 2 * arm_w], fill=UPPER)
    draw.ellipse([cx + sw - 2 * arm_w, neck_y, cx + sw, neck_y + 2 * arm_w], fill=UPPER)
    draw.rectangle([cx - 0.35 * r, top + 1.6 * r, cx + 0.35 * r, neck_y + 0.25 * r], fill=SKIN)
    if p.pattern == "logo" and view == FRONT:
        lr = 0.05 * h
        ly = neck_y + 0.12 * h
        draw.ellipse([cx - lr, ly - lr * 0.8, cx + lr, ly + lr * 0.8], fill=UPPER2)
    if p.bag == "backpack" and view == BACK:
        draw.rounded_rectangle([cx - sw * 0.75, neck_y + 0.03 * h, cx + sw * 0.75, hip_y - 0.01 * h],
                               radius=0.02 * h, fill=BAG)
    if p.bag == "backpack" and view == FRONT:
        for sx in (-1, 1):
            draw.line([(cx + sx * sw * 0.6, neck_y + 0.01 * h), (cx + sx * sw * 0.55, hip_y - 0.08 * h)],
                      fill=BAG, width=max(1, round(0.02 * h)))
    if p.bag == "shoulder" and not side:
        draw.line([(cx - bag_side * sw * 0.7, neck_y), (cx + bag_side * hw, hip_y)],
                  fill=BAG, width=max(1, round(0.015 * h)))

    # Arms: hanging beside the torso from the front, one swinging arm from the side.
    shoulder_y = neck_y + 0.45 * arm_w
    arm_len = 0.36 * h
    arms = [(cx, swing * 0.3)] if side else [(cx - sw + arm_w, -0.12), (cx + sw - arm_w, 0.12)]
    for sx, angle in arms:
        angle = angle if side else angle + 0.05 * swing
        ex, ey = sx + math.sin(angle) * arm_len * 0.5, shoulder_y + math.cos(angle) * arm_len * 0.5
        hx, hy = sx + math.sin(angle) * arm_len, shoulder_y + math.cos(angle) * arm_len
        draw.polygon(_limb(sx, shoulder_y, ex, ey, arm_w, arm_w * 0.85), fill=UPPER)
        draw.polygon(_limb(ex, ey, hx, hy, arm_w * 0.85, arm_w * 0.7),
                     fill=UPPER if p.long_sleeves else SKIN)
        draw.ellipse([hx - arm_w * 0.8, hy - arm_w * 0.6, hx + arm_w * 0.8, hy + arm_w], fill=SKIN)
        if p.bag == "handbag" and (side or (sx - cx) * bag_side > 0):
            draw.rectangle([hx - 0.045 * h, hy + 0.005 * h, hx + 0.045 * h, hy + 0.08 * h], fill=BAG)
    if p.bag == "shoulder":
        bx = cx + (bag_side * hw if not side else -facing * sw * 0.4)
        draw.rectangle([bx - 0.05 * h, hip_y - 0.06 * h, bx + 0.05 * h, hip_y + 0.02 * h], fill=BAG)

    # Head: face, hair on top (all hair from behind), maybe a cap.
    hx = cx + facing * 0.15 * r
    box = [hx - 0.85 * r, top, hx + 0.85 * r, top + 2 * r]
    draw.ellipse(box, fill=HAIR if view == BACK else SKIN)
    if view == FRONT:
        draw.chord(box, 180, 360, fill=HAIR)
    elif side:
        start = 90 if facing > 0 else 270
        draw.pieslice(box, start, start + 180, fill=HAIR)
        draw.chord(box, 180, 360, fill=HAIR)
    if p.long_hair and view == BACK:
        draw.rectangle([cx - r * 0.95, top + r, cx + r * 0.95, neck_y + 0.08 * h], fill=HAIR)
    if p.hat:
        draw.chord([hx - 0.95 * r, top - 0.2 * r, hx + 0.95 * r, top + 1.6 * r], 180, 360, fill=HAT)
        if view != BACK:
            brim = hx + facing * 0.9 * r
            draw.rectangle([min(hx, brim) - 0.9 * r * (not side), top + 0.7 * r,
                            max(hx, brim) + 0.9 * r * (not side), top + 0.85 * r], fill=HAT)


def _apply_pattern(labels, p, pose):
    """Turn part of the shirt into the secondary colour (stripes, checks, two-tone)."""
    if p.pattern in ("plain", "logo"):
        return labels
    h = pose.height
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]].astype(np.float32)
    period = p.period * h
    rows = ((yy - pose.top) // period) % 2 < 1
    cols = ((xx - pose.cx) // period) % 2 < 1
    second = {"hstripes": rows, "vstripes": cols, "checks": rows ^ cols,
              "twotone": yy > pose.top + h * (1.0 - p.legs) - 0.12 * h}[p.pattern]
    return np.where((labels == UPPER) & second, UPPER2, labels)


def _render(p, cam, pose, bg_offset, rng, height, width, blur=None):
    """One PIL image of person `p` in `pose` seen by `cam`, over its background."""
    oy, ox = bg_offset
    layer = Image.new("L", (width, height), BG)
    _draw_person(layer, p, pose)
    labels = _apply_pattern(np.asarray(layer), p, pose)
    xx = np.arange(width, dtype=np.float32)[None, :]
    shade = 1.0 + cam.light * (xx - pose.cx) / (0.25 * pose.height)
    shade = np.clip(shade, 0.6, 1.4) * rng.uniform(0.97, 1.03, (height, width))
    image = np.where((labels != BG)[..., None], p.colours[labels] * shade[..., None],
                     cam.background[oy:oy + height, ox:ox + width])
    image = image * cam.gain * rng.uniform(0.85, 1.15)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + cam.saturation * (image - grey)
    image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** cam.gamma
    image += rng.normal(0.0, cam.noise, image.shape)
    img = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8), "RGB")
    radius = (cam.blur if blur is None else blur) * height / 128.0
    return img.filter(ImageFilter.GaussianBlur(radius))


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


def _save(img, folder, pid, cam_index, name_parts, quality, used):
    """Save `img` as Market-style `PPPP_cCsS_FFFFFF_NN.jpg`; returns False on a name clash."""
    seq, frame, bbox = name_parts
    pid_str = "-1" if pid < 0 else f"{pid:04d}"
    name = f"{pid_str}_c{cam_index + 1}s{seq}_{frame:06d}_{bbox:02d}.jpg"
    if name in used:
        return False
    used.add(name)
    img.save(os.path.join(folder, name), format="JPEG", quality=quality)
    return True


def _render_identity(pid, seed, cameras, per_cam, height, width):
    """All images of one identity: a list of (cam_index, [(PIL image, name parts)])."""
    rng = np.random.default_rng([seed, 1, pid])
    person = _sample_person(rng)
    n_cams = int(rng.integers(2, min(len(cameras), MAX_CAMS_PER_ID) + 1))
    out = []
    for c in sorted(rng.choice(len(cameras), n_cams, replace=False).tolist()):
        track = _Tracklet(rng, cameras[c], person.height, height, width)
        images = []
        for _ in range(per_cam):
            pose, bg, name_parts = track.next_pose()
            images.append((_render(person, cameras[c], pose, bg, rng, height, width), name_parts))
        out.append((c, images))
    return out


def _render_extra(rng, cameras, height, width, junk):
    """A distractor (a random person-like figure) or, if `junk`, a junk image."""
    c = int(rng.integers(len(cameras)))
    person = _sample_person(rng)
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
    return c, _render(person, cameras[c], pose, bg, rng, height, width, blur), name_parts


def _check_args(ids, test_ids, cams, height, width, train_per_cam, gallery_per_cam, distractors, junk, quality):
    if ids < 2:
        raise ReidError(f"--ids {ids}: need at least 2 training identities")
    if test_ids < 2:
        raise ReidError(f"--test-ids {test_ids}: need at least 2 test identities")
    if ids + test_ids > MAX_PID:
        raise ReidError(f"--ids + --test-ids = {ids + test_ids}: at most {MAX_PID} identities (4-digit pids)")
    if not 2 <= cams <= 9:
        raise ReidError(f"--cams {cams}: expected 2..9 cameras (one digit in Market names)")
    if height < 32 or width < 16:
        raise ReidError(f"--height {height} --width {width}: images must be at least 32x16")
    if not (1 <= train_per_cam <= MAX_PER_CAM and 1 <= gallery_per_cam <= MAX_PER_CAM):
        raise ReidError(f"--train-per-cam {train_per_cam} --gallery-per-cam {gallery_per_cam}: "
                        f"expected 1..{MAX_PER_CAM}")
    if distractors < 0 or junk < 0:
        raise ReidError(f"--distractors {distractors} --junk {junk}: counts cannot be negative")
    if not 1 <= quality <= 100:
        raise ReidError(f"--quality {quality}: expected 1..100")


def _prepare_folders(out_dir, overwrite):
    for split in SPLITS:
        folder = os.path.join(out_dir, split)
        if os.path.isdir(folder) and os.listdir(folder):
            if not overwrite:
                raise ReidError(f"{folder} is not empty: pass --overwrite to replace the synthetic dataset")
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)


def generate(out_dir, ids=100, cams=6, seed=0, height=128, width=64, test_ids=None,
             train_per_cam=3, gallery_per_cam=2, distractors=50, junk=20, quality=90, overwrite=False):
    """Write the synthetic dataset to `out_dir`; returns a dict of counts.

    `ids` training identities and `test_ids` (default: `ids`) test identities, each seen
    by 2..6 of the `cams` cameras: `train_per_cam` training images per camera, or one
    query and `gallery_per_cam` gallery images per camera. The gallery also gets
    `distractors` images with pid 0 and `junk` images with pid -1. Counts returned:
    train_ids, train_images, test_ids, query, gallery (all of bounding_box_test,
    distractors and junk included), distractors, junk.
    """
    test_ids = ids if test_ids is None else test_ids
    _check_args(ids, test_ids, cams, height, width, train_per_cam, gallery_per_cam, distractors, junk, quality)
    _prepare_folders(out_dir, overwrite)
    train_dir, query_dir, gallery_dir = (os.path.join(out_dir, s) for s in SPLITS)

    cameras = [_sample_camera(np.random.default_rng([seed, 0, c]), height, width) for c in range(cams)]
    pool = min(MAX_PID, max(1501, 2 * (ids + test_ids)))
    pids = np.random.default_rng([seed, 2]).choice(np.arange(1, pool + 1), ids + test_ids, replace=False)
    train_pids, test_pids = sorted(pids[:ids].tolist()), sorted(pids[ids:].tolist())

    counts = dict(train_ids=ids, train_images=0, test_ids=test_ids, query=0, gallery=0,
                  distractors=distractors, junk=junk)
    used = set()
    for pid in train_pids:
        for c, images in _render_identity(pid, seed, cameras, train_per_cam, height, width):
            for img, name_parts in images:
                _save(img, train_dir, pid, c, name_parts, quality, used)
                counts["train_images"] += 1
    for pid in test_pids:
        rng = np.random.default_rng([seed, 3, pid])
        for c, images in _render_identity(pid, seed, cameras, 1 + gallery_per_cam, height, width):
            q = int(rng.integers(len(images)))
            for i, (img, name_parts) in enumerate(images):
                _save(img, query_dir if i == q else gallery_dir, pid, c, name_parts, quality, used)
                counts["query" if i == q else "gallery"] += 1
    for i in range(distractors + junk):
        is_junk = i >= distractors
        rng = np.random.default_rng([seed, 5 if is_junk else 4, i])
        while True:  # a name clash (same camera, frame and box) is re-drawn
            c, img, name_parts = _render_extra(rng, cameras, height, width, is_junk)
            if _save(img, gallery_dir, -1 if is_junk else 0, c, name_parts, quality, used):
                break
        counts["gallery"] += 1
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m reid.data.synthetic",
        description="Generate a deterministic synthetic person re-ID dataset in the Market-1501 layout "
                    "(bounding_box_train/, query/, bounding_box_test/).")
    parser.add_argument("out", help="output folder (the dataset root)")
    parser.add_argument("--ids", type=int, default=100, help="training identities (default 100)")
    parser.add_argument("--test-ids", type=int, default=None, help="test identities (default: same as --ids)")
    parser.add_argument("--cams", type=int, default=6, help="cameras, 2..9 (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--height", type=int, default=128, help="image height (default 128)")
    parser.add_argument("--width", type=int, default=64, help="image width (default 64)")
    parser.add_argument("--train-per-cam", type=int, default=3,
                        help="training images per identity per camera (default 3)")
    parser.add_argument("--gallery-per-cam", type=int, default=2,
                        help="gallery images per test identity per camera, besides its query (default 2)")
    parser.add_argument("--distractors", type=int, default=50, help="gallery distractors, pid 0000 (default 50)")
    parser.add_argument("--junk", type=int, default=20, help="gallery junk images, pid -1 (default 20)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = generate(args.out, ids=args.ids, cams=args.cams, seed=args.seed, height=args.height,
                      width=args.width, test_ids=args.test_ids, train_per_cam=args.train_per_cam,
                      gallery_per_cam=args.gallery_per_cam, distractors=args.distractors, junk=args.junk,
                      quality=args.quality, overwrite=args.overwrite)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    cli_main(main)
