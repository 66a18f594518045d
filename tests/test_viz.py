"""Figures of reid.evaluation.figures: files, geometry from the documented layout, colours, pixel values."""

import numpy as np
import pytest
import torch
from PIL import Image

from reid.evaluation import figures as viz

H, W = 32, 16


def images(n, seed=0):
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(seed))


def ranking_size(n_rows, k):
    cell_w, cell_h = W + 2 * viz.BORDER, H + 2 * viz.BORDER
    return (viz.LABEL_WIDTH + (k + 1) * (cell_w + viz.PAD) + viz.QUERY_GAP,
            viz.HEADER_HEIGHT + n_rows * (cell_h + viz.PAD))


def cell_origin(r, c):
    cell_w, cell_h = W + 2 * viz.BORDER, H + 2 * viz.BORDER
    return (viz.LABEL_WIDTH + c * (cell_w + viz.PAD) + (viz.QUERY_GAP if c else 0),
            viz.HEADER_HEIGHT + r * (cell_h + viz.PAD))


def open_rgb(path):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def only_file(folder, name):
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temporary left behind
    return folder / name


def test_to_pil_is_exact_rounding():
    x = torch.tensor([0.0, 0.5, 1.0, 0.2, 1.5, -0.1]).view(3, 1, 2)
    got = np.asarray(viz.to_pil(x))
    assert got.shape == (1, 2, 3)
    assert got[0, :, 0].tolist() == [0, 128] and got[0, :, 1].tolist() == [255, 51]
    assert got[0, :, 2].tolist() == [255, 0]  # clipped
    with pytest.raises(ValueError):
        viz.to_pil(images(2))


def test_save_png_round_trips(tmp_path):
    x = images(1)[0]
    viz.save_png(x, tmp_path / "x.png")
    got = open_rgb(only_file(tmp_path, "x.png"))
    assert np.array_equal(got, (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


@pytest.mark.parametrize("n_rows,k", [(1, 10), (3, 10), (2, 4)])
def test_ranking_figure_size_and_colours(tmp_path, n_rows, k):
    correct = [i % 3 == 0 for i in range(k)]
    rows = [(f"row{r}", images(k, seed=r), correct) for r in range(n_rows)]
    viz.ranking_figure(images(1)[0], rows, tmp_path / "rank.png")
    got = open_rgb(only_file(tmp_path, "rank.png"))
    assert (got.shape[1], got.shape[0]) == ranking_size(n_rows, k)
    for r in range(n_rows):
        for c, ok in enumerate(correct, start=1):
            x, y = cell_origin(r, c)
            red, green, blue = (int(v) for v in got[y + 1, x + 1])  # inside the frame
            assert (green > 150 > red) if ok else (red > 150 > green), (r, c, ok)
            assert blue < 50
            # the image sits exactly inside the frame
            expected = viz.to_pil(rows[r][1][c - 1])
            inner = got[y + viz.BORDER:y + viz.BORDER + H, x + viz.BORDER:x + viz.BORDER + W]
            assert np.array_equal(inner, np.asarray(expected))


def test_ranking_figure_query_per_row_and_ragged_rows(tmp_path):
    queries = [images(1, seed=10)[0], images(1, seed=11)[0]]
    rows = [("clean", images(3), [True, False, True]), ("FNA", images(5, seed=1), [False] * 5)]
    viz.ranking_figure(queries, rows, tmp_path / "rank.png")
    got = open_rgb(only_file(tmp_path, "rank.png"))
    assert (got.shape[1], got.shape[0]) == ranking_size(2, 5)
    for r, q in enumerate(queries):
        x, y = cell_origin(r, 0)
        inner = got[y + viz.BORDER:y + viz.BORDER + H, x + viz.BORDER:x + viz.BORDER + W]
        assert np.array_equal(inner, np.asarray(viz.to_pil(q)))
    with pytest.raises(ValueError):
        viz.ranking_figure(queries[:1], rows, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        viz.ranking_figure(queries[0], [("x", images(2), [True])], tmp_path / "bad.png")


def perturbation_pixel(got, r, c, i=0, j=0):
    return got[viz.PAD + r * (H + viz.PAD) + i, viz.LABEL_WIDTH + c * (W + viz.PAD) + j]


def test_perturbation_figure_identical_images_are_gray(tmp_path):
    x = images(3)
    viz.perturbation_figure(x, x.clone(), tmp_path / "p.png")
    got = open_rgb(only_file(tmp_path, "p.png"))
    assert (got.shape[1], got.shape[0]) == (viz.LABEL_WIDTH + 3 * (W + viz.PAD), viz.PAD + 3 * (H + viz.PAD))
    for c in range(3):
        block = got[viz.PAD + 2 * (H + viz.PAD):][:H, viz.LABEL_WIDTH + c * (W + viz.PAD):][:, :W]
        assert set(np.unique(block).tolist()) <= {127, 128}


def test_perturbation_figure_amplifies_known_delta(tmp_path):
    clean = torch.full((2, 3, H, W), 0.5)
    adv = clean.clone()
    adv[0, 0, 0, 0] += 0.02   # the largest change: reaches white by default
    adv[1, 1, 2, 3] -= 0.01   # half of it: 0.5 - 0.25
    viz.perturbation_figure(clean, adv, tmp_path / "p.png")
    got = open_rgb(only_file(tmp_path, "p.png"))
    assert perturbation_pixel(got, 2, 0)[0] == 255
    assert perturbation_pixel(got, 2, 1, 2, 3)[1] == round(0.25 * 255)
    assert perturbation_pixel(got, 1, 0)[0] == round(0.52 * 255)  # the adversarial row itself

    viz.perturbation_figure(clean, adv, tmp_path / "p.png", amplify=10)
    got = open_rgb(only_file(tmp_path, "p.png"))
    assert perturbation_pixel(got, 2, 0)[0] == round((0.5 + 10 * 0.02) * 255)
    assert perturbation_pixel(got, 2, 1, 2, 3)[1] == round((0.5 - 10 * 0.01) * 255)


def test_perturbation_figure_shows_at_most_max_images(tmp_path):
    x = images(viz.MAX_IMAGES + 3)
    viz.perturbation_figure(x, x, tmp_path / "p.png")
    with Image.open(only_file(tmp_path, "p.png")) as picture:
        assert picture.width == viz.LABEL_WIDTH + viz.MAX_IMAGES * (W + viz.PAD)
