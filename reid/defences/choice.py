"""train.py's choice of adversarial training (``--defence`` / ``--adv``, ``--free``): its flags
checked, its objective built, its record in the checkpoints and its resume."""

from reid.attacks import DEFAULT_EPS
from reid.defences.free import FreeObjective, check_free
from reid.defences.goat import goat_config
from reid.defences.triplet import TRIPLET_DEFENCES, TripletDefence, check_triplet_defence, triplet_config
from reid.defences.universal import check_defence_flags
from reid.runtime import ReidError

# GOAT's guide flags: (flag, argument, its value when not given)
GOAT_GUIDE_FLAGS = (("--sma", "sma", False), ("--push", "push", None), ("--pull", "pull", False),
                    ("--adv-guide-weights", "adv_guide_weights", "reference"))


def choose_defence(args):
    """Resolve train.py's defence flags in place (``args.defence``, ``args.goat``, ``args.triplet``);
    a one-line ReidError when they clash."""
    if args.adv and args.defence not in (None, "goat"):
        raise ReidError(f"--adv and --defence {args.defence}: choose one defence (--adv is --defence goat)")
    args.defence = "goat" if args.adv else args.defence
    check_defence_flags(args.uap_adv, args.defence, args.uap_eps, args.meta_dataset, args.meta_dataset_kind,
                        args.meta_lr)
    check_free(args.free, args.adv_eps, args.defence, args.uap_adv, args.adv_norm, args.adv_step)
    if args.defence is None and args.free is None and (
            args.adv_norm != "linf" or args.adv_eps is not None or args.adv_step is not None):
        raise ReidError("--adv-norm / --adv-eps / --adv-step: the budget of a defence's attack; "
                        "give --defence (or --adv)")
    if args.defence not in (None, "goat"):
        given = [flag for flag, name, unset in GOAT_GUIDE_FLAGS if getattr(args, name) != unset]
        if given:
            raise ReidError(f"--defence {args.defence} {given[0]}: GOAT's guide options, for --defence goat "
                            + ("(EST's guide is the image's own feature)" if args.defence == "est" else ""))
    args.triplet = None
    if args.defence in TRIPLET_DEFENCES:
        check_triplet_defence(args.defence, args.id_batch, args.num_instances, args.batch_size)
        args.triplet = triplet_config(args.defence, args.adv_eps, args.adv_iters, args.adv_step, args.adv_norm)
    args.goat = goat_config(args.defence in ("goat", "est"), args.sma or args.defence == "est", args.push, args.pull,
                            args.id_batch, args.adv_eps, args.adv_iters, args.adv_step, args.adv_guide_weights,
                            args.adv_norm)


def check_distributed_defence(args, world):
    """What a defence needs of torchrun's processes: whole identities per process (ACT, HM), one
    process (``--free``)."""
    if args.triplet:
        check_triplet_defence(args.defence, args.id_batch, args.num_instances, args.batch_size, world)
    if args.free and world > 1:
        raise ReidError("--free: not available under torchrun (the perturbation is one process's state); "
                        "train with one process")


def defence_record(args):
    """The checkpoints' ``defence`` settings (without the state): the name, ACT's / HM's config."""
    if args.defence is None:
        return None
    return {"name": args.defence, **(args.triplet.settings() if args.triplet else {})}


def free_settings(args):
    return {"replays": args.free, "eps": args.adv_eps or DEFAULT_EPS["linf"]} if args.free else None


def defended_objective(objective, args, ckpt=None):
    """``objective`` wrapped by the defence that is an objective (ACT, HM, ``--free``), its state
    taken from ``ckpt`` when resuming."""
    if args.triplet:
        objective = TripletDefence(objective, args.triplet)
        state = ((ckpt or {}).get("defence") or {}).get("state")
        if state is not None:
            objective.load_state(state)
    if args.free:
        objective = FreeObjective(objective, args.free, free_settings(args)["eps"])
        print(f"free adversarial training: each batch {args.free} times, L-inf {objective.eps:g}/255")
        if (ckpt or {}).get("free") is not None:
            objective.load_state(ckpt["free"])
    return objective


def defence_states(objective, args):
    """The checkpoints' ``defence`` and ``free`` entries (settings and state)."""
    record = defence_record(args)
    return {"free": objective.state() if args.free else None,
            "defence": None if record is None else {**record, "state": objective.state() if args.triplet else None}}


def check_resumed_defence(ckpt, source, args, goat_state):
    """A resume continues the recorded defence: a one-line ReidError when the flags ask for another.
    ``goat_state``: the GOAT settings the flags ask for (a dict, or None)."""
    saved = ckpt.get("goat", goat_state)
    if saved is not None and "weighting" not in saved:  # written before weightings existed: mean
        saved = {**saved, "weighting": "mean"}
    if saved is not None and "norm" not in saved:  # written before --adv-norm existed: L-inf
        saved = {**saved, "norm": "linf"}
    if saved != goat_state:
        raise ReidError(f"--resume: {source} was trained with GOAT settings {saved}, "
                        f"the flags given ask for {goat_state}")
    record = ckpt.get("free")
    saved = None if record is None else {k: record[k] for k in ("replays", "eps")}
    if saved != free_settings(args):
        raise ReidError(f"--resume: {source} was trained with --free settings {saved}, "
                        f"the flags given ask for {free_settings(args)}")
    recorded = ckpt["defence"] if "defence" in ckpt else {"name": "goat"} if ckpt.get("goat") else None
    settings = None if recorded is None else {k: v for k, v in recorded.items() if k != "state"}
    if settings != defence_record(args):
        raise ReidError(f"--resume: {source} was trained with the defence {settings}, "
                        f"the flags given ask for {defence_record(args)}")
