"""Pictures to inspect after an attack: ranking lists and perturbations (PIL only).

Images are float tensors in [0, 1], (3, H, W) or (B, 3, H, W). Every figure is
written atomically, so a crash never leaves a half-written PNG behind.

Ranking figure geometry (what tests and readers can rely on), for images of
size h x w, n rows and at most K gallery images per row:

    cell        = (w + 2*BORDER) x (h + 2*BORDER): the image framed by BORDER pixels
    column c    : x = LABEL_WIDTH + c*(cell_w + PAD) + (QUERY_GAP if c > 0 else 0)
                  (c = 0 is the query, c = 1..K the gallery in rank order)
    row r       : y = HEADER_HEIGHT + r*(cell_h + PAD)
    figure size : (LABEL_WIDTH + (K+1)*(cell_w + PAD) + QUERY_GAP) x (HEADER_HEIGHT + n*(cell_h + PAD))

Perturbation figure geometry, for N images (N <= MAX_IMAGES shown) and rows
clean / adversarial / perturbation:

    column c    : x = LABEL_WIDTH + c*(w + PAD)
    row r       : y = PAD + r*(h + PAD)
    figure size : (LABEL_WIDTH + N*(w + PAD)) x (PAD + 3*(h + PAD))
"""

import functools

import torch
from PIL import Image, ImageDraw, ImageFont

from reid.runtime import atomic_path

BORDER = 3          # frame width around a gallery image (green = correct, red = wrong)
PAD = 4             # space between cells, also the right and bottom margin
QUERY_GAP = 8       # extra space separating the query from its ranking list
LABEL_WIDTH = 64    # left column holding the row labels
HEADER_HEIGHT = 14  # strip above the first row holding the rank numbers
MAX_IMAGES = 8      # columns of the perturbation figure; more would be unreadable

GREEN = (0, 190, 0)
RED = (230, 0, 0)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def to_pil(image):
    """A (3, H, W) float tensor in [0, 1] as an RGB PIL image, exactly round(x * 255)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    array = image.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).contiguous().numpy())


def _save(picture, path):
    # The temporary name does not end in .png, hence the explicit format.
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def save_png(image, path):
    """Write one (3, H, W) image as a lossless PNG, atomically."""
    _save(to_pil(image), path)


@functools.lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default()


def _write(draw, text, x, y, width, height):
    """Centre `text` in the box (x, y, width, height); text too wide starts at x and
    runs under the images pasted afterwards."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font())
    draw.text((x + max(0, (width - (right - left)) // 2) - left, y + (height - (bottom - top)) // 2 - top),
              text, fill=TEXT, font=_font())


def ranking_figure(query, rows, path):
    """Draw a query and its ranked gallery, one row per setting (clean, each attack).

    `rows` is a list of (label, gallery_images, correct): gallery_images is a
    (k, 3, H, W) tensor in rank order, correct a length-k bool sequence; correct
    matches get a green frame, wrong ones a red frame. `query` is one (3, H, W)
    image shown on every row, or one image per row (a list or a (n, 3, H, W)
    tensor) when each row ranks a different (e.g. attacked) version of the query.
    """
    if not rows:
        raise ValueError("ranking_figure needs at least one row")
    if isinstance(query, (list, tuple)) or query.dim() == 4:
        queries = list(query)
        if len(queries) != len(rows):
            raise ValueError(f"{len(queries)} query images for {len(rows)} rows")
    else:
        queries = [query] * len(rows)
    h, w = queries[0].shape[-2:]
    for label, gallery, correct in rows:
        if gallery.shape[0] != len(correct):
            raise ValueError(f"row {label!r}: {gallery.shape[0]} images but {len(correct)} flags")
        if gallery.numel() and tuple(gallery.shape[-2:]) != (h, w):
            raise ValueError(f"row {label!r}: images {tuple(gallery.shape[-2:])}, query {(h, w)}")

    cell_w, cell_h = w + 2 * BORDER, h + 2 * BORDER
    k_max = max(gallery.shape[0] for _, gallery, _ in rows)
    size = (LABEL_WIDTH + (k_max + 1) * (cell_w + PAD) + QUERY_GAP,
            HEADER_HEIGHT + len(rows) * (cell_h + PAD))
    figure = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(figure)

    def column_x(c):
        return LABEL_WIDTH + c * (cell_w + PAD) + (QUERY_GAP if c > 0 else 0)

    for c in range(1, k_max + 1):
        _write(draw, str(c), column_x(c), 0, cell_w, HEADER_HEIGHT)
    for r, ((label, gallery, correct), q) in enumerate(zip(rows, queries)):
        y = HEADER_HEIGHT + r * (cell_h + PAD)
        _write(draw, label, 0, y, LABEL_WIDTH, cell_h)
        figure.paste(to_pil(q), (column_x(0) + BORDER, y + BORDER))
        for c, (image, ok) in enumerate(zip(gallery, correct), start=1):
            x = column_x(c)
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=GREEN if ok else RED)
            figure.paste(to_pil(image), (x + BORDER, y + BORDER))
    _save(figure, path)


def perturbation_figure(clean, adv, path, amplify=None):
    """Show clean images, their adversarial versions and the amplified perturbation.

    One column per image (the first MAX_IMAGES); the perturbation row is
    0.5 + amplify * (adv - clean), clipped to [0, 1], so mid-gray means unchanged.
    The default amplify = 0.5 / max|delta| over the shown images makes the
    largest change reach black or white while keeping columns comparable.
    """
    if clean.dim() == 3:
        clean, adv = clean.unsqueeze(0), adv.unsqueeze(0)
    if clean.shape != adv.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and adv {tuple(adv.shape)} differ")
    clean = clean[:MAX_IMAGES].detach().float().cpu()
    adv = adv[:MAX_IMAGES].detach().float().cpu()
    delta = adv - clean
    if amplify is None:
        peak = delta.abs().max().item()
        amplify = 0.5 / peak if peak > 0 else 1.0  # no change: any factor shows flat gray
    shown = (0.5 + amplify * delta).clamp(0, 1)

    n, (h, w) = clean.shape[0], clean.shape[-2:]
    figure = Image.new("RGB", (LABEL_WIDTH + n * (w + PAD), PAD + 3 * (h + PAD)), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    labels = ("clean", "adversarial", f"delta x{amplify:.3g}")
    for r, (label, images) in enumerate(zip(labels, (clean, adv, shown))):
        y = PAD + r * (h + PAD)
        _write(draw, label, 0, y, LABEL_WIDTH, h)
        for c, image in enumerate(images):
            figure.paste(to_pil(image), (LABEL_WIDTH + c * (w + PAD), y))
    _save(figure, path)
