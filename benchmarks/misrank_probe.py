#!/usr/bin/env python
"""How strong is the Mis-Ranking generator (-a MisRank) after a given training, and which of
its parts help? Trains one generator per variant against a checkpoint with the toolkit's own
pieces (reid.attacks.misrank, the one training loop) and evaluates each with gen_adv.py
--generator; prints one line per variant (mAP % under the generator, the clean mAP).

Variants (any combination of the words, "-"-joined): base (the toolkit's: GAN weight 0.1),
gan1 (GAN weight 1), nogan (no GAN term), lr (Adam at 1e-3 instead of 2e-4), self (also push
each image's feature away from its own clean feature), collapse (the paper's code's form: distances among the perturbed
features, so an image's nearest positive is itself), scaled (the paper's code's bound: each
image's and channel's perturbation rescaled to reach eps, instead of tanh x eps alone). Each
line also gives the mean |perturbation| in /255 over the first 64 query images.

    python benchmarks/misrank_probe.py --checkpoints attacks/defence-table --dataset \
        attacks/defence-table/data --filename clean-last.th --variants base nogan nogan-lr --epochs 10
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gen_adv  # noqa: E402
from reid.attacks import misrank  # noqa: E402
from reid.data import build_transforms, load_dataset, read_image, train_loader  # noqa: E402
from reid.models import load_model  # noqa: E402
from reid.training import train_epoch  # noqa: E402

ORIGINAL = misrank.misrank_loss
ORIGINAL_FORWARD = misrank.PerturbationGenerator.forward


def scaled_forward(self, x):
    """The paper's code's bound: the tanh output of each image and channel rescaled (the scale
    not differentiated) so that its largest magnitude is eps."""
    t = ORIGINAL_FORWARD(self, x)
    peak = t.detach().abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return t * ((self.eps / 255.0) / peak)


def variant_loss(variant):
    if "collapse" in variant:
        def loss(adv, clean, labels, margin):
            a = F.normalize(adv, dim=1)
            d, same = torch.cdist(a, a), labels.view(-1, 1) == labels.view(1, -1)
            return F.relu(d.masked_fill(same, -1e9).amax(1) - d.masked_fill(~same, 1e9).amin(1) + margin).mean()
        return loss
    if "self" in variant:
        def loss(adv, clean, labels, margin):
            shift = (F.normalize(adv, dim=1) - F.normalize(clean, dim=1)).pow(2).sum(1).mean()
            return ORIGINAL(adv, clean, labels, margin) - shift
        return loss
    return ORIGINAL


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--filename", required=True)
    p.add_argument("--variants", nargs="+", default=["base", "nogan"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--size", type=int, nargs=2, default=[64, 32])
    p.add_argument("--work", default="/tmp/misrank-probe")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model, _ = load_model(os.path.join(args.checkpoints, args.filename))
    model.eval()
    data = load_dataset(args.dataset)
    transform = build_transforms(*args.size, train=False)
    for variant in args.variants:
        config = misrank.GeneratorConfig(eps=args.eps, epochs=args.epochs, lr=1e-3 if "lr" in variant else 2e-4,
                                         gan_weight=0.0 if "nogan" in variant else 1.0 if "gan1" in variant
                                         else misrank.GeneratorConfig.gan_weight)
        misrank.misrank_loss = variant_loss(variant)
        misrank.PerturbationGenerator.forward = scaled_forward if "scaled" in variant else ORIGINAL_FORWARD
        torch.manual_seed(0)
        pair, objective = misrank.GeneratorPair(config), misrank.MisRankObjective(model, config)
        optimizer = torch.optim.Adam(pair.parameters(), lr=config.lr, betas=(0.5, 0.999))
        start = time.perf_counter()
        for epoch in range(args.epochs):
            stats = train_epoch(pair, train_loader(data.train, transform, 64, 4, 0, seed=epoch), optimizer,
                                objective, "cpu", epoch)
        for param in model.parameters():
            param.requires_grad_(True)
        with torch.no_grad():
            first = torch.stack([transform(read_image(q.path)) for q in data.query[:64]])
            mean_abs = 255 * pair.generator.eval()(first).abs().mean().item()
        path = os.path.join(args.work, f"{variant}.pt")
        misrank.save_generator(path, pair.generator.eval(), config, args.size)
        res = gen_adv.main([args.checkpoints, args.dataset, args.filename, "-a", "MisRank", "--eps", str(args.eps),
                            "--generator", path, "--device", "cpu", "--workers", "0",
                            "--out", os.path.join(args.work, f"out-{variant}")])
        line = {"variant": variant, "epochs": args.epochs, "final_loss": stats["loss"],
                "mean_abs_perturbation": mean_abs, "mAP": res["attacks"]["MisRank"]["mean"]["mAP"],
                "clean_mAP": res["clean"]["mAP"],
                "seconds": time.perf_counter() - start}
        print(json.dumps(line))
    misrank.misrank_loss = ORIGINAL
    misrank.PerturbationGenerator.forward = ORIGINAL_FORWARD


if __name__ == "__main__":
    main()
