"""Speed of gen_adv's attack loop against the bound T x (forward + backward).

In one run, on one model, batch size and input size: times one forward + backward
pass with respect to the input (the unit cost of an iteration) and one forward pass,
then gen_adv's attack loop (`reid.evaluation.attack_loop.attack_split`: guide selection, T
iterations per batch, adversarial features, bookkeeping) for several attacks, and reports

    efficiency = n_batches * T * K * t(forward + backward) / t(attack loop)

for the gradient attacks (PGD rows, APGD rows, with --eot K: K passes per step; with
--input-diversity / --translation-invariance, the transfer techniques' resize and convolution
count against the same bound), and
n_batches * Q * t(forward) / t(attack loop) for the gradient-free Square rows (Q = --queries)
(1.0 = the attack costs nothing beyond its passes; the target is >= 0.9).
Images are served from memory so that data loading, which gen_adv overlaps with
workers, does not blur the figure.

    python benchmarks/bench_attacks.py --out bench_attacks.json                 # CPU, 64x32
    python benchmarks/bench_attacks.py --device cuda --height 256 --width 128 \\
        --images 3368 --batch 128 --out bench_attacks_gpu.json                 # Market-sized query set
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid.attacks import ATTACKS, OPTIMISERS  # noqa: E402
from reid.evaluation.attack_loop import attack_split  # noqa: E402
from reid.evaluation.splits import Split  # noqa: E402
from reid.models.backbones import ReidNet  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward_seconds(model, images, device, repeats):
    """Median time of one forward + backward pass w.r.t. the input (weights frozen, eval mode)."""
    for p in model.parameters():
        p.requires_grad_(False)
    times = []
    for _ in range(repeats + 1):  # the first pass warms up
        x = images.clone().requires_grad_(True)
        sync(device)
        t = time.perf_counter()
        model(x).pow(2).sum().backward()
        sync(device)
        times.append(time.perf_counter() - t)
    for p in model.parameters():
        p.requires_grad_(True)
    return statistics.median(times[1:])


def forward_seconds(model, images, device, repeats):
    """Median time of one no-grad forward pass (the unit cost of a query)."""
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            sync(device)
            t = time.perf_counter()
            model(images)
            sync(device)
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def start(args):
    """Apply `--threads` and seed torch; returns the `--device`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def machine_info(device, **extra):
    """What the figures were measured on, for the JSON report."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "python": platform.python_version(), **extra}


def write_report(report, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--images", type=int, default=128, help="size of the attacked set")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=10, help="T")
    p.add_argument("--attacks", nargs="+", default=["IFGSM", "SMA", "FNA", "APGD_SMA", "APGD_FNA", "APGD_RANK",
                                                     "SQUARE_FNA", "BANDITS_FNA", "RGF_FNA", "QA+", "CA+", "LTM"])
    p.add_argument("--gallery", type=int, default=1000,
                   help="size of the gallery the ranking and targeted attacks rank against (Market: 19732); "
                        "its first --images rows are the attacked images, the rest random features")
    p.add_argument("--queries", type=int, default=100, help="Q, the query budget per image of the gradient-free "
                   "rows (Square, Bandits, RGF; the bound counts the queries they spend)")
    p.add_argument("--eot", type=int, default=1, help="K, forward passes per gradient of the gradient attacks")
    p.add_argument("--input-diversity", type=float, default=0.0, metavar="P",
                   help="the gradient rows with input diversity P (the bound stays T x t(forward + backward))")
    p.add_argument("--translation-invariance", type=int, default=0, metavar="K",
                   help="the gradient rows with a K x K translation-invariance kernel")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/bench_attacks.json")
    args = p.parse_args()
    device = start(args)
    model = ReidNet("classif", num_classes=100).to(device).eval()
    images = torch.rand(args.images, 3, args.height, args.width)
    pids = np.arange(args.images) // 4 + 1  # 4 images per identity, as in a query set
    camids = np.arange(args.images) % 6
    with torch.no_grad():
        feats = torch.cat([model(images[i:i + args.batch].to(device)) for i in range(0, args.images, args.batch)])
    split = Split("query", feats, pids, camids, samples=[None] * args.images)
    extra = max(args.gallery - args.images, 0)
    rng = torch.Generator().manual_seed(0)
    g_feats = torch.cat([feats, torch.randn(extra, feats.shape[1], generator=rng).to(device) * feats.std()])
    g_pids = np.concatenate([pids, np.random.default_rng(0).integers(1, pids.max() + 1, extra)])
    g_camids = np.concatenate([(camids + 1) % 6, np.random.default_rng(1).integers(0, 6, extra)])
    gallery = Split("gallery", g_feats, g_pids, g_camids, samples=[None] * len(g_feats))
    loader = [(images[i:i + args.batch], None, None, torch.arange(i, min(i + args.batch, args.images)))
              for i in range(0, args.images, args.batch)]
    # Move the batches once; an on-device loader is what workers + pinned memory approximate.
    loader = [(x.to(device), a, b, idx) for x, a, b, idx in loader]

    fb = forward_backward_seconds(model, loader[0][0], device, args.repeats)
    fwd = forward_seconds(model, loader[0][0], device, args.repeats)
    n_batches = len(loader)
    full = [b for b in loader if len(b[0]) == args.batch]
    results = {}
    for name in args.attacks:
        spec = ATTACKS[name]
        free = spec.gradient_free
        iters, eot = (spec.iterations(args.queries), 1) if free else (args.iters, args.eot)
        # the candidate attacks perturb gallery images (the loader's are its first rows), ranked by the queries
        target, other = (gallery, split) if spec.side == "gallery" else (split, gallery)
        options = dict(ranked_against=other if spec.uses_gallery else None, eot=eot, device=device)
        if not free:
            options.update(diversity=args.input_diversity, smoothing=args.translation_invariance)
        gen = torch.Generator().manual_seed(0)
        warm = 2 * OPTIMISERS[spec.optimiser].queries_per_step if free else 2  # two steps
        attack_split(model, full[:1], target, name, max_iter=warm, generator=gen, **options)  # warm-up
        sync(device)
        t = time.perf_counter()
        budget = args.queries if free else iters
        _, stats = attack_split(model, loader, target, name, eps=5, step=1, max_iter=budget, generator=gen, **options)
        sync(device)
        seconds = time.perf_counter() - t
        unit = fwd if free else fb * eot
        bound = iters * unit * n_batches * (args.images / (n_batches * args.batch))
        results[name] = {"attack_seconds": seconds, "bound_seconds": bound, "efficiency": bound / seconds,
                         "bound": (f"queries {iters} x t(forward)" if free else
                                   f"iterations {iters} x t(forward+backward){f' x eot {eot}' if eot > 1 else ''}"),
                         "max_perturbation": stats["max_perturbation"]}
        print(f"{name:<11} attack {seconds:8.3f} s   bound {bound:8.3f} s   efficiency {bound / seconds:.3f}")
    report = {
        "benchmark": "attack loop vs T x (forward + backward)",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "forward_backward_seconds": fb, "forward_seconds": fwd,
        "attacks": results,
        "machine": machine_info(device),
    }
    write_report(report, args.out)
    print(f"forward+backward {fb * 1000:.1f} ms per batch of {args.batch}; -> {args.out}")


if __name__ == "__main__":
    main()
