"""Speed of `reid.metrics.evaluate_rank` against the reference per-query sorting loop.

Builds a Market-1501-sized evaluation (3368 queries; 15913 gallery images of which 2798
distractors, plus 3819 junk images; 750 identities over 6 cameras), times the
reference-code way (one full argsort per query, then AP / CMC / mINP from the sorted
list) and `evaluate_rank` in the same run, checks that they give the same numbers, and
writes the timings as JSON. The loop runs twice: with a stable argsort, whose tie order
is evaluate_rank's (numbers must agree to 1e-9), and with numpy's default argsort, much
faster on SIMD CPUs (ties may order differently). Two feature variants: "weak identity"
(true matches spread over the whole ranking, the worst case for the fast path) and
"strong identity" (matches rank near the top).

    python benchmarks/bench_metrics.py --out bench_metrics.json [--device cpu|cuda] [--threads N]
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid.metrics import evaluate_rank, pairwise_distance  # noqa: E402

# feature = strength * identity centre + unit noise, in `dim` dimensions
VARIANTS = {"weak_identity": 0.1, "strong_identity": 1.0}


def market_like_case(queries, gallery, distractors, junk, ids, cams, seed):
    """Pids and camera ids shaped like Market-1501's test split.

    Every identity is seen by 2 to `cams` cameras; queries are (identity, camera) pairs
    of those, the identity images of the gallery are spread over the same cameras.
    """
    rng = np.random.default_rng(seed)
    cam_sets = [rng.choice(np.arange(1, cams + 1), size=rng.integers(2, cams + 1), replace=False)
                for _ in range(ids)]
    pairs = np.array([(pid + 1, cam) for pid, cs in enumerate(cam_sets) for cam in cs])
    pick = rng.permutation(len(pairs))[:queries]
    if queries > len(pairs):
        pick = np.concatenate([pick, rng.integers(0, len(pairs), queries - len(pairs))])
    q_pids, q_cams = pairs[pick, 0], pairs[pick, 1]
    num_id_images = gallery - distractors
    id_pids = rng.permutation(np.arange(num_id_images) % ids) + 1
    id_cams = np.array([rng.choice(cam_sets[pid - 1]) for pid in id_pids])
    g_pids = np.concatenate([id_pids, np.zeros(distractors, int), np.full(junk, -1)])
    g_cams = np.concatenate([id_cams, rng.integers(1, cams + 1, distractors + junk)])
    order = rng.permutation(len(g_pids))
    return q_pids, q_cams, g_pids[order], g_cams[order]


def features(pids, strength, centres, rng):
    """strength * centre of the identity + unit Gaussian noise; pids <= 0 get their own centre."""
    own = rng.standard_normal((len(pids), centres.shape[1]))
    centre = np.where((pids > 0)[:, None], centres[np.maximum(pids, 0)], own)
    return (strength * centre + rng.standard_normal(centre.shape)).astype(np.float32)


def reference_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, kind):
    """The reference-code way: a full argsort of the gallery for every query.

    kind="stable" orders ties by gallery index, as evaluate_rank does; numpy's default
    "quicksort" (SIMD-accelerated, several times faster) may order ties otherwise.
    """
    cmc_hits, aps, inps = np.zeros(max_rank), [], []
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind=kind)
        pids, cams = g_pids[order], g_camids[order]
        keep = (pids != -1) & ~((pids == q_pids[q]) & (cams == q_camids[q]))
        hits = pids[keep] == q_pids[q]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1.0
        hit_number = np.arange(1, len(ranks) + 1)
        before = np.where(ranks > 1, (hit_number - 1) / np.maximum(ranks - 1, 1), 1.0)
        aps.append(np.mean((before + hit_number / ranks) / 2))
        inps.append(len(ranks) / ranks[-1])
        if ranks[0] <= max_rank:
            cmc_hits[int(ranks[0]) - 1:] += 1
    return {"cmc": cmc_hits / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "num_valid_queries": len(aps)}


def differences(a, b):
    if a["num_valid_queries"] != b["num_valid_queries"]:
        return {"num_valid_queries": abs(a["num_valid_queries"] - b["num_valid_queries"])}
    return {"mAP": abs(a["mAP"] - b["mAP"]), "mINP": abs(a["mINP"] - b["mINP"]),
            "cmc": float(np.abs(a["cmc"] - b["cmc"]).max())}


def run_variant(name, strength, labels, args, device):
    q_pids, q_cams, g_pids, g_cams = labels
    rng = np.random.default_rng(args.seed + 1)
    centres = rng.standard_normal((args.ids + 1, args.dim))
    qf = torch.from_numpy(features(q_pids, strength, centres, rng)).to(device)
    gf = torch.from_numpy(features(g_pids, strength, centres, rng)).to(device)
    distmat = pairwise_distance(qf, gf)
    dist_np = distmat.cpu().numpy()
    evaluate_rank(distmat[:64], q_pids[:64], g_pids, q_cams[:64], g_cams)  # warm-up (allocator, CUDA)
    runs = {
        "evaluate_rank": lambda: evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50),
        "stable": lambda: reference_loop(dist_np, q_pids, g_pids, q_cams, g_cams, 50, "stable"),
        "quicksort": lambda: reference_loop(dist_np, q_pids, g_pids, q_cams, g_cams, 50, "quicksort"),
    }
    # Interleaved repeats, the fastest of each counts: load changes hit every method alike.
    seconds, outputs = {key: float("inf") for key in runs}, {}
    for _ in range(args.repeat):
        for key, fn in runs.items():
            start = time.perf_counter()
            outputs[key] = fn()
            seconds[key] = min(seconds[key], time.perf_counter() - start)
    fast = outputs["evaluate_rank"]
    result = {"feature_identity_strength": strength, "evaluate_rank_s": seconds["evaluate_rank"],
              "mAP": fast["mAP"], "mINP": fast["mINP"], "rank1": float(fast["cmc"][0]),
              "num_valid_queries": fast["num_valid_queries"]}
    for kind in ("stable", "quicksort"):
        diffs = differences(fast, outputs[kind])
        # Exact agreement with the stable loop; the quicksort loop may only differ through tie order.
        if max(diffs.values()) > (1e-9 if kind == "stable" else 1e-4):
            raise SystemExit(f"{name}: evaluate_rank disagrees with the {kind} reference loop: {diffs}")
        result[f"{kind}_loop_s"] = seconds[kind]
        result[f"speedup_vs_{kind}_loop"] = seconds[kind] / seconds["evaluate_rank"]
        result[f"max_abs_difference_vs_{kind}_loop"] = diffs
    return result


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where evaluate_rank runs (the reference loop is numpy on the CPU)")
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913, help="gallery images, distractors included, junk not")
    parser.add_argument("--distractors", type=int, default=2798, help="gallery images with pid 0")
    parser.add_argument("--junk", type=int, default=3819, help="extra gallery images with pid -1")
    parser.add_argument("--ids", type=int, default=750)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--dim", type=int, default=128, help="feature dimension")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each method; the fastest counts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    if not 0 <= args.distractors < args.gallery:
        raise SystemExit("--distractors must be smaller than --gallery")
    device = torch.device(args.device)

    load_before = os.getloadavg()[0]
    labels = market_like_case(args.queries, args.gallery, args.distractors, args.junk, args.ids, args.cams, args.seed)
    results = {name: run_variant(name, strength, labels, args, device) for name, strength in VARIANTS.items()}
    report = {
        "case": {"queries": args.queries, "gallery_columns": args.gallery + args.junk,
                 "identity_images": args.gallery - args.distractors, "distractors": args.distractors,
                 "junk": args.junk, "ids": args.ids, "cams": args.cams, "dim": args.dim, "max_rank": 50,
                 "seed": args.seed, "repeat": args.repeat},
        "variants": results,
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "cpu": cpu_name(),
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            # Other processes on the CPUs slow multi-threaded torch far more than the
            # single-threaded numpy loops: a load above the core count makes ratios unreliable.
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        },
    }
    for name, r in results.items():
        print(f"{name}: evaluate_rank ({args.device}) {r['evaluate_rank_s']:.3f} s | per-query loop, stable argsort "
              f"{r['stable_loop_s']:.2f} s -> {r['speedup_vs_stable_loop']:.1f}x (identical numbers) | "
              f"numpy default argsort {r['quicksort_loop_s']:.2f} s -> {r['speedup_vs_quicksort_loop']:.1f}x | "
              f"mAP {r['mAP']:.4f} rank1 {r['rank1']:.4f} mINP {r['mINP']:.4f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
