"""Evaluate any re-ID model clean and under attack: the one evaluation path of the toolkit.

`evaluate_robustness(model, dataset_folder, attacks=[...], ...)` takes any `torch.nn.Module`
that maps images in [0, 1] of shape (B, 3, H, W) to features (B, D) (normalising inside),
extracts the clean query / gallery features once, runs every requested attack through
`reid.evaluation.attack_loop.attack_split`, writes results.json (and, on request, features, adversarial
images and pictures) into `out`, and returns the results.json dict. With `transfer_to`
(checkpoints), the same adversarial images are also evaluated on each of those models
(`reid.evaluation.transfer`). `gen_adv.py` is the command-line layer over `run_evaluation`: it loads a
checkpoint (or calls a user's model factory, `model_from_factory`) and passes its options.
"""

import numbers
import os
from dataclasses import asdict

import numpy as np
import torch

from reid.attacks import (ATTACKS, GALLERY_GOALS, OPTIMISERS, UNIVERSAL_ATTACKS, check_budget, resolve_step,
                          universal_plan)
from reid.data import build_transforms, eval_loader, load_dataset
from reid.defences import InputDefence
from reid.evaluation.attack_loop import attack_split, chain
from reid.evaluation.checks import CHECKS, file_checks, gradient_free_check, model_checks, print_warnings
from reid.evaluation.features import extract_features
from reid.evaluation.options import (OPTION_NAMES, check_options, default_out, eps_label, eps_text, eps_values,
                                     file_label, python_options)
from reid.evaluation.outputs import ImageSaver, clear_outputs, versions, write_features, write_json
from reid.evaluation.pictures import Pictures
from reid.evaluation.report import budget_rows, entries, ers_entry, worst_entry, write_report
from reid.evaluation.splits import Split, split_metrics
from reid.evaluation.tables import goal_table, metrics_table, side_by_side
from reid.evaluation.transfer import (TransferFeatures, clean_arrays, extract_target_features, load_targets,
                                      surrogate_ensemble)
from reid.evaluation.universal import obtain_generator, obtain_uap
from reid.metrics import pairwise_distance, summarize_runs
from reid.models import check_feature_model, check_materialised
from reid.runtime import (ReidError, amp, check_input_dir, check_number, check_writable_dir, distributed,
                          resolve_device, run_lock, seed_everything)


def run_attack(opts, name, eps, model, loaders, query, gallery, data, out, device, picked, transform, arrays,
               delta=None, label=None, targets=()):
    """`-n` runs of one attack at budget `eps`; returns its results.json entry and, per run,
    the per-query values of `evaluate_rank` (the worst case's candidates). `delta`: the UAP's
    delta, or MisRank's generator;
    `label`: the name of its files and of its transfer entries (default `name`). Each run's
    adversarial images also go through the transfer `targets` (their runs are appended)."""
    label = label or name
    spec = ATTACKS.get(name)
    max_iter = opts.queries if spec is not None and spec.gradient_free else opts.max_iter
    step = resolve_step(opts.step, eps, opts.max_iter, opts.norm)
    on_gallery = opts.gallery or (spec is not None and spec.side == "gallery")
    target, other = (gallery, query) if on_gallery else (query, gallery)
    loader = loaders[target.name]
    metric = "cosine" if opts.cosine else "euclidean"
    runs, stats, per_query = [], [], []
    for run in range(opts.nb_repeat):  # a run that drew nothing at random (a delta, IFGSM...) is run once
        first = run == 0
        saver = ImageSaver(out, label, target, data, eps, opts.norm) if first and opts.save_images else None
        pictures = (Pictures(out, label, query, gallery, picked, transform, query_attacked=not on_gallery)
                    if first and picked else None)
        transfer = TransferFeatures(targets, target.name, opts.cosine, loader) if targets else None
        generator = torch.Generator().manual_seed(opts.seed * 1000003 + run)
        attack = name
        if name in UNIVERSAL_ATTACKS:
            attack = universal_plan(name, target.feats, target.pids, delta, eps, opts.seed * 1000003 + run)
        adv_feats, st = attack_split(model, loader, target, attack, guides=other if opts.cross_attack else None,
                                     single=opts.single, cosine=opts.cosine, eps=eps, step=step,
                                     max_iter=max_iter, generator=generator, device=device,
                                     weighting=opts.guide_weights, norm=opts.norm,
                                     ranked_against=other if spec is not None and spec.uses_gallery else None,
                                     rank_k=opts.rank_k, rank_m=opts.rank_m, rank_w=opts.rank_w,
                                     restarts=restarts_of(spec, opts), eot=opts.eot,
                                     diversity=opts.input_diversity, smoothing=opts.translation_invariance,
                                     on_batch=chain(saver, pictures, transfer))
        if saver is not None:  # every image saved: the folder loses its .partial
            saver.finish()
        adv = {"gallery_feats" if on_gallery else "query_feats": adv_feats}
        metrics, values = split_metrics(query, gallery, metric, per_query=True, **adv)
        runs.append(metrics)
        per_query.append(values)
        stats.append(st)
        if transfer is not None:
            transfer.record(name, eps, metric)
        if first:
            arrays[f"{target.name}_features_adv_{label}"] = adv_feats.cpu().numpy()
            arrays.update(transfer.arrays(label) if transfer is not None else {})
        if pictures is not None:
            pictures.gather()
            qf = adv.get("query_feats", query.feats)
            gf = adv.get("gallery_feats", gallery.feats)
            pictures.write(pairwise_distance(query.feats, gallery.feats, metric).cpu(),
                           pairwise_distance(qf, gf, metric).cpu())
        # restarts, a random model, input diversity: new draws
        random = st["random"] or restarts_of(spec, opts) > 1 or opts.eot > 1 or (spec is not None and
                                                                                 opts.input_diversity > 0)
        if not random and opts.nb_repeat > 1:
            print(f"note: {label} draws nothing at random here, so its -n {opts.nb_repeat} runs would be the same: "
                  "run once")
            break
    entry = {**summarize_runs(runs), "runs": runs,
             "max_perturbation": max(s["max_perturbation"] for s in stats),
             "attack_seconds": float(np.mean([s["attack_seconds"] for s in stats])),
             "images_attacked": stats[0]["images_attacked"], "fallback_images": stats[0]["fallback_images"],
             "iterations": stats[0]["iterations"], "target": target.name, "eps": eps, "step": step,
             "embedding_shift": float(np.mean([s["embedding_shift"] for s in stats])),
             **optimiser_record(spec, stats[0]["iterations"], opts),
             **({"deterministic": True} if len(runs) < opts.nb_repeat else {})}
    if "goal" in stats[0] and stats[0]["goal"]:  # a targeted attack's own metrics, clean and attacked
        goal_runs = [s["goal"] for s in stats]
        entry["goal"] = {"name": spec.goal, "clean": summarize_runs([s["goal_clean"] for s in stats])["mean"],
                         **summarize_runs(goal_runs), "runs": goal_runs}
        if spec.goal in GALLERY_GOALS:
            entry["goal"]["queries_per_image"] = opts.rank_w
        elif spec.goal in ("QA+", "QA-", "SPQA+"):
            entry["goal"]["candidates_per_query"] = opts.rank_m
    return entry, per_query


def restarts_of(spec, opts):
    """--restarts of an attack: one-step FGSM and the universal perturbations run once."""
    return opts.restarts if spec is not None and spec.optimiser != "fgsm" else 1


def optimiser_record(spec, iterations, opts):
    """How a per-image attack was run, for results.json: its optimiser, whether it knows the
    gallery and needs gradients, restarts and EOT, and its cost per attacked image (forward +
    backward passes, or queries: forward passes of a gradient-free attack)."""
    if spec is None:  # a universal perturbation or noise: added, no optimiser
        return {}
    record = {"optimiser": spec.optimiser, "uses_gallery": spec.uses_gallery, "gradient_free": spec.gradient_free,
              "restarts": restarts_of(spec, opts), "eot": opts.eot, "input_diversity": opts.input_diversity,
              "translation_invariance": opts.translation_invariance}
    cost = iterations * record["restarts"] * opts.eot
    if spec.gradient_free:  # every attacked image spends the whole budget (no success criterion)
        record["queries"] = {"per_image": cost, "mean": float(cost), "median": float(cost)}
    else:
        record["gradient_passes"] = cost
    if OPTIMISERS[spec.optimiser].own_step:
        record["step"] = None  # APGD's own schedule (2 eps, halved), Square's windows: --step is not used
    return record


def run_evaluation(model, dataset_folder, opts, input_size, device, *, model_sha256=None, config=None):
    """`_run_evaluation` (below) holding the lock of `opts.out`: one run at a time writes a folder."""
    with run_lock(os.path.join(opts.out, ".reid-run.lock"), f"--out {opts.out}", enabled=distributed.is_main()):
        return _run_evaluation(model, dataset_folder, opts, input_size, device, model_sha256=model_sha256,
                               config=config)


def _run_evaluation(model, dataset_folder, opts, input_size, device, *, model_sha256=None, config=None):
    """The evaluation of `model` (on `device`, in eval mode) on a dataset, with checked
    `opts` (an `Options`, `opts.out` set). `config`: extra entries of results.json's
    config (e.g. the checkpoint's). Runs every attack at every budget of `opts.eps`; with
    more than one candidate (attacks x runs) adds the worst case per query at each budget
    (`reid.evaluation.report`), and with a sweep or a worst case writes robustness.csv / .png. Writes
    and returns the results.json dict.

    Under torchrun (``reid.runtime.distributed``) every process runs it: features and attacks are
    shared out and gathered, metrics computed by rank 0, which alone writes (per-batch
    adversarial images excepted: each process saves those it made). ``opts.amp``: the model
    in bfloat16 autocast (``reid.runtime.amp``, CUDA only)."""
    out = opts.out
    budgets = eps_values(opts.eps, opts.norm)
    sweep = len(budgets) > 1
    for eps in budgets if opts.attack else ():  # an L2 radius against this input size's diameter
        check_budget(eps, opts.step, opts.max_iter, norm=opts.norm, input_size=input_size)
    if opts.surrogates:  # the attacked model is the ensemble: every number below is the ensemble's
        model, surrogates, model_sha256 = surrogate_ensemble(model, opts.surrogates, input_size, device, model_sha256)
        config = {**(config or {}), "surrogates": surrogates, "ensemble_sha256": model_sha256}
    model = amp.wrap(model, opts.amp, device)
    if opts.input_defence:  # evaluated as the user deploys it: every pass goes through the transformation
        model = InputDefence(model, opts.input_defence, opts.bpda)
    seed_everything(opts.seed)
    data = load_dataset(dataset_folder, opts.dataset)
    height, width = input_size
    metric = "cosine" if opts.cosine else "euclidean"
    targets = load_targets(opts.transfer_to, (height, width), device)  # a bad checkpoint stops the run now
    removed = clear_outputs(out, keep=(opts.uap, opts.generator, dataset_folder, *opts.transfer_to, *opts.surrogates))
    if removed:
        print(f"note: {out} held an earlier run's outputs, removed: {', '.join(removed)}")

    added = {}  # (name, eps) -> (a delta or a generator, its results.json record): loaded or learned first
    for name, obtain, stem in (("UAP", obtain_uap, "uap"), ("MisRank", obtain_generator, "generator")):
        for eps in budgets if name in opts.attack else ():
            os.makedirs(out, exist_ok=True)
            added[name, eps] = (*obtain(opts, eps, model, data, (height, width), device, out, model_sha256,
                                        stem=eps_label(stem, eps) if sweep else stem), stem)

    tf = build_transforms(height, width, train=False)
    loaders = {name: eval_loader(getattr(data, name), tf, opts.batch_size, opts.workers)
               for name in ("query", "gallery")}
    splits = {}
    for name, loader in loaders.items():
        feats, pids, camids = extract_features(model, loader, device, f"{name} features", opts.cosine)
        splits[name] = Split(name, feats, pids, camids, getattr(data, name))
    query, gallery = splits["query"], splits["gallery"]
    clean = split_metrics(query, gallery, metric)
    extract_target_features(targets, data, loaders, opts, device, metric)
    probe = next(iter(loaders["query"]))[0][:64].to(device)
    warnings = model_checks(model, probe, opts.eot, with_gradient=bool(opts.attack), seed=opts.seed)
    gradient_free = {n for n in opts.attack if n in ATTACKS and ATTACKS[n].gradient_free}

    os.makedirs(out, exist_ok=True)
    describe = getattr(model, "config", None)
    config = {**asdict(opts), "dataset_folder": dataset_folder, **(config or {}),
              "model": describe() if callable(describe) else type(model).__name__,
              "input_size": [height, width], "dataset_root": data.root, "metric": metric, "device": str(device),
              "processes": distributed.world_size(), "threads": torch.get_num_threads(),
              "versions": versions()}
    if targets:
        config["transfer_targets"] = {t.label: t.info for t in targets}
    results = {"config": config, "complete": False, "clean": clean, "attacks": {}}  # True once all is written
    if targets:
        results["transfer"] = {t.label: t.results(sweep) for t in targets}
    arrays = {"query_features": query.feats.cpu().numpy(), "query_pids": query.pids, "query_camids": query.camids,
              "gallery_features": gallery.feats.cpu().numpy(), "gallery_pids": gallery.pids,
              "gallery_camids": gallery.camids, **clean_arrays(targets)}

    picked = []
    if opts.visualize:
        rng = np.random.default_rng(opts.seed)
        picked = rng.choice(len(query.pids), min(opts.visualize, len(query.pids)), replace=False).tolist()
    target = "gallery" if opts.gallery else "query"
    worst, scores = [], []
    for eps in budgets:
        candidates = []
        for name in opts.attack:
            delta, info, key = added.get((name, eps), (None, None, None))
            label = eps_label(name, eps) if sweep else file_label(name)
            entry, per_query = run_attack(opts, name, eps, model, loaders, query, gallery, data, out, device, picked,
                                          tf, arrays, delta, label=label, targets=targets)
            if key is not None:
                entry[key] = info  # "uap" / "generator"
            if sweep:
                results["attacks"].setdefault(name, {"by_eps": []})["by_eps"].append(entry)
            else:
                results["attacks"][name] = entry
            if targets:
                results["transfer"] = {t.label: t.results(sweep) for t in targets}
            if not (name in ATTACKS and ATTACKS[name].targeted):  # targeted attacks: their own metric, no worst case
                candidates += [(name, run, values) for run, values in enumerate(per_query)]
            write_json(os.path.join(out, "results.json"), results)  # after each attack: nothing lost
            moved = "".join(f", on {os.path.basename(t.label)} "
                            f"{100 * np.mean([r['mAP'] for r in t.runs[name, eps]]):.2f}" for t in targets)
            goal = "".join(f", {key} {100 * entry['goal']['clean'][key]:.1f} -> {100 * value:.1f}"
                           for key, value in entry.get("goal", {}).get("mean", {}).items())
            print(f"{name}{f' at eps {eps_text(eps, opts.norm)}' if sweep else ''}: mAP "
                  f"{100 * entry['mean']['mAP']:.2f}{moved}{goal} ({entry['images_attacked']} images attacked, "
                  f"{entry['attack_seconds']:.1f} s)")
        at_eps = {n: (e["by_eps"][-1] if sweep else e) for n, e in results["attacks"].items() if n in opts.attack}
        ers = ers_entry(at_eps, eps)
        if ers is not None:
            scores.append(ers)
            results["ers"] = {"by_eps": scores} if sweep else ers
        warnings += gradient_free_check(candidates, gradient_free, eps, eps_text(eps, opts.norm))
        if len(candidates) > 1:
            worst.append(worst_entry(candidates, eps, target))
            results["worst"] = {"by_eps": worst} if sweep else worst[0]
            for t in targets:  # the same rule on each target, over the same candidates
                t.worst.append(worst_entry(t.candidates(opts.attack, eps), eps, target))
                results["transfer"][t.label] = t.results(sweep)
    if opts.save_features:
        write_features(out, arrays)
    warnings += file_checks(results)
    results["checks"] = {"ran": list(CHECKS), "warnings": warnings}
    results["complete"] = True
    write_json(os.path.join(out, "results.json"), results)
    print(data.summary())
    print_tables(results, opts, budgets if opts.attack else budgets[:1], target, targets)
    print_warnings(warnings)
    print(f"results -> {os.path.join(out, 'results.json')}")
    if sweep or worst:
        write_robustness(results, out)
    return results


def print_tables(results, opts, budgets, target, targets):
    """The metrics at each budget, and white-box beside each transfer target's."""
    metric = results["config"]["metric"]
    for eps in budgets:
        rows = [(n, m) for n, m in budget_rows(results, eps) if not (n in ATTACKS and ATTACKS[n].targeted)]
        print(f"\n{target} attacks, eps {eps_text(eps, opts.norm)}, {opts.max_iter} iterations, "
              f"{opts.nb_repeat} run(s), {metric} distance")
        print(metrics_table(rows))
        goals = [(n, e["goal"]) for n, value in results["attacks"].items() for e in entries(value)
                 if e.get("eps") == eps and "goal" in e and ATTACKS[n].targeted]
        if goals:
            print("\ntargeted attacks (docs/targeted.md), their own metric, clean -> attacked, in %")
            print(goal_table(goals))
        for ers in entries(results["ers"]) if "ers" in results else ():
            if ers["eps"] == eps:
                print(f"ERS {ers['score']:.1f} (RobRank's empirical robustness score, 100 = unmoved; "
                      + ", ".join(f"{k} {v:.1f}" for k, v in ers["components"].items()) + ")")
        if targets:
            columns = [("white-box", dict(rows))] + [
                (os.path.basename(t.label), dict(budget_rows(results["transfer"][t.label], eps))) for t in targets]
            print("\nwhite-box (this model) and transfer (the same adversarial images on each --transfer-to model), "
                  "mAP / rank-1 in %")
            print(side_by_side([n for n, _ in rows], columns))
    for t in targets if targets else ():
        if t.clean_native is not None:
            (h, w), (sh, sw) = t.input_size, t.resize_from
            print(f"note: {os.path.basename(t.label)} reads {h}x{w}: every image reaches it as this model's {sh}x{sw} "
                  f"input resized, its clean baseline too ({100 * t.clean['mAP']:.2f} mAP); from the original images "
                  f"at its own size its clean mAP is {100 * t.clean_native['mAP']:.2f}")


@distributed.main_only
def write_robustness(results, out):
    """robustness.csv / robustness.png (`reid.evaluation.report`), written once."""
    print(f"report -> {', '.join(write_report(results, out))}")


def evaluate_robustness(model, dataset_folder, attacks=(), dataset="market", eps=None, input_size=(256, 128),
                        out=None, **options):
    """Evaluate any `torch.nn.Module` mapping images in [0, 1] (B, 3, H, W) to features (B, D)
    clean and under `attacks` (names of gen_adv.py's `-a`), on the dataset at
    `dataset_folder` (layout `dataset`), at `input_size` (H, W), at budget `eps` (a number,
    or a list for a sweep; default 5/255, or 0.5 with norm="l2"). `options`: the other
    gen_adv.py options by their long names with underscores (see `Options`: step, norm,
    max_iter, nb_repeat, seed, device, save_images, uap, transfer_to, ...). Writes results.json into `out` (default
    attacks/<model class>-<dataset>-<time>/) and returns its dict."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ReidError(f"evaluate_robustness: unknown option {unknown[0]!r}; expected one of "
                        f"{', '.join(OPTION_NAMES)}")
    if not isinstance(model, torch.nn.Module):
        raise ReidError(f"evaluate_robustness: model must be a torch.nn.Module, got {type(model).__name__}")
    what = "evaluate_robustness"
    if not isinstance(attacks, (str, list, tuple)):
        raise ReidError(f"{what}: attacks={attacks!r}: expected an attack name or a list of names")
    opts = check_options(python_options(what, attack=attacks, dataset=dataset, eps=eps, out=out, **options))
    if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in input_size)):
        raise ReidError(f"{what}: input_size={input_size!r}: expected (height, width), two integers")
    height, width = (int(v) for v in input_size)
    for flag, value in (("height", height), ("width", width)):
        check_number(f"input_size {flag}", value, 16)
    if not isinstance(dataset_folder, (str, os.PathLike)):
        raise ReidError(f"{what}: dataset_folder={dataset_folder!r}: expected a path")
    dataset_folder = os.fspath(dataset_folder)
    check_input_dir(dataset_folder, "dataset folder")
    opts.out = opts.out or default_out(type(model).__name__, opts.dataset)
    check_writable_dir(opts.out, "out")
    device = resolve_device(opts.device)
    check_materialised(model, what)
    model.to(device).eval()
    check_feature_model(model, (height, width), device, what, needs_grad=bool(opts.attack))
    return run_evaluation(model, dataset_folder, opts, (height, width), device)
