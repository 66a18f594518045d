"""What the synthetic people and cameras look like: palettes, the attributes of a person, of a
camera and of a pose, and their random draws (see `reid.data.synthetic`)."""

from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np
from PIL import Image

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


def sample_person(rng, style):
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
