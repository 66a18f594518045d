"""Speed of learning a universal perturbation against its bound.

In one run, on one model, batch size and input size: times one forward + backward pass
with respect to the input (the unit cost of a learning step), then `reid.attacks.learn_uap`
over the same batches (guide lookup, objective, gradient w.r.t. delta, MI-SGD), without
and with a meta batch, and reports

    efficiency = n_steps * passes * t(forward + backward) / t(learning)

with passes = 1 (plain) or 2 (meta: the source batch at delta and the meta batch at the
look-ahead delta'). 1.0 = learning costs nothing beyond its gradient passes; the target is
>= 0.85. Then a training epoch over the same batches, clean and with the online defence
(train.py --uap-adv online), as a ratio (target <= 2). Images are served from memory so
that data loading does not blur the figures.

    python benchmarks/bench_universal.py --threads 1 --out benchmarks/bench_universal.json
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_attacks import forward_backward_seconds, machine_info, start, sync, write_report  # noqa: E402
from reid.attacks import UapConfig, UniversalGuides, learn_uap  # noqa: E402
from reid.defences import UapDefence  # noqa: E402
from reid.defences.universal import UapDefenceConfig  # noqa: E402
from reid.training import Objective, train_epoch  # noqa: E402
from reid.models.backbones import ReidNet  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()
    device = start(args)
    model = ReidNet("classif", 100).to(device).eval()
    n = args.batch * args.steps
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, args.height, args.width, generator=gen).to(device)
    pids = torch.arange(n, device=device) // 4
    with torch.no_grad():
        feats = torch.cat([model(images[s:s + args.batch]) for s in range(0, n, args.batch)])
    guides = UniversalGuides.build(feats, pids)
    batches = [(images[s:s + args.batch], pids[s:s + args.batch], pids[s:s + args.batch],
                torch.arange(s, s + args.batch, device=device)) for s in range(0, n, args.batch)]
    unit = forward_backward_seconds(model, images[:args.batch], device, args.repeats)
    results = {**machine_info(device, batch=args.batch, steps=args.steps, input=[args.height, args.width]),
               "forward_backward_seconds": unit, "runs": []}
    for loss in ("centroid", "batch", "guided"):
        for meta in (False, True):
            config = UapConfig(loss=loss, eps=8.0, epochs=1)
            sync(device)
            t = time.perf_counter()
            learn_uap(model, batches, guides, config, (args.height, args.width), device=device,
                      meta_loader=batches if meta else None, meta_guides=guides if meta else None,
                      log=lambda *_: None)
            sync(device)
            seconds = time.perf_counter() - t
            passes = 2 if meta else 1
            eff = args.steps * passes * unit / seconds
            results["runs"].append({"loss": loss, "meta": meta, "seconds": seconds, "efficiency": eff})
            print(f"{loss:<9} meta={meta!s:<5} {seconds:7.2f} s  efficiency {eff:.3f}", flush=True)
    results["defence"] = defence_epochs(model, batches, device)
    if args.out:
        write_report(results, args.out)


def defence_epochs(model, batches, device):
    """Seconds of a training epoch over `batches`: clean, and with the online UAP defence
    (train.py --uap-adv online: one MI-SGD step of the delta per batch, a perturbed half
    appended). The target is online <= 2 x clean."""
    times = {}
    for mode in ("clean", "online", "clean", "online"):   # interleaved: both see the same load
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        defence = None
        if mode == "online":
            config = UapDefenceConfig(mode="online", eps=8.0)
            defence = UapDefence(config, torch.zeros(3, *batches[0][0].shape[-2:], device=device))
        sync(device)
        t = time.perf_counter()
        train_epoch(model, batches, optimizer, Objective("classif"), device, 0, prepare_batch=defence)
        sync(device)
        times.setdefault(mode, []).append(time.perf_counter() - t)
    clean, online = min(times["clean"]), min(times["online"])
    print(f"training epoch: clean {clean:.2f} s, online defence {online:.2f} s, ratio {online / clean:.2f} "
          f"(target <= 2)", flush=True)
    return {"clean_seconds": clean, "online_seconds": online, "ratio": online / clean}


if __name__ == "__main__":
    main()
