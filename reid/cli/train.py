"""Train a re-ID model (classification or triplet), clean or adversarially trained (GOAT, EST, ACT, HM, UAP).

Reference usage (the paper's README):
  python train.py DATA --dataset duke --lr 0.00035 -wd 5e-4 -n 60 -f model.th -b 32 --classif --pretrained
  python train.py DATA --dataset duke --lr 0.00035 -wd 5e-4 -n 60 -f goat.th -b 32 --classif --pretrained \
      --adv --push --pull        # GOAT (run sort_dataset.py DATA first)
  python train.py DATA -f hm.th --triplet --id_batch --defence hm   # or est, act (docs/training.md)
  python train.py DATA -f uap_def.th --classif --uap-adv online   # against universal perturbations
Several processes (GPUs, machines): torchrun --nproc_per_node N train.py ... (see README).
  python train.py DATA -f dn.th --classif --arch densenet121       # another backbone (or timm:<name>)
"""

import argparse
import hashlib
import os
import time
from dataclasses import asdict

import torch

from reid.attacks import WEIGHTINGS, parse_step
from reid.data import DATASET_NAMES, build_transforms, eval_loader, load_dataset, train_loader
from reid.defences import (DEFENCES, Goat, GuidePool, MetaObjective, UapDefence, check_distributed_defence,
                           check_resumed_defence, choose_defence, defence_config, defence_states,
                           defended_objective, meta_batch_size, meta_seed, saved_settings)
from reid.evaluation import evaluate, format_metrics
from reid.models import (ARCH_NAMES, DEFAULT_ARCH, build_model, check_arch, check_input_size, load_model,
                         pretrained_weights_path, rng_state, save_checkpoint, set_rng_state)
from reid.runtime import (MAX_SEED, ReidError, amp, check_input_dir, check_number, check_writable_dir, cli_main,
                          distributed, run_lock, seed_everything)
from reid.training import (Objective, append_jsonl, check_log, keep_log_epochs, lr_schedule, resume_point,
                           train_epoch)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_folder", help="dataset folder, or a root holding it under its usual name")
    p.add_argument("--dataset", default="market", choices=DATASET_NAMES)
    p.add_argument("--lr", type=float, default=3.5e-4, help="Adam learning rate (default 3.5e-4)")
    p.add_argument("-wd", "--weight_decay", type=float, default=5e-4)
    p.add_argument("-n", "--n_epoch", type=int, default=60, help="number of epochs (default 60)")
    p.add_argument("-f", "--filename", default="model.th", help="checkpoint file name (default model.th)")
    p.add_argument("-b", "--batch_size", type=int, default=32)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--classif", dest="kind", action="store_const", const="classif",
                      help="classification network, cross-entropy (default)")
    kind.add_argument("--triplet", dest="kind", action="store_const", const="triplet",
                      help="embedding network, batch-hard triplet loss")
    p.add_argument("--soft_margin", "--soft", action="store_true", help="triplet: softplus instead of margin 10")
    p.add_argument("--arch", help=f"backbone: {', '.join(ARCH_NAMES)} (default resnet50; with --resume: "
                                  "the checkpoint's)")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (offline: see README)")
    p.add_argument("--pretrained-path", help="ImageNet weights file of the backbone (implies --pretrained)")
    p.add_argument("--id_batch", action="store_true", help="P x K identity batches (K = -ni)")
    p.add_argument("-ni", "--num_instances", type=int, default=4, help="K, images per identity in a batch")
    p.add_argument("-e", "--embedding_size", type=int, help="triplet embedding size (default 2048)")
    p.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/<name>-last.th")
    p.add_argument("--gpu", type=int, help="alias of --device cuda:N")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--workers", type=int, default=4, help="data loading processes (default 4)")
    p.add_argument("--checkpoint-dir", default=os.path.join("models", "checkpoints"))
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and at the last)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (forward passes, GOAT's attack)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun: SyncBatchNorm over the processes (GPUs)")
    goat = p.add_argument_group("adversarial training: GOAT, EST, ACT, HM (see docs/training.md)")
    goat.add_argument("--defence", choices=DEFENCES,
                      help="goat (the paper's, = --adv), est (embedding-shifted triplet: GOAT's --sma), act "
                           "(anti-collapse triplet), hm (hardness manipulation); act and hm need --id_batch")
    goat.add_argument("--adv", action="store_true", help="train on adversarial batches (GOAT): --defence goat")
    goat.add_argument("--free", type=int, metavar="M",
                      help="free adversarial training (Shafahi et al.): each batch replayed M times, the "
                           "perturbation (L-inf --adv-eps, default 5) ascending the training loss from the same "
                           "backward pass; without --defence")
    goat.add_argument("--sma", action="store_true", help="pushing guide: the image's own feature (SMA)")
    goat.add_argument("--push", type=int, nargs="?", const=4, metavar="N",
                      help="N pushing guides of the same identity from sorted/train (default 4)")
    goat.add_argument("--pull", action="store_true", help="plus the furthest other-identity feature of the batch")
    goat.add_argument("--adv-norm", default="linf", metavar="{linf,l2}",
                      help="threat model of the attack: linf (default) or l2")
    goat.add_argument("--adv-eps", type=float,
                      help="budget: L-inf in /255 (default 5), L2 radius in [0, 1] pixel units (default 0.5)")
    goat.add_argument("--adv-iters", type=int, default=7, help="PGD iterations (default 7)")
    goat.add_argument("--adv-step", metavar="STEP|auto",
                      help="PGD step in the budget's units, or auto = 2.5 eps / iters (default: 1/255 for "
                           "linf, auto for l2)")
    goat.add_argument("--adv-guide-weights", default="reference", choices=WEIGHTINGS,
                      help="pushing-guide weights, as gen_adv.py's --guide-weights (default reference)")
    uap = p.add_argument_group("defence against universal perturbations (see reid/defences/universal.py)")
    uap.add_argument("--uap-adv", metavar="FILE|online",
                     help="append a perturbed random half to every batch: the delta of a uap.pt "
                          "(gen_adv.py -a UAP), or 'online', learned along (one MI-SGD step per batch)")
    uap.add_argument("--uap-eps", type=float, help="online delta's L-inf budget in /255 (default 8)")
    uap.add_argument("--meta-dataset", metavar="DIR",
                     help="meta-learning branch: triplet loss on this dataset's P x K batches after an inner step")
    uap.add_argument("--meta-dataset-kind", choices=DATASET_NAMES, help="its layout (default: --dataset)")
    uap.add_argument("--meta-lr", type=float, help="the inner SGD step's learning rate (default: --lr)")
    args = p.parse_args(argv)
    args.kind = args.kind or "classif"
    if args.kind == "classif":  # what does nothing for the chosen model is refused, not ignored
        for flag, given in (("--soft_margin", args.soft_margin), ("-e", args.embedding_size is not None)):
            if given:
                raise ReidError(f"{flag}: a triplet option (the classification network's features are its "
                                "backbone's); drop it or use --triplet")
    args.embedding_size = 2048 if args.embedding_size is None else args.embedding_size
    for flag, value, low in (("-n", args.n_epoch, 1), ("-b", args.batch_size, 1), ("--eval-every", args.eval_every, 1),
                             ("--height", args.height, 16), ("--width", args.width, 16), ("-e", args.embedding_size, 1),
                             ("-ni", args.num_instances, 1), ("--workers", args.workers, 0)):
        check_number(flag, value, low)
    check_number("--seed", args.seed, 0, MAX_SEED)
    check_number("--lr", args.lr, 0, strict=True)
    check_number("-wd", args.weight_decay, 0)
    check_number("--adv-eps", args.adv_eps)  # finite; the ranges are checked with the other GOAT flags
    args.adv_step = parse_step("--adv-step", args.adv_step)
    if args.id_batch and args.batch_size % args.num_instances:
        raise ReidError(f"-b {args.batch_size}: with --id_batch, expected a multiple of -ni {args.num_instances}")
    if args.kind == "triplet" and args.id_batch and args.batch_size == args.num_instances:
        raise ReidError(f"-b {args.batch_size} -ni {args.num_instances}: one identity per batch, so the triplet "
                        "loss has no negative and is 0 at every step; use -b of at least 2 x -ni")
    if not os.path.basename(args.filename):
        raise ReidError(f"-f {args.filename!r}: expected a file name")
    if args.arch is not None:
        args.arch = check_arch(args.arch)
    check_input_dir(args.dataset_folder, "dataset folder")
    choose_defence(args)
    if args.meta_dataset is not None:
        check_input_dir(args.meta_dataset, "--meta-dataset")
        args.meta_dataset_kind = args.meta_dataset_kind or args.dataset
        args.meta_lr = args.lr if args.meta_lr is None else args.meta_lr
        meta_batch_size(args.batch_size, args.num_instances)
    return args


# What a run's numbers depend on, besides the checkpoint: (argument, flag, when it matters).
RUN_FLAGS = (("kind", "--classif / --triplet", None), ("lr", "--lr", None), ("weight_decay", "-wd", None),
             ("batch_size", "-b", None), ("soft_margin", "--soft_margin", lambda a: a.kind == "triplet"),
             ("id_batch", "--id_batch", None),
             ("num_instances", "-ni", lambda a: a.id_batch or a.meta_dataset is not None),
             ("embedding_size", "-e", lambda a: a.kind == "triplet"), ("height", "--height", None),
             ("width", "--width", None), ("seed", "--seed", None), ("dataset", "--dataset", None),
             ("workers", "--workers", None), ("amp", "--amp", None))


def train_fingerprint(data):
    """SHA-256 of the training list (file name, identity, camera of every image): which data a run trains on."""
    listing = "\n".join(f"{os.path.basename(s.path)} {pid} {s.camid}"
                         for s, pid in zip(data.train, (data.train_pids[s.pid] for s in data.train)))
    return hashlib.sha256(listing.encode()).hexdigest()


def check_resumed_run(args, ckpt, last_path, data):
    """A resume continues the recorded run exactly, or stops: one line naming the flag (or the
    data) that differs from what `last_path` recorded. Entries a checkpoint lacks (written by
    an older version, or the paper's) are not checked. -n, --eval-every, --device and the
    folders may change: they do not change the numbers of the epochs to come."""
    recorded = ckpt.get("args") or {}
    for name, flag, matters in RUN_FLAGS:
        if name not in recorded or (matters is not None and not matters(args)):
            continue
        old, new = recorded[name], getattr(args, name)
        if old != new:
            raise ReidError(f"--resume: {last_path} was trained with {flag} {old}, the flags given ask for {new} "
                            "(a resume continues the recorded run: give its flags, or start another -f)")
    if "train_pids" in ckpt and list(ckpt["train_pids"]) != list(data.train_pids):
        raise ReidError(f"--resume: {last_path} was trained on other identities than those of {args.dataset_folder} "
                        f"({len(ckpt['train_pids'])} recorded, {data.num_train_pids} here, not the same pids)")
    if "train_fingerprint" in ckpt and ckpt["train_fingerprint"] != train_fingerprint(data):
        raise ReidError(f"--resume: {last_path} was trained on other training images than those of "
                        f"{args.dataset_folder} (the same identities, another image list)")


def checkpoint_paths(args):
    stem, ext = os.path.splitext(args.filename)
    ext = ext or ".th"
    d = args.checkpoint_dir
    return (os.path.join(d, stem + ext), os.path.join(d, f"{stem}-last{ext}"), os.path.join(d, f"{stem}.log.jsonl"))


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(args.device, args.gpu)  # under torchrun: this process's device
    amp.check(args.amp, device)
    distributed.check_training(device, args.batch_size, args.num_instances if args.id_batch else None,
                               args.sync_bn, args.uap_adv, args.meta_dataset)
    check_distributed_defence(args, distributed.world_size())
    seed_everything(args.seed + distributed.rank())  # torchrun: each process its own augmentation / GOAT draws
    best_path, last_path, log_path = checkpoint_paths(args)
    if distributed.is_main():  # one process probes (several would race on the same folders)
        check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")  # now, not after the first epoch
        if os.path.dirname(args.filename):
            check_writable_dir(os.path.dirname(best_path), "-f")
    for path in (best_path, last_path, log_path):
        if os.path.isdir(path):
            raise ReidError(f"-f {args.filename}: {path} is a folder")
    stem = os.path.splitext(os.path.basename(best_path))[0]
    lock = os.path.join(os.path.dirname(best_path), f".{stem}.lock")  # one run at a time writes these files
    with run_lock(lock, f"-f {args.filename} in {os.path.dirname(best_path) or '.'}", enabled=distributed.is_main()):
        train_run(args, device, best_path, last_path, log_path)


def train_run(args, device, best_path, last_path, log_path):
    """The run of `main`, holding the lock of its checkpoint name."""
    if (args.pretrained or args.pretrained_path) and not args.resume:  # missing weights: say so before any work
        pretrained_weights_path(args.arch or DEFAULT_ARCH, args.pretrained_path)
    defence = None
    if args.uap_adv is not None:  # a bad uap.pt stops the run now
        uap_config, delta = defence_config(args.uap_adv, (args.height, args.width), args.uap_eps, args.meta_dataset,
                                           args.meta_dataset_kind, args.meta_lr)
        defence = UapDefence(uap_config, delta, seed=args.seed)

    data = load_dataset(args.dataset_folder, args.dataset)
    print(data.summary())
    if data.num_train_pids < 2:
        raise ReidError(f"{args.dataset_folder}: {data.num_train_pids} training identity; re-ID training needs at "
                        "least 2 (nothing would be learned)")
    if not args.id_batch and args.batch_size > len(data.train):
        raise ReidError(f"-b {args.batch_size}: more than the {len(data.train)} training images "
                        "(batches are full-size, so not one step would be taken)")
    pool = GuidePool.from_dataset(data, args.goat.num_push) if args.goat and args.goat.push == "pool" else None
    goat_state = asdict(args.goat) if args.goat else None
    if args.goat:
        print(("EST = " if args.defence == "est" else "") + args.goat.describe())
    if args.triplet:
        print(args.triplet.describe())
    meta = None
    if defence is not None:
        print(defence.config.describe())
        if args.meta_dataset is not None:
            meta = load_dataset(args.meta_dataset, args.meta_dataset_kind)
            print(f"meta dataset: {meta.summary()}")
            identities = meta_batch_size(args.batch_size, args.num_instances) // args.num_instances
            if meta.num_train_pids < identities:
                raise ReidError(f"--meta-dataset {args.meta_dataset}: {meta.num_train_pids} training identities, "
                                f"fewer than the {identities} of a P x K meta batch (-b / -ni)")
    train_tf = build_transforms(args.height, args.width, train=True)
    test_tf = build_transforms(args.height, args.width, train=False)
    query_loader = eval_loader(data.query, test_tf, args.batch_size, args.workers)
    gallery_loader = eval_loader(data.gallery, test_tf, args.batch_size, args.workers)

    start_epoch, best_map = 0, -1.0
    if args.resume:
        source = resume_point(last_path, best_path, log_path)  # -last, or a first epoch's best
        model, ckpt = load_model(source, args.kind, args.embedding_size if args.kind == "triplet" else None,
                                 arch=args.arch)
        check_input_size(model, (args.height, args.width), source)
        if model.num_classes not in (None, data.num_train_pids):
            raise ReidError(f"{source} was trained on {model.num_classes} identities, "
                            f"{args.dataset_folder} has {data.num_train_pids}")
        check_resumed_run(args, ckpt, source, data)
        if distributed.is_main():
            check_log(log_path)  # a bad line stops the run now, not after an epoch
        wanted = defence.config.settings() if defence else None
        record = ckpt["uap_adv"] if "uap_adv" in ckpt else None if "goat" in ckpt else wanted  # "goat": ours
        if saved_settings(record) != wanted:
            raise ReidError(f"--resume: {source} was trained with --uap-adv settings {saved_settings(record)}, "
                            f"the flags given ask for {wanted}")
        if defence is not None and record is not None:
            defence.load_state(record)
        check_resumed_defence(ckpt, source, args, goat_state)
    else:
        model = build_model(args.kind, data.num_train_pids, args.embedding_size, args.pretrained,
                            args.pretrained_path, arch=args.arch or DEFAULT_ARCH, input_size=(args.height, args.width))
    args.arch = model.arch  # recorded with the other flags in the checkpoints' args
    model.to(device)
    net = amp.wrap(model, args.amp, device)
    if args.sync_bn and not distributed.active():
        print("note: --sync-bn does nothing in a single process")
    trained = distributed.wrap(net, device, args.sync_bn)  # DistributedDataParallel under torchrun
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = lr_schedule(args.kind, optimizer)
    if args.resume:
        start_epoch, best_map = ckpt["epoch"] + 1, ckpt.get("best_map", ckpt["map"])
        if ckpt.get("optim"):
            optimizer.load_state_dict(ckpt["optim"])
        if "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        else:  # a reference checkpoint: replay the schedule up to its epoch
            for _ in range(start_epoch):
                scheduler.step()
        if "rng" in ckpt:
            set_rng_state(distributed.own_rng_state(ckpt))
        print(f"resuming {source} at epoch {start_epoch} (best mAP so far {best_map:.4f})")
        if start_epoch >= args.n_epoch:
            print(f"note: {source} has already done its {start_epoch} epochs; raise -n to train further")
    elif os.path.exists(last_path):
        print(f"note: {last_path} exists and will be overwritten (use --resume to continue it)")

    objective = Objective(args.kind, soft_margin=args.soft_margin)
    prepare_batch = Goat(args.goat) if args.goat else defence
    objective = defended_objective(objective, args, ckpt if args.resume else None)
    if meta is not None:
        meta_batch = meta_batch_size(args.batch_size, args.num_instances)

        def meta_batches(epoch, cycle):
            return train_loader(meta.train, train_tf, meta_batch, args.num_instances, args.workers,
                                seed=meta_seed(args.seed, epoch, cycle))

        objective = MetaObjective(objective, defence, args.meta_lr, meta_batches)
    num_instances = args.num_instances if args.id_batch else None
    fingerprint = train_fingerprint(data)
    metrics = None
    for epoch in range(start_epoch, args.n_epoch):
        t0 = time.perf_counter()
        loader = train_loader(data.train, train_tf, args.batch_size, num_instances, args.workers,
                              seed=args.seed * 100003 + epoch, companions=pool,
                              shard=(distributed.rank(), distributed.world_size()))
        hooks = [h for h in (defence, objective) if hasattr(h, "start_epoch")]
        for hook in hooks:
            hook.start_epoch(epoch)
        stats = train_epoch(trained, loader, optimizer, objective, device, epoch,
                            prepare_batch=prepare_batch)
        stats = distributed.average(stats)
        for hook in hooks:
            stats.update(hook.epoch_stats())
        scheduler.step()
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats,
                  "train_seconds": time.perf_counter() - t0}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.n_epoch:
            metrics = evaluate(net, query_loader, gallery_loader, device)  # every process extracts its share
            record.update(metrics)
            print(f"epoch {epoch}: loss {stats['loss']:.4f}  {format_metrics(metrics)}")
        else:
            print(f"epoch {epoch}: loss {stats['loss']:.4f}")
        extra = {"scheduler": scheduler.state_dict(), "input_size": [args.height, args.width],
                 "args": {**vars(args), "goat": goat_state, "triplet": args.triplet and args.triplet.settings()},
                 "dataset": data.name,
                 "train_pids": data.train_pids, "train_fingerprint": fingerprint, "goat": goat_state,
                 "uap_adv": defence.state() if defence else None,
                 **defence_states(objective, args)}
        current_map = metrics["mAP"] if metrics else -1.0
        rng = distributed.rng_record(rng_state())  # every process's RNG state, for an exact --resume
        if not distributed.is_main():
            continue  # rank 0 alone writes the checkpoints and the log
        new_best = bool(metrics) and current_map > best_map
        if new_best:
            best_map = current_map
            record["saved_best"] = True
        if epoch == start_epoch:  # the log continues the checkpoint: a fresh run starts an empty one,
            if not args.resume and os.path.exists(last_path):  # with no -last of another run beside it
                os.remove(last_path)
            keep_log_epochs(log_path, epoch)
        append_jsonl(log_path, record)  # before the checkpoints: a stop in between, --resume redoes the epoch
        if new_best:
            save_checkpoint(best_path, model, current_map, epoch, optimizer, best_map=best_map, **rng, **extra)
        save_checkpoint(last_path, model, current_map, epoch, optimizer, best_map=best_map, **rng, **extra)
    best = f"best mAP {best_map:.4f} -> {best_path}" if os.path.isfile(best_path) else "no best checkpoint yet"
    print(f"{best}; last -> {last_path}; log -> {log_path}")


def run():
    """The console command (`reid-train` after `pip install .`), as `python train.py`."""
    cli_main(main)


if __name__ == "__main__":
    run()
