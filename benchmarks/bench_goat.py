"""Speed of a defended training epoch (GOAT, EST, ACT, HM) against its bound: the inner
attack's iterations + the training step + one guide pass; and of free adversarial training
(`--free M`), whose bound is M training steps a batch.

In one run, on one model, batch and input size, with the real training loader (images
read from disk by `--workers` processes, pool guides included; P x K batches for ACT and HM)
it measures, at each defence's sizes (B images a batch):

  t_fb(n)      one forward + backward pass w.r.t. n input images (eval mode, weights frozen):
               the unit cost of one attack iteration; GOAT and EST attack B images, ACT B
               (the positives and negatives of B / 2 triplets), HM 3B / 2;
  t_step(n)    one clean training step on n images (train mode: forward, loss, backward,
               Adam step): GOAT and EST train on B, ACT on 3B / 2, HM on 5B / 2;
  t_guides(n)  one no-grad forward pass: GOAT's batch and pool guides B (1 + N), the others'
               clean features of the batch, B;

then a clean epoch and each defence's epoch over the same `--steps` batches, and reports

    efficiency = steps * (iters * t_fb + t_step + t_guides) / t(defence epoch)

(1.0 = the defence costs nothing beyond its passes; the target is >= 0.85; for free: iters = 0,
no guides, M steps), and the clean
epoch's steps * t_step(B) / t(clean epoch), which tells whether data loading keeps up.

    python benchmarks/bench_goat.py --dataset data/synthetic --out bench_goat.json   # CPU, 64x32
    python benchmarks/bench_goat.py --device cuda --height 256 --width 128 --workers 8 ...
"""

import argparse
import itertools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_attacks import forward_backward_seconds, machine_info, start, sync, write_report  # noqa: E402
from reid.data import build_transforms, load_dataset, train_loader  # noqa: E402
from reid.training import Objective, train_epoch  # noqa: E402
from reid.defences import Goat, GuidePool, TripletDefence, triplet_config  # noqa: E402
from reid.defences.free import FreeObjective  # noqa: E402
from reid.defences.goat import GoatConfig  # noqa: E402
from reid.models.backbones import ReidNet  # noqa: E402


# (attacked, trained, guide-pass) images per step, as multiples of the batch B (GOAT's guides: B (1 + N))
SIZES = {"goat": (1, 1, 1), "est": (1, 1, 1), "act": (1, 1.5, 1), "hm": (1.5, 2.5, 1), "free": (0, 1, 0)}


def median_seconds(fn, device, repeats):
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def epoch_seconds(model, loader, steps, optimizer, objective, device, prepare_batch=None):
    """Time `steps` training steps, after a first batch that starts the workers (untimed)."""
    batches = iter(loader)
    next(batches)
    batches = itertools.islice(batches, steps)
    sync(device)
    t = time.perf_counter()
    train_epoch(model, batches, optimizer, objective, device, epoch=0, prepare_batch=prepare_batch)
    sync(device)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="data/synthetic", help="Market-layout dataset with sorted/ (sort_dataset.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--push", type=int, default=4, help="pool guides per image (N)")
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--steps", type=int, default=12, help="training steps timed per epoch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--instances", type=int, default=4, help="K of the P x K batches of ACT and HM")
    p.add_argument("--replays", type=int, default=4, help="M of free adversarial training")
    p.add_argument("--defences", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--out", default="benchmarks/bench_goat.json")
    args = p.parse_args()
    device = start(args)

    data = load_dataset(args.dataset)
    pool = GuidePool.from_dataset(data, args.push)
    tf = build_transforms(args.height, args.width, train=True)
    loaders = {"plain": train_loader(data.train, tf, args.batch, workers=args.workers, seed=0, companions=pool),
               "pk": train_loader(data.train, tf, args.batch, args.instances, workers=args.workers, seed=0)}
    model = ReidNet("classif", data.num_train_pids).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    objective = Objective("classif")
    images, labels, _, _, guides = next(iter(loaders["plain"]))
    images, labels, guides = images.to(device), labels.to(device), guides.to(device)

    def repeat(x, n):
        return x.repeat((n + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:n]

    def clean_step(n):
        x, y = repeat(images, n), repeat(labels, n)

        def step():
            loss, _ = objective(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    def guide_pass(n):
        x = torch.cat([images, guides.flatten(0, 1)])[:n] if n > len(images) else images

        def forward():
            with torch.no_grad():
                model(x)
        return forward

    b = args.batch
    steps = min(args.steps, len(loaders["plain"]) - 1, len(loaders["pk"]) - 1)
    model.train()
    t_clean_step = median_seconds(clean_step(b), device, args.repeats)
    clean = epoch_seconds(model, loaders["plain"], steps, optimizer, objective, device)
    report = {
        "benchmark": "defence epoch vs steps x (iters x t_fb + t_step + t_guides), at each defence's sizes",
        "config": {k: v for k, v in vars(args).items() if k != "out"}, "steps": steps,
        "clean_step_seconds": t_clean_step, "clean_epoch_seconds": clean,
        "clean_efficiency": steps * t_clean_step / clean, "defences": {},
        "machine": machine_info(device, workers=args.workers),
    }
    print(f"clean epoch {clean:.2f} s ({steps} steps): efficiency {report['clean_efficiency']:.3f}")
    for name in args.defences:
        attacked, trained, guided = (int(f * b) for f in SIZES[name])
        guided = b * (1 + args.push) if name == "goat" else guided
        model.train()
        t_step = median_seconds(clean_step(trained), device, args.repeats)
        model.eval()
        t_guides = median_seconds(guide_pass(guided), device, args.repeats) if guided else 0.0
        t_fb = forward_backward_seconds(model, repeat(images, attacked), device, args.repeats) if attacked else 0.0
        bound = args.iters * t_fb + t_step + t_guides
        prepare, defended, loader = None, objective, loaders["plain"]
        if name == "free":  # M training steps a batch, the perturbation's step from the same backward
            bound, defended = args.replays * t_step, FreeObjective(objective, args.replays, 5.0)
            loader = train_loader(data.train, tf, args.batch, workers=args.workers, seed=0)  # no pool images
        elif name == "goat":
            prepare = Goat(GoatConfig("pool", args.push, pull=True, iters=args.iters))
        elif name == "est":  # no pool images: a loader without companions
            prepare = Goat(GoatConfig("self", 0, pull=False, iters=args.iters))
            loader = train_loader(data.train, tf, args.batch, workers=args.workers, seed=0)
        else:
            defended, loader = TripletDefence(objective, triplet_config(name, iters=args.iters)), loaders["pk"]
        adv = epoch_seconds(model, loader, steps, optimizer, defended, device, prepare_batch=prepare)
        report["defences"][name] = {
            "attacked_images": attacked, "trained_images": trained, "guide_images": guided,
            "forward_backward_seconds": t_fb, "step_seconds": t_step, "guide_pass_seconds": t_guides,
            "bound_step_seconds": bound, "epoch_seconds": adv, "efficiency": steps * bound / adv,
            "cost_vs_clean_epoch": adv / clean}
        print(f"{name:5s} t_fb {t_fb * 1000:.1f} ms  t_step {t_step * 1000:.1f} ms  t_guides {t_guides * 1000:.1f} ms"
              f"  epoch {adv:.2f} s: efficiency {steps * bound / adv:.3f}, {adv / clean:.1f} clean epochs")
    write_report(report, args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
