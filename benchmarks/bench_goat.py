"""Speed of a GOAT training epoch against its bound, (iters + 1) passes + one guide pass.

In one run, on one model, batch and input size, with the real training loader (images
read from disk by `--workers` processes, pool guides included) it measures

  t_fb      one forward + backward pass w.r.t. the input (eval mode, weights frozen):
            the unit cost of one attack iteration;
  t_step    one clean training step (train mode: forward, loss, backward, Adam step);
  t_guides  one no-grad forward pass over the batch and its pool guides, B * (1 + N) images;

then a clean epoch and a GOAT epoch over the same `--steps` batches, and reports

    efficiency = steps * (iters * t_fb + t_step + t_guides) / t(GOAT epoch)

(1.0 = GOAT costs nothing beyond its passes; the target is >= 0.87, i.e. within 15%), and
the clean epoch's steps * t_step / t(clean epoch), which tells whether data loading keeps up.

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
from reid.defences import Goat, GuidePool  # noqa: E402
from reid.defences.goat import GoatConfig  # noqa: E402
from reid.models.backbones import ReidNet  # noqa: E402


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
    p.add_argument("--out", default="benchmarks/bench_goat.json")
    args = p.parse_args()
    device = start(args)

    data = load_dataset(args.dataset)
    pool = GuidePool.from_dataset(data, args.push)
    tf = build_transforms(args.height, args.width, train=True)
    loader = train_loader(data.train, tf, args.batch, workers=args.workers, seed=0, companions=pool)
    model = ReidNet("classif", data.num_train_pids).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    objective = Objective("classif")
    goat = Goat(GoatConfig("pool", args.push, pull=True, iters=args.iters))

    images, labels, _, _, guides = next(iter(loader))
    images, labels, guides = images.to(device), labels.to(device), guides.to(device)

    def clean_step():
        loss, _ = objective(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def guide_pass():
        with torch.no_grad():
            model(torch.cat([images, guides.flatten(0, 1)]))

    model.train()
    t_step = median_seconds(clean_step, device, args.repeats)
    model.eval()
    t_guides = median_seconds(guide_pass, device, args.repeats)
    t_fb = forward_backward_seconds(model, images, device, args.repeats)
    bound = args.iters * t_fb + t_step + t_guides

    steps = min(args.steps, len(loader) - 1)
    clean = epoch_seconds(model, loader, steps, optimizer, objective, device)
    adv = epoch_seconds(model, loader, steps, optimizer, objective, device, prepare_batch=goat)
    report = {
        "benchmark": "GOAT epoch vs steps x (iters x t_fb + t_step + t_guides)",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "forward_backward_seconds": t_fb, "clean_step_seconds": t_step, "guide_pass_seconds": t_guides,
        "bound_step_seconds": bound, "steps": steps,
        "goat_epoch_seconds": adv, "goat_efficiency": steps * bound / adv,
        "clean_epoch_seconds": clean, "clean_efficiency": steps * t_step / clean,
        "machine": machine_info(device, workers=args.workers),
    }
    print(f"t_fb {t_fb * 1000:.1f} ms  t_step {t_step * 1000:.1f} ms  t_guides {t_guides * 1000:.1f} ms  "
          f"bound {bound:.3f} s/step")
    print(f"clean epoch {clean:.2f} s ({steps} steps): efficiency {report['clean_efficiency']:.3f}")
    print(f"GOAT epoch  {adv:.2f} s ({steps} steps): efficiency {report['goat_efficiency']:.3f}")
    write_report(report, args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
