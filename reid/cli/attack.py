"""Evaluate a re-ID checkpoint clean and under metric attacks (mAP / CMC / mINP).

The command-line layer over `reid.evaluation` (the evaluation itself, also callable from Python
with any model as `reid.evaluate_robustness`).

Reference usage:
  python gen_adv.py models/checkpoints DATA model.th --dataset market --classif -a FNA --eps 5
A budget sweep with the worst case per query (robustness.csv / robustness.png):
  python gen_adv.py models/checkpoints DATA model.th -a FGSM IFGSM SMA FNA --eps 1 2 4 8 --step auto
Several processes (GPUs, machines): torchrun --nproc_per_node N gen_adv.py ... (see README).
Your own model (FUNCTION() returns a module mapping images in [0, 1] to features (B, D)):
  python gen_adv.py DATA --model-factory my_models:build --weights w.pth --height 256 --width 128 -a FNA
Transfer (attacks crafted on model.th, also evaluated on the other checkpoints):
  python gen_adv.py models/checkpoints DATA model.th -a FNA SMA --transfer-to models/checkpoints/dn.th
"""

import argparse
import os

from reid.attacks import ATTACKS, SUITES, UAP_LOSSES, UNIVERSAL_ATTACKS, WEIGHTINGS
from reid.data import DATASET_NAMES
from reid.evaluation import OPTION_NAMES, Options, check_options, default_out, run_evaluation
from reid.models import check_feature_model, check_input_size, check_materialised, load_model, model_from_factory
from reid.runtime import (ReidError, amp, check_input_dir, check_number, check_writable_dir, cli_main, distributed,
                          file_sha256)

DEFAULTS = Options()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] CHECKPOINTS_FOLDER DATASET_FOLDER FILENAME\n"
              "       %(prog)s [options] DATASET_FOLDER --model-factory MODULE:FUNCTION [--weights FILE]")
    p.add_argument("positionals", nargs="*", metavar="CHECKPOINTS_FOLDER DATASET_FOLDER FILENAME",
                   help="the checkpoint FILENAME inside CHECKPOINTS_FOLDER and the dataset; with --model-factory "
                        "only DATASET_FOLDER")
    own = p.add_argument_group("your own model instead of a checkpoint")
    own.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                     help="FUNCTION() of MODULE (importable from the current directory or PYTHONPATH) returns a "
                          "torch.nn.Module mapping images in [0, 1] (B, 3, H, W) to features (B, D), normalising "
                          "inside; input size --height / --width (default 256x128)")
    own.add_argument("--weights", metavar="FILE", help="state dict loaded into it (weights_only=True; strict)")
    p.add_argument("--transfer-to", nargs="+", default=[], metavar="CKPT",
                   help="also evaluate the same adversarial images on these checkpoints (transfer; each rebuilt "
                        "from the checkpoint, images resized to its input size if it differs)")
    p.add_argument("--surrogates", nargs="+", default=[], metavar="CKPT",
                   help="attack the ensemble of the model and these checkpoints: the mean of their guided losses, "
                        "each model's features L2-normalised; results are the ensemble's, --transfer-to the "
                        "held-out models' (docs/transfer.md)")
    p.add_argument("--dataset", default=DEFAULTS.dataset, choices=DATASET_NAMES)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--classif", dest="kind", action="store_const", const="classif",
                      help="expect a classification checkpoint (checked; read from the checkpoint if omitted)")
    kind.add_argument("--triplet", dest="kind", action="store_const", const="triplet",
                      help="expect a triplet checkpoint (checked)")
    p.add_argument("-e", "--embedding_size", type=int, help="expected triplet embedding size (checked)")
    p.add_argument("--cosine", action="store_true", help="L2-normalised features in the attack loss and ranking")
    p.add_argument("-a", "--attack", nargs="+", default=["clean"], metavar="NAME",
                   help=f"one or several of {', '.join((*ATTACKS, *UNIVERSAL_ATTACKS))}, clean, all (the "
                        "papers' attacks) or standard (the fixed suite: APGD_SMA APGD_FNA APGD_RANK SQUARE_RANK at "
                        "100 iterations and 1000 queries; docs/attacks.md) or ers (RobRank's targeted ranking "
                        "profile and its robustness score, PGD 32 x 3/255 at eps 8 unless given; "
                        "docs/targeted.md); default clean")
    p.add_argument("--eps", type=float, nargs="+", metavar="EPS",
                   help="budget(s): L-inf in /255 (default 5), L2 a radius in [0, 1] pixel units of the whole "
                        "image (default 0.5); several values run every attack at each (a sweep)")
    p.add_argument("--step", metavar="STEP|auto",
                   help="step of iterative attacks in the budget's units, or auto = 2.5 eps / max_iter "
                        "(default: 1/255 for linf, auto for l2)")
    p.add_argument("--norm", default=DEFAULTS.norm, metavar="{linf,l2}",
                   help="threat model of the per-image attacks: linf (default) or l2")
    p.add_argument("--max_iter", type=int, default=DEFAULTS.max_iter, help="iterations of iterative attacks (default 15)")
    p.add_argument("--queries", type=int, default=DEFAULTS.queries,
                   help="query budget per image of the gradient-free SQUARE_* / BANDITS_* / RGF_* attacks "
                        "(default 1000)")
    p.add_argument("--restarts", type=int, default=DEFAULTS.restarts,
                   help="runs per image of every iterative attack, the best kept by its loss (default 1)")
    p.add_argument("--eot", type=int, default=DEFAULTS.eot, metavar="K",
                   help="expectation over transformation: each gradient the mean over K forward passes, for "
                        "models that are random at inference (default 1)")
    p.add_argument("--rank-k", type=int, default=DEFAULTS.rank_k, metavar="K",
                   help="the *RANK attacks push the nearest true match behind the K-th non-match (default 1)")
    p.add_argument("--input-diversity", type=float, default=DEFAULTS.input_diversity, metavar="P",
                   help="transfer technique of the gradient attacks: each optimisation pass resizes-and-pads an image "
                        "with probability P (default 0: off; docs/transfer.md)")
    p.add_argument("--translation-invariance", type=int, default=DEFAULTS.translation_invariance, metavar="K",
                   help="transfer technique of the gradient attacks: the gradient smoothed by a K x K Gaussian "
                        "(odd K >= 3; default 0: off; docs/transfer.md)")
    p.add_argument("--rank-m", type=int, default=DEFAULTS.rank_m, metavar="M",
                   help="QA+ / QA-: gallery candidates per query (default 1)")
    p.add_argument("--rank-w", type=int, default=DEFAULTS.rank_w, metavar="W",
                   help="CA+ / CA-: queries per attacked gallery image (default 1)")
    p.add_argument("--input-defence", metavar="KIND:VALUE",
                   help="evaluate the model behind an input transformation: bitdepth:B, jpeg:Q or resize-pad:R")
    p.add_argument("--bpda", action="store_true",
                   help="the input defence's backward pass replaced by the identity (BPDA, straight-through)")
    p.add_argument("--single", action="store_true", help="FGSM/IFGSM/MIFGSM: one random same-identity guide")
    p.add_argument("--guide-weights", default=DEFAULTS.guide_weights, choices=WEIGHTINGS,
                   help="pushing-guide weights: reference (default: each 1, plus the own feature padded "
                        "to the largest identity, as the paper's code) or mean (sharing a total of 1)")
    p.add_argument("--gallery", action="store_true", help="attack the gallery instead of the queries")
    p.add_argument("--cross_attack", action="store_true", help="take the guides from the other set")
    p.add_argument("-n", "--nb_repeat", type=int, default=DEFAULTS.nb_repeat, help="runs per attack (new random guides / starts)")
    p.add_argument("-b", "--batch_size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--gpu", type=int, help="alias of --device cuda:N")
    p.add_argument("--device", default=DEFAULTS.device, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--height", type=int, help="input height (default: the checkpoint's, else 256)")
    p.add_argument("--width", type=int, help="input width (default: the checkpoint's, else 128)")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="data loading processes (default 4)")
    p.add_argument("--out", help="output folder (default attacks/<checkpoint>-<dataset>-<time>/)")
    p.add_argument("--save-features", action="store_true", help="write features.npz and features.mat")
    p.add_argument("--save-images", action="store_true", help="write the adversarial images as PNG")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (features, attack passes)")
    p.add_argument("--visualize", type=int, default=DEFAULTS.visualize, metavar="K",
                   help="ranking pictures for K queries and a perturbation grid per attack")
    uap = p.add_argument_group("added perturbations (-a UAP / noise / MisRank; docs/universal.md, docs/transfer.md)")
    uap.add_argument("--uap", metavar="FILE", help="evaluate this uap.pt instead of learning one")
    uap.add_argument("--generator", metavar="FILE", help="-a MisRank: evaluate this generator.pt instead of "
                     "training one against the model")
    uap.add_argument("--generator-epochs", type=int, help="-a MisRank: epochs of the generator's training on the "
                     "training split (default 5)")
    uap.add_argument("--uap-loss", choices=UAP_LOSSES,
                     help="objective when learning (default centroid, MetaAttack's)")
    uap.add_argument("--uap-epochs", type=int, help="epochs over the source training split (default 5)")
    uap.add_argument("--uap-step", type=float, help="first MI-SGD step in /255 (default eps / 10)")
    uap.add_argument("--uap-source", metavar="DIR", help="learn on this dataset's training split (default: the evaluated one)")
    uap.add_argument("--uap-source-kind", choices=DATASET_NAMES, help="its layout (default: --dataset)")
    uap.add_argument("--meta-dataset", metavar="DIR", help="meta-learn with this (virtual) dataset's training split")
    uap.add_argument("--meta-dataset-kind", choices=DATASET_NAMES, help="its layout (default: --dataset)")
    args = p.parse_intermixed_args(argv)  # positionals may come between options, as before
    split_positionals(args)
    for flag, value, low in (("--height", args.height, 16), ("--width", args.width, 16),
                             ("-e", args.embedding_size, 1)):
        check_number(flag, value, low)  # None (not given) passes
    checked = check_options(Options.from_namespace(args))
    for name in OPTION_NAMES:  # canonical names, budgets, defaults filled in, a suite's fixed settings
        setattr(args, name, getattr(checked, name))
    if args.checkpoints_folder is not None:
        check_input_dir(args.checkpoints_folder, "checkpoints_folder")
    check_input_dir(args.dataset_folder, "dataset folder")
    return args


def split_positionals(args):
    """CHECKPOINTS_FOLDER DATASET_FOLDER FILENAME, or DATASET_FOLDER alone with --model-factory."""
    given = args.positionals
    if args.model_factory is not None:
        if len(given) != 1:
            raise ReidError(f"--model-factory: expected one positional argument, the dataset folder "
                            f"({len(given)} given)")
        for flag, value in (("--classif", args.kind == "classif"), ("--triplet", args.kind == "triplet"),
                            ("-e", args.embedding_size is not None)):
            if value:
                raise ReidError(f"{flag}: describes a checkpoint; not used with --model-factory")
        args.checkpoints_folder, args.dataset_folder, args.filename = None, given[0], None
        return
    if args.weights is not None:
        raise ReidError("--weights: only used with --model-factory (a checkpoint holds its weights)")
    if len(given) != 3:
        known = {n.lower() for n in (*ATTACKS, *UNIVERSAL_ATTACKS, *SUITES, "all", "clean")}
        taken = [a for a in args.attack for n in str(a).split(",") if n.strip().lower() not in known]
        hint = ""
        if taken and len(given) < 3:  # nargs="+" options take every word that follows them
            hint = (f"; -a took {' '.join(taken)} as attack names: give the positionals first, or end -a's "
                    "list with -- before them")
        raise ReidError(f"expected CHECKPOINTS_FOLDER DATASET_FOLDER FILENAME ({len(given)} positional "
                        f"argument(s) given), or DATASET_FOLDER with --model-factory MODULE:FUNCTION{hint}")
    args.checkpoints_folder, args.dataset_folder, args.filename = given


def main(argv=None):
    args = parse_args(argv)
    opts = Options.from_namespace(args)  # checked by parse_args
    if args.model_factory is not None:
        stem = args.model_factory.partition(":")[2]
    else:
        stem = os.path.splitext(os.path.basename(args.filename))[0]
    device = distributed.setup(args.device, args.gpu)  # under torchrun: this process's device
    amp.check(args.amp, device)
    opts.out = args.out or distributed.broadcast_object(default_out(stem, args.dataset))  # rank 0's time
    if distributed.is_main():  # one process probes (several would race on the same folders)
        check_writable_dir(opts.out, "--out")  # now, not after extracting every feature
    config = {"gpu": args.gpu, "height": args.height, "width": args.width}
    if args.model_factory is not None:
        model = model_from_factory(args.model_factory, args.weights)
        check_materialised(model, f"--model-factory {args.model_factory}")
        model.to(device).eval()
        height, width = args.height or 256, args.width or 128
        check_feature_model(model, (height, width), device, f"--model-factory {args.model_factory}",
                            needs_grad=bool(opts.attack))
        sha256 = file_sha256(args.weights) if args.weights else None
        config.update(model_factory=args.model_factory, weights=args.weights and os.path.abspath(args.weights),
                      weights_sha256=sha256)
    else:
        ckpt_path = os.path.join(args.checkpoints_folder, args.filename)
        model, ckpt = load_model(ckpt_path, args.kind, args.embedding_size)
        sha256 = file_sha256(ckpt_path)
        model.to(device).eval()
        height, width = ckpt.get("input_size") or (256, 128)
        height, width = args.height or height, args.width or width
        check_input_size(model, (height, width), ckpt_path)
        config.update(checkpoints_folder=args.checkpoints_folder, filename=args.filename, kind=args.kind,
                      embedding_size=args.embedding_size, checkpoint=ckpt_path, checkpoint_sha256=sha256,
                      checkpoint_epoch=ckpt.get("epoch"))
    return run_evaluation(model, args.dataset_folder, opts, (height, width), device, model_sha256=sha256,
                          config=config)


def run():
    """The console command (`reid-attack` after `pip install .`), as `python gen_adv.py`."""
    cli_main(main)


if __name__ == "__main__":
    run()
