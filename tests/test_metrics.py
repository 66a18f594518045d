"""reid.metrics against an independent brute force (a stable argsort per query) and hand counts."""

import warnings

import numpy as np
import pytest
import torch

from reid.metrics import ranking as metrics
from reid.metrics import evaluate_rank, pairwise_distance
from reid.runtime import ReidError


def brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="market", per_query=None):
    """The textbook way: sort each query's gallery, drop invalid items, walk the list.

    `per_query`: a dict that receives, per query, its AP, INP and first-hit rank (None, None,
    0 for a query without a valid match)."""
    cmc_counts = np.zeros(max_rank)
    aps, inps = [], []
    for key in ("ap", "inp", "first_rank") if per_query is not None else ():
        per_query[key] = []
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind="stable")
        ranked_hits = []
        for g in order:
            if g_pids[g] == -1 or (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q]):
                continue
            ranked_hits.append(g_pids[g] == q_pids[q])
        hit_ranks = [r + 1 for r, hit in enumerate(ranked_hits) if hit]
        if not hit_ranks:
            for key, value in zip(("ap", "inp", "first_rank"), (None, None, 0)) if per_query is not None else ():
                per_query[key].append(value)
            continue
        terms = []
        for i, r in enumerate(hit_ranks, start=1):
            precision = i / r
            if ap == "market":
                before = (i - 1) / (r - 1) if r > 1 else 1.0
                precision = (before + precision) / 2
            terms.append(precision)
        aps.append(sum(terms) / len(terms))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        for key, value in zip(("ap", "inp", "first_rank"), (aps[-1], inps[-1], hit_ranks[0])) \
                if per_query is not None else ():
            per_query[key].append(value)
        for k in range(max_rank):
            if hit_ranks[0] <= k + 1:
                cmc_counts[k] += 1
    return {"cmc": cmc_counts / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "num_valid_queries": len(aps)}


def random_case(seed, num_q=None, num_g=None, ids=8, cams=3, kind="float32"):
    """Labels with junk (-1), distractors (0) and camera clashes; distances of a chosen kind."""
    rng = np.random.default_rng(seed)
    num_q = num_q or int(rng.integers(1, 40))
    num_g = num_g or int(rng.integers(1, 300))
    q_pids = rng.integers(-1, ids, num_q)
    g_pids = rng.integers(-1, ids, num_g)
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    if kind == "ties":  # few distinct values: ties everywhere
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    elif kind == "float64":
        dist = rng.normal(size=(num_q, num_g))
    else:
        dist = rng.random((num_q, num_g), dtype=np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def quiet(fn, *args, **kwargs):
    """Call fn with the 'queries without a match' warning silenced (random cases have some)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def assert_same(result, expected):
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("ap", ["market", "standard"])
@pytest.mark.parametrize("kind", ["float32", "float64", "ties"])
@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_brute_force(seed, kind, ap):
    case = random_case(seed, kind=kind)
    expected = quiet(brute_force, *case, max_rank=10, ap=ap)
    if expected["num_valid_queries"] == 0:
        with pytest.raises(ReidError):
            quiet(evaluate_rank, *case, max_rank=10, ap=ap)
        return
    result = quiet(evaluate_rank, *case, max_rank=10, ap=ap)
    assert result["cmc"].shape == (10,)
    assert_same(result, expected)


@pytest.mark.parametrize("kind", ["float32", "ties"])
@pytest.mark.parametrize("seed", range(4))
def test_per_query_values_match_brute_force(seed, kind):
    case = random_case(seed, kind=kind)
    expected = {}
    quiet(brute_force, *case, per_query=expected)
    result = quiet(evaluate_rank, *case, max_rank=5, per_query=True)
    got = result["per_query"]
    valid = np.array([v is not None for v in expected["ap"]])
    assert set(got) == {"ap", "inp", "first_rank"} and all(len(v) == len(case[1]) for v in got.values())
    assert np.isnan(got["ap"][~valid]).all() and np.isnan(got["inp"][~valid]).all()
    assert (got["first_rank"][~valid] == 0).all()
    for key in ("ap", "inp"):
        np.testing.assert_allclose(got[key][valid], np.array(expected[key], dtype=object)[valid].astype(float),
                                   rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got["first_rank"], expected["first_rank"])
    # the means come back from the per-query values alone
    again = metrics.rank_summary(got["first_rank"][valid], got["ap"][valid], got["inp"][valid], max_rank=5)
    assert_same(again, {k: v for k, v in result.items() if k != "per_query"})


@pytest.mark.parametrize("kind", ["float32", "ties"])
def test_many_chunks_and_candidate_blocks_match_brute_force(monkeypatch, kind):
    """Tiny chunks and candidate blocks exercise the chunk loop and the buffer reuse."""
    monkeypatch.setitem(metrics._CHUNK_ELEMENTS, "cpu", 500)
    monkeypatch.setattr(metrics, "_CANDIDATE_BLOCK", 16)
    case = random_case(7, num_q=60, num_g=230, ids=5, kind=kind)
    assert_same(quiet(evaluate_rank, *case, max_rank=20), quiet(brute_force, *case, max_rank=20))


def test_market_like_case_with_weak_and_strong_identity():
    rng = np.random.default_rng(3)
    q_pids = rng.integers(1, 30, 80)
    g_pids = np.concatenate([rng.integers(1, 30, 900), np.zeros(100, int), np.full(120, -1)])
    q_cams, g_cams = rng.integers(1, 7, 80), rng.integers(1, 7, len(g_pids))
    centres = rng.normal(size=(30, 16))
    for strength in (0.1, 2.0):
        qf = strength * centres[q_pids] + rng.normal(size=(80, 16))
        gf = strength * centres[np.maximum(g_pids, 0)] + rng.normal(size=(len(g_pids), 16))
        dist = pairwise_distance(qf, gf).numpy()
        case = (dist, q_pids, g_pids, q_cams, g_cams)
        assert_same(quiet(evaluate_rank, *case), quiet(brute_force, *case))


# Query 0: pid 1, camera 1. Gallery in distance order for it:
#   g0 pid 1 cam 1 (same id and camera: removed)   g1 junk (removed)
#   g2 pid 2 -> rank 1   g3 pid 1 cam 2 -> rank 2, hit   g4 distractor pid 0 -> rank 3
#   g5 pid 1 cam 3 -> rank 4, hit   g6 pid 3 -> rank 5
# Query 1: pid 3, camera 2; its only match g6 is the closest -> rank 1.
TINY_G_PIDS = np.array([1, -1, 2, 1, 0, 1, 3])
TINY_G_CAMS = np.array([1, 2, 2, 2, 1, 3, 1])
TINY_DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                      [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1]], dtype=np.float32)


def test_removal_rules_by_hand():
    args = (TINY_DIST, np.array([1, 3]), TINY_G_PIDS, np.array([1, 2]), TINY_G_CAMS)
    market = evaluate_rank(*args, max_rank=5)
    # Query 0, hits at ranks 2 and 4: (0/1 + 1/2)/2 = 1/4 and (1/3 + 2/4)/2 = 5/12 -> AP 1/3.
    assert market["mAP"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)
    assert market["mINP"] == pytest.approx((2 / 4 + 1) / 2, abs=1e-12)
    np.testing.assert_allclose(market["cmc"], [0.5, 1, 1, 1, 1])
    assert market["num_valid_queries"] == 2
    standard = evaluate_rank(*args, max_rank=5, ap="standard")
    assert standard["mAP"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1) / 2, abs=1e-12)


def test_distractors_rank_like_other_non_matches():
    """With the distractor g4 relabelled junk, query 0's second hit moves from rank 4 to 3."""
    g_pids = TINY_G_PIDS.copy()
    g_pids[4] = -1
    result = evaluate_rank(TINY_DIST[:1], [1], g_pids, [1], TINY_G_CAMS, ap="standard")
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)


def test_queries_without_valid_match_are_left_out_with_a_warning():
    # Query 1 (pid 2, camera 2) only has g2, which shares its camera.
    dist = np.vstack([TINY_DIST[:1], TINY_DIST[:1], TINY_DIST[1:]])
    with pytest.warns(UserWarning, match="1 of 3 queries"):
        result = evaluate_rank(dist, [1, 2, 3], TINY_G_PIDS, [1, 2, 2], TINY_G_CAMS, max_rank=5)
    assert result["num_valid_queries"] == 2
    assert result["mAP"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)


def test_no_valid_query_is_an_error():
    with pytest.raises(ReidError, match="none of the 2 queries"):
        evaluate_rank(TINY_DIST, [2, -1], TINY_G_PIDS, [2, 1], TINY_G_CAMS)
    with pytest.raises(ReidError):  # an all-junk gallery
        evaluate_rank(TINY_DIST, [1, 3], np.full(7, -1), [1, 2], TINY_G_CAMS)


@pytest.mark.parametrize("match_first", [True, False])
def test_ties_are_broken_by_gallery_index(match_first):
    g_pids = [1, 2] if match_first else [2, 1]
    dist = np.array([[0.5, 0.5]], dtype=np.float32)
    result = evaluate_rank(dist, [1], g_pids, [0], [1, 1], max_rank=2, ap="standard")
    assert result["mAP"] == (1.0 if match_first else 0.5)
    np.testing.assert_array_equal(result["cmc"], [1, 1] if match_first else [0, 1])


def test_all_distances_equal():
    case = random_case(11, num_q=20, num_g=50)
    dist = np.zeros_like(case[0])
    assert_same(quiet(evaluate_rank, dist, *case[1:]), quiet(brute_force, dist, *case[1:]))


def test_cmc_is_padded_to_max_rank_beyond_the_gallery():
    result = evaluate_rank(TINY_DIST, [1, 3], TINY_G_PIDS, [1, 2], TINY_G_CAMS, max_rank=50)
    assert result["cmc"].shape == (50,)
    assert result["cmc"][-1] == 1.0


def test_torch_and_numpy_inputs_agree():
    dist, q_pids, g_pids, q_cams, g_cams = random_case(5, num_q=30, num_g=200)
    from_numpy = quiet(evaluate_rank, dist, q_pids, g_pids, q_cams, g_cams)
    from_torch = quiet(evaluate_rank, torch.from_numpy(dist), torch.from_numpy(q_pids), torch.from_numpy(g_pids),
                       torch.from_numpy(q_cams), torch.from_numpy(g_cams))
    from_lists = quiet(evaluate_rank, dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(),
                       g_cams.tolist())
    assert_same(from_torch, from_numpy)
    assert_same(from_lists, from_numpy)
    # Integer and half-precision distances are widened exactly.
    ints = np.round(dist * 10).astype(np.int64)
    assert_same(quiet(evaluate_rank, ints, q_pids, g_pids, q_cams, g_cams),
                quiet(brute_force, ints, q_pids, g_pids, q_cams, g_cams))
    halves = torch.from_numpy(dist).half()
    assert_same(quiet(evaluate_rank, halves, q_pids, g_pids, q_cams, g_cams),
                quiet(brute_force, halves.float().numpy(), q_pids, g_pids, q_cams, g_cams))


def test_distance_metrics_match_explicit_formulas():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    euclidean = pairwise_distance(qf, gf)
    cosine = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric="cosine")
    assert isinstance(euclidean, torch.Tensor) and euclidean.dtype == torch.float32
    for i in range(5):
        for j in range(7):
            q, g = qf[i].astype(np.float64), gf[j].astype(np.float64)
            assert euclidean[i, j].item() == pytest.approx(np.sum((q - g) ** 2), rel=1e-5, abs=1e-5)
            expected = 1 - q @ g / (np.linalg.norm(q) * np.linalg.norm(g))
            assert cosine[i, j].item() == pytest.approx(expected, abs=1e-6)
    assert pairwise_distance(qf, qf).diagonal().min().item() >= 0  # clamped against rounding


@pytest.mark.parametrize("call", [
    lambda: evaluate_rank(TINY_DIST, [1, 3], TINY_G_PIDS, [1, 2], TINY_G_CAMS, ap="cuhk"),
    lambda: evaluate_rank(TINY_DIST, [1, 3], TINY_G_PIDS, [1, 2], TINY_G_CAMS, max_rank=0),
    lambda: evaluate_rank(TINY_DIST, [1], TINY_G_PIDS, [1, 2], TINY_G_CAMS),
    lambda: evaluate_rank(TINY_DIST, [1.0, 3.0], TINY_G_PIDS, [1, 2], TINY_G_CAMS),
    lambda: evaluate_rank(np.where(TINY_DIST > 0.5, np.nan, TINY_DIST), [1, 3], TINY_G_PIDS, [1, 2], TINY_G_CAMS),
    lambda: pairwise_distance(np.ones((2, 3)), np.ones((4, 3)), metric="manhattan"),
    lambda: pairwise_distance(np.ones((2, 3)), np.ones((4, 5))),
])
def test_bad_arguments_raise_reid_error(call):
    with pytest.raises(ReidError):
        call()
