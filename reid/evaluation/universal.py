"""The perturbations an evaluation adds rather than optimises per image, obtained before it:
`-a UAP`, a universal perturbation loaded from `--uap FILE` or learned on a dataset's training
split (and a meta dataset's) against the evaluated model, saved as uap.pt; `-a MisRank`, the
Mis-Ranking generator loaded from `--generator FILE` or trained on the training split against
the evaluated model by the one training loop, saved as generator.pt."""

import os
import time
from dataclasses import asdict

import torch
from PIL import Image

from reid.attacks import (GeneratorConfig, GeneratorPair, MisRankObjective, UniversalGuides, learn_uap, load_generator,
                          load_uap, save_generator, save_uap)
from reid.data import build_transforms, eval_loader, load_dataset, train_loader
from reid.evaluation.features import extract_features
from reid.evaluation.options import uap_config
from reid.runtime import ReidError, atomic_path, distributed, progress, seed_everything
from reid.training import train_epoch


def uap_picture(delta, eps, path):
    """The delta amplified to the full range (grey = 0, black / white = -eps / +eps), 4x."""
    img = ((delta / (eps / 255.0) + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pic = Image.fromarray(img)
    with atomic_path(path) as tmp:
        pic.resize((pic.width * 4, pic.height * 4), Image.NEAREST).save(tmp, format="PNG")


def universal_source(model, data, input_size, batch_size, workers, device, config):
    """What learning a universal perturbation needs from one dataset's training split:
    its guides (clean features, k-means centroids; computed once) and a training loader
    (P x K batches for the ``batch`` loss, shuffled batches otherwise, in an order that
    depends only on ``config.seed``). Images are not augmented, as in MetaAttack's code:
    the delta meets the queries as they are, and learning on flipped / shifted images
    measured weaker (benchmarks/RESULTS.md)."""
    transform = build_transforms(*input_size, train=False)
    loader = eval_loader(data.train, transform, batch_size, workers)
    feats, labels, _ = extract_features(model, loader, device, f"{data.name} training features")
    guides = UniversalGuides.build(feats, labels, config.max_clusters, config.seed)
    batch = min(batch_size, len(data.train))
    instances = None
    if config.loss == "batch":
        instances = 4
        batch = max(instances, min(batch // instances, data.num_train_pids) * instances)
    learn_loader = train_loader(data.train, transform, batch, instances, workers, seed=config.seed)
    return learn_loader, guides


def learn_universal(model, source, config, input_size, *, meta=None, batch_size=64, workers=0,
                    device="cpu", log=print):
    """Learn a universal perturbation on ``source.train`` (first-order meta-learning with
    ``meta.train`` if given). Returns (delta (3, H, W) on CPU, per-epoch history, seconds)."""
    loader, guides = universal_source(model, source, input_size, batch_size, workers, device, config)
    meta_loader = meta_guides = None
    if meta is not None:
        meta_loader, meta_guides = universal_source(model, meta, input_size, batch_size, workers, device, config)
    start = time.perf_counter()
    delta, history = learn_uap(model, loader, guides, config, input_size, meta_loader=meta_loader,
                               meta_guides=meta_guides, device=device, log=log,
                               progress=progress)
    return delta, history, time.perf_counter() - start


def obtain_uap(opts, eps, model, data, input_size, device, out, model_sha256, stem="uap"):
    """The universal perturbation of this run at budget `eps`: `--uap FILE` loaded, or learned
    and saved as `stem`.pt / `stem`.png in `out`. Returns (delta, the results.json description).
    Under torchrun every process learns it (the same computation: learning is not sharded)
    and rank 0's delta, which it alone saves, is the one every process evaluates."""
    if opts.uap:
        delta, record = load_uap(opts.uap, input_size)
        info = {"file": os.path.abspath(opts.uap), "learned": False, "resized_from": record.get("resized_from"),
                "file_eps": record["eps"], **{k: record.get(k) for k in ("source_checkpoint_sha256", "dataset",
                                                                        "meta_dataset", "config")}}
        if record["eps"] > eps + 1e-6:
            raise ReidError(f"--uap {opts.uap}: its budget {record['eps']:g}/255 exceeds --eps {eps:g}")
        return delta, info
    config = uap_config(opts, eps)
    source = load_dataset(opts.uap_source, opts.uap_source_kind or opts.dataset) if opts.uap_source else data
    meta = load_dataset(opts.meta_dataset, opts.meta_dataset_kind or opts.dataset) if opts.meta_dataset else None
    print(f"learning a universal perturbation on {source.root} ({len(source.train)} training images, "
          f"loss {config.loss}, eps {config.eps:g}/255, {config.epochs} epochs"
          f"{', meta dataset ' + meta.root if meta else ''})")
    delta, history, seconds = learn_universal(model, source, config, input_size, meta=meta,
                                              batch_size=opts.batch_size, workers=opts.workers, device=device)
    delta = distributed.broadcast_tensor(delta)
    info = {"file": os.path.abspath(os.path.join(out, stem + ".pt")), "learned": True, "resized_from": None,
            "source_checkpoint_sha256": model_sha256, "dataset": source.root,
            "meta_dataset": meta.root if meta else None, "config": asdict(config), "history": history,
            "learn_seconds": seconds}
    if distributed.is_main():
        save_uap(info["file"], delta, config, source_checkpoint_sha256=model_sha256, dataset=source.root,
                 meta_dataset=info["meta_dataset"])
        uap_picture(delta, config.eps, os.path.join(out, stem + ".png"))
    return delta, info


def obtain_generator(opts, eps, model, data, input_size, device, out, model_sha256, stem="generator"):
    """The Mis-Ranking generator of this run at budget `eps`: `--generator FILE` loaded, or
    trained on the dataset's training split against `model` with P x K
    batches (-b, 4 images an identity), the training images unaugmented as the UAP's, and
    saved as `stem`.pt in `out`. Returns (generator on `device`, the results.json description).
    Under torchrun every process trains it (the same computation, not sharded) and rank 0's
    weights are the ones every process evaluates."""
    if opts.generator:
        generator, record = load_generator(opts.generator)
        file_eps = record["config"]["eps"]
        if file_eps > eps + 1e-6:
            raise ReidError(f"--generator {opts.generator}: its budget {file_eps:g}/255 exceeds --eps {eps:g}")
        info = {"file": os.path.abspath(opts.generator), "learned": False,
                **{k: record.get(k) for k in ("config", "source_checkpoint_sha256", "dataset", "input_size")}}
        return generator.to(device), info
    config = GeneratorConfig(eps=eps, epochs=opts.generator_epochs, seed=opts.seed)
    source, instances = data, 4
    batch = max(2 * instances, min(opts.batch_size // instances, source.num_train_pids) * instances)
    if source.num_train_pids < 2:
        raise ReidError(f"-a MisRank: {source.root} has {source.num_train_pids} training identity; the generator's "
                        "loss needs two")
    print(f"training the Mis-Ranking generator on {source.root} ({len(source.train)} training images, "
          f"eps {eps:g}/255, {config.epochs} epochs, P x K batches of {batch})")
    seed_everything(config.seed)
    pair = GeneratorPair(config).to(device)
    trainable = [p.requires_grad for p in model.parameters()]  # the objective freezes the model: given back below
    objective = MisRankObjective(model, config)
    optimizer = torch.optim.Adam(pair.parameters(), lr=config.lr, betas=(0.5, 0.999))
    transform = build_transforms(*input_size, train=False)
    start, history = time.perf_counter(), []
    for epoch in range(config.epochs):
        loader = train_loader(source.train, transform, batch, instances, opts.workers, seed=config.seed + epoch)
        stats = train_epoch(pair, loader, optimizer, objective, device, epoch)
        history.append({"epoch": epoch, "loss": stats["loss"]})
        print(f"generator epoch {epoch}: loss {stats['loss']:.4f}")
    for p, flag in zip(model.parameters(), trainable):
        p.requires_grad_(flag)
    model.eval()
    generator = pair.generator.eval()
    for p in generator.parameters():
        p.data.copy_(distributed.broadcast_tensor(p.data))
    info = {"file": os.path.abspath(os.path.join(out, stem + ".pt")), "learned": True, "config": asdict(config),
            "source_checkpoint_sha256": model_sha256, "dataset": source.root, "input_size": list(input_size),
            "history": history, "learn_seconds": time.perf_counter() - start}
    if distributed.is_main():
        save_generator(info["file"], generator, config, input_size, source_checkpoint_sha256=model_sha256,
                       dataset=source.root)
    return generator, info
