"""Drawing one synthetic image: the figure as a label map, its clothing pattern, the camera's look
(real style) or the rendered look (virtual style); the two `STYLES`."""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.data.synthetic.appearance import (BACK, BAG, BAG_COLOURS, BG, FRONT, HAIR, HAIR_COLOURS, HAT, LEFT, LOWER,
                                            LOWER_COLOURS, RIGHT, SHOES, SHOE_COLOURS, SKIN, SKIN_COLOURS, Style, UPPER,
                                            UPPER2, UPPER_COLOURS, VIRTUAL_BAGS, VIRTUAL_HAIR, VIRTUAL_LOWER,
                                            VIRTUAL_SHOES, VIRTUAL_SKIN, VIRTUAL_UPPER, _sample_camera,
                                            _sample_virtual_camera)


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
