"""Deterministic synthetic person re-ID dataset in the Market-1501 or open-reid layout.

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

Two options serve MetaAttack-style experiments, which need a second, "virtual" dataset:

* `layout="openreid"` writes the same images in the open-reid layout that PersonX,
  UnrealPerson and RandPerson come in for MetaAttack (`images/PPPPPPPP_CC_NNNN.jpg`
  with 0-based cameras, `meta.json`, `splits.json`), read by `--dataset openreid`.
  Each test identity's query is the first image of its camera, so that parser's
  query / gallery rule recovers the Market layout's split; distractors are pid 0
  (gallery only), and junk is not written (open-reid has no junk class).
* `style="virtual"` draws another population in a rendered, game-engine look:
  saturated palettes, clean sky-and-ground scenes with flat buildings, flat cel
  shading, no sensor noise or blur and a faint colour cast at most. Its people and
  cameras come from other random streams than the real style's, so the two are
  different datasets even with one seed. The default `style="real"` is unchanged,
  byte for byte.

Every random draw comes from a numpy Generator seeded by (seed, stream, index) and
images are saved with a fixed JPEG quality: the same arguments give byte-identical
files, and a person's attributes depend only on the seed, the style and its pid.
"""

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Tuple

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

# The virtual style (a game-engine look, like PersonX / UnrealPerson / RandPerson): saturated
# clothing, clean sky-and-ground scenes with flat buildings.
VIRTUAL_UPPER = np.array([
    (230, 30, 30), (20, 90, 230), (30, 180, 70), (250, 210, 20), (250, 120, 10), (150, 50, 210),
    (0, 190, 210), (240, 70, 160), (245, 245, 245), (40, 40, 45), (120, 200, 40), (200, 20, 120),
    (20, 40, 140), (255, 150, 120), (90, 220, 180),
], dtype=np.float32)
VIRTUAL_LOWER = np.array([
    (30, 30, 40), (30, 60, 180), (60, 120, 230), (200, 40, 40), (40, 140, 60), (230, 200, 120),
    (240, 240, 240), (120, 60, 200),
], dtype=np.float32)
VIRTUAL_SKIN = np.array([(250, 215, 185), (230, 180, 140), (190, 135, 95), (130, 85, 55)], dtype=np.float32)
VIRTUAL_HAIR = np.array([(30, 20, 15), (110, 60, 25), (230, 190, 80), (200, 70, 30), (60, 60, 70)],
                        dtype=np.float32)
VIRTUAL_SHOES = np.array([(20, 20, 20), (250, 250, 250), (220, 40, 40), (40, 80, 220)], dtype=np.float32)
VIRTUAL_BAGS = np.array([(20, 20, 20), (230, 120, 20), (220, 30, 60), (30, 160, 220), (250, 230, 40)],
                        dtype=np.float32)
VIRTUAL_SKY = np.array([(110, 170, 240), (150, 200, 250), (250, 190, 150), (190, 210, 240), (120, 200, 220)],
                       dtype=np.float32)
VIRTUAL_GROUND = np.array([(120, 190, 90), (200, 200, 205), (230, 210, 160), (150, 150, 160), (90, 160, 200),
                           (210, 120, 90)], dtype=np.float32)
VIRTUAL_WALLS = np.array([(240, 240, 235), (200, 90, 80), (90, 120, 200), (240, 200, 90), (150, 210, 150),
                          (180, 150, 220)], dtype=np.float32)


@dataclass(frozen=True)
class Style:
    """How a dataset looks: clothing palettes, colour jitter, and the camera / image renderers."""

    name: str
    upper: np.ndarray
    lower: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    shoes: np.ndarray
    bags: np.ndarray
    cloth_jitter: float  # per-identity jitter of clothing and bag colours
    fine_jitter: float  # per-identity jitter of skin, hair and shoe colours
    sample_camera: Callable  # (rng, height, width) -> Camera
    render: Callable  # see _render
    stream: Tuple[int, ...]  # appended to every seed, so styles draw different people


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


def _sample_person(rng, style):
    """Draw the attributes of one identity (colours from the style's palettes)."""
    colours = np.zeros((N_LABELS, 3), np.float32)
    colours[SKIN] = _pick(rng, style.skin, style.fine_jitter)
    colours[HAIR] = _pick(rng, style.hair, style.fine_jitter)
    colours[UPPER] = _pick(rng, style.upper, style.cloth_jitter)
    colours[UPPER2] = _pick(rng, style.upper, style.cloth_jitter)
    colours[LOWER] = _pick(rng, style.lower, style.cloth_jitter)
    colours[SHOES] = _pick(rng, style.shoes, style.fine_jitter)
    colours[BAG] = _pick(rng, style.bags, style.cloth_jitter)
    colours[HAT] = _pick(rng, style.upper, style.cloth_jitter)
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


def _virtual_background(rng, height, width):
    """A clean rendered scene: sky gradient, flat ground, flat-coloured buildings on the horizon."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = rng.uniform(0.35, 0.65) * height
    sky_top = _pick(rng, VIRTUAL_SKY, 10)
    sky_low = sky_top + 0.6 * (255.0 - sky_top)
    t = np.clip(yy / horizon, 0, 1)[..., None]
    sky = sky_top + t * (sky_low - sky_top)
    ground = _pick(rng, VIRTUAL_GROUND, 10)
    u = np.clip((yy - horizon) / (height - horizon), 0, 1)[..., None]
    image = np.where((yy < horizon)[..., None], sky, ground * (1.05 - 0.15 * u))
    for _ in range(int(rng.integers(2, 6))):
        x0 = rng.uniform(-0.2, 1.0) * width
        top = horizon - rng.uniform(0.1, 0.35) * height
        inside = (xx >= x0) & (xx < x0 + rng.uniform(0.15, 0.45) * width) & (yy >= top) & (yy < horizon)
        image[inside] = _pick(rng, VIRTUAL_WALLS, 10)
    return image


def _sample_virtual_camera(rng, height, width):
    """A virtual camera: clean lighting (no colour cast, noise or blur), one hard light direction."""
    view_probs = rng.dirichlet((2.0, 1.0, 0.3, 0.3))
    return Camera(
        background=_virtual_background(rng, 2 * height, 2 * width),
        gain=rng.uniform(0.95, 1.05) * rng.uniform(0.98, 1.02, 3).astype(np.float32),
        saturation=rng.uniform(1.1, 1.3),
        gamma=1.0,
        blur=0.0,
        noise=0.0,
        light=float(rng.choice((-1.0, 1.0)) * rng.uniform(0.15, 0.3)),
        view_probs=view_probs,
        scale=rng.uniform(0.86, 0.95),
        dx=rng.uniform(-0.06, 0.06),
    )


def _render_virtual(p, cam, pose, bg_offset, rng, height, width, blur=None):
    """`_render` in the virtual style: flat cel shading, boosted saturation, no sensor noise."""
    oy, ox = bg_offset
    layer = Image.new("L", (width, height), BG)
    _draw_person(layer, p, pose)
    labels = _apply_pattern(np.asarray(layer), p, pose)
    xx = np.arange(width, dtype=np.float32)[None, :]
    shade = np.where((xx - pose.cx) * cam.light >= 0, 1.0, 1.0 - abs(cam.light))  # lit side, shadow side
    shade = np.broadcast_to(shade, (height, width))
    image = np.where((labels != BG)[..., None], p.colours[labels] * shade[..., None],
                     cam.background[oy:oy + height, ox:ox + width])
    image = image * cam.gain * rng.uniform(0.97, 1.03)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + cam.saturation * (image - grey)
    img = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8), "RGB")
    if blur:  # junk images only
        img = img.filter(ImageFilter.GaussianBlur(blur * height / 128.0))
    return img


STYLES = {
    "real": Style("real", UPPER_COLOURS, LOWER_COLOURS, SKIN_COLOURS, HAIR_COLOURS, SHOE_COLOURS, BAG_COLOURS,
                  cloth_jitter=40.0, fine_jitter=8.0, sample_camera=_sample_camera, render=_render, stream=()),
    "virtual": Style("virtual", VIRTUAL_UPPER, VIRTUAL_LOWER, VIRTUAL_SKIN, VIRTUAL_HAIR, VIRTUAL_SHOES,
                     VIRTUAL_BAGS, cloth_jitter=12.0, fine_jitter=4.0, sample_camera=_sample_virtual_camera,
                     render=_render_virtual, stream=(1,)),
}


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
    person = _sample_person(rng, style)
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
    person = _sample_person(rng, style)
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
                layout, style):
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
                layout, style)
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


if __name__ == "__main__":
    cli_main(main)
