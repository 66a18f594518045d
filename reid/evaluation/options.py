"""The evaluation's options (gen_adv.py's flags, `evaluate_robustness`'s keywords), their checks
before any work, and how budgets are written."""

import datetime
import numbers
import os
import typing
from dataclasses import dataclass, field, fields
from typing import List, Optional, Union

from reid.attacks import (ATTACKS, DEFAULT_EPS, DEFAULT_STEP, OPTIMISERS, SUITES, UapConfig, check_attack_args,
                          check_norm, parse_step)
from reid.defences import check_bpda, parse_input_defence
from reid.evaluation.transfer import check_transfer_paths
from reid.runtime import MAX_SEED, ReidError, check_number


@dataclass
class Options:
    """Every evaluation option, named as gen_adv.py's flags (``attack`` = ``-a``,
    ``nb_repeat`` = ``-n``, ``batch_size`` = ``-b``); the defaults are the CLI's."""

    attack: List[str] = field(default_factory=list)  # attack names; [] = clean only
    dataset: str = "market"
    cosine: bool = False
    eps: Union[None, float, List[float]] = None  # one budget, or several (a sweep); None: the norm's default
    step: Union[None, float, str] = None  # a number, "auto" (2.5 eps / max_iter) or None (the norm's default)
    max_iter: int = 15
    queries: int = 1000  # the query budget per image of the gradient-free attacks (Square, Bandits, RGF)
    restarts: int = 1  # runs of every per-image attack per image, the best kept (by its loss)
    eot: int = 1  # forward passes averaged per gradient (expectation over transformation)
    rank_k: int = 1  # the ranking loss's non-match rank: the nearest true match pushed behind the k-th non-match
    rank_m: int = 1  # QA+ / QA-: candidates per query
    rank_w: int = 1  # CA+ / CA-: queries per attacked gallery image
    input_diversity: float = 0.0  # transfer: each optimisation pass resizes-and-pads an image with this probability
    translation_invariance: int = 0  # transfer: the gradient smoothed by a K x K Gaussian (0: off)
    input_defence: Optional[str] = None  # an input transformation before the model: bitdepth:B, jpeg:Q, resize-pad:R
    bpda: bool = False  # the input defence's backward replaced by the identity (straight-through)
    norm: str = "linf"  # threat model: "linf" (eps in /255) or "l2" (an L2 radius in [0, 1] pixel units)
    single: bool = False
    guide_weights: str = "reference"
    gallery: bool = False
    cross_attack: bool = False
    nb_repeat: int = 1
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    workers: int = 4
    out: Optional[str] = None
    save_features: bool = False
    save_images: bool = False
    visualize: int = 0
    uap: Optional[str] = None
    uap_loss: Optional[str] = None  # None: "centroid" (with -a UAP; refused without it, as every --uap-* flag)
    uap_epochs: Optional[int] = None  # None: 5
    uap_step: Optional[float] = None
    uap_source: Optional[str] = None
    uap_source_kind: Optional[str] = None
    meta_dataset: Optional[str] = None
    meta_dataset_kind: Optional[str] = None
    amp: bool = False
    generator: Optional[str] = None  # -a MisRank: a generator.pt evaluated as it is
    generator_epochs: Optional[int] = None  # -a MisRank: epochs of its training (None: 5)
    transfer_to: List[str] = field(default_factory=list)  # checkpoints the adversarial images are also fed to
    surrogates: List[str] = field(default_factory=list)  # checkpoints attacked with the model, as one ensemble

    @classmethod
    def from_namespace(cls, namespace):
        """The options of an argparse namespace (its other entries are ignored)."""
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)})


OPTION_NAMES = tuple(f.name for f in fields(Options))
PATH_OPTIONS = ("out", "uap", "uap_source", "meta_dataset", "generator")  # also each of transfer_to


def _kind(tp):
    """How a type of `Options` reads in an error, and a test of a value against it."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Union:
        parts = [_kind(a) for a in args if a is not type(None)]
        text = " or ".join(t for t, _ in parts) + (" or None" if type(None) in args else "")
        return text, lambda v: (v is None and type(None) in args) or any(ok(v) for _, ok in parts)
    if typing.get_origin(tp) in (list, List):
        text, ok = _kind(args[0])
        return f"a list of {text.split(' ', 1)[1]}s", lambda v: isinstance(v, (list, tuple)) and all(map(ok, v))
    return {bool: ("True or False", lambda v: isinstance(v, bool)),
            int: ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
            float: ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
            str: ("a string", lambda v: isinstance(v, str))}[tp]


def python_options(what, **given):
    """The `Options` of Python keywords (`evaluate_robustness`), checked before any work as a
    Python user writes them: paths may be `os.PathLike`, numbers numpy scalars, `attack` one
    name or a list; anything else of the wrong type is one line naming the keyword."""
    values = dict(given)
    for name in PATH_OPTIONS:
        if isinstance(values.get(name), os.PathLike):
            values[name] = os.fspath(values[name])
    for name in ("transfer_to", "surrogates"):
        if isinstance(values.get(name), (str, os.PathLike)):
            values[name] = [values[name]]
        if isinstance(values.get(name), (list, tuple)):
            values[name] = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in values[name]]
    if isinstance(values.get("attack"), str):
        values["attack"] = [values["attack"]]
    hints = typing.get_type_hints(Options)
    for name, value in values.items():
        text, ok = _kind(hints[name])
        if not ok(value):
            raise ReidError(f"{what}: {name}={value!r}: expected {text}")
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and hints[name] is int:
            values[name] = int(value)
    return Options(**values)


def eps_values(eps, norm="linf"):
    """The budgets of an ``eps`` option: a number, a list (a sweep) or None (the norm's default)."""
    if eps is None:
        return [DEFAULT_EPS[norm]]
    given = list(eps) if isinstance(eps, (list, tuple)) else [eps]
    if not given:
        raise ReidError("--eps: expected at least one budget")
    values = []
    for value in given:
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ReidError(f"--eps {value!r}: expected a number") from None
        check_number("--eps", values[-1])
    if len(set(values)) < len(values):
        raise ReidError(f"--eps {' '.join(f'{v:g}' for v in values)}: give each budget once")
    return values


def eps_text(eps, norm):
    """A budget as printed: 2/255 (L-inf) or 0.5 (L2)."""
    return f"{eps:g}/255" if norm == "linf" else f"{eps:g} (L2)"


def file_label(name):
    """An attack's name in file and variable names: QA+ -> QAplus, CA- -> CAminus (MATLAB-safe)."""
    return name.replace("+", "plus").replace("-", "minus")


def eps_label(name, eps):
    """The name of a run's files in a sweep: FNA_eps2, FNA_eps0p5, QAplus_eps8 (a MATLAB-safe variable name too)."""
    return f"{file_label(name)}_eps{eps:g}".replace(".", "p").replace("-", "m").replace("+", "")


def check_options(opts):
    """Validate every option before any heavy work; names the CLI flag in the one-line error.
    Returns the options with the attack names canonical, ``eps`` a number (one budget) or a
    list (a sweep) and ``step`` a number or "auto". An L2 radius is checked against the image
    diameter by `run_evaluation`, which knows the input size."""
    opts.norm = check_norm(opts.norm)
    opts.step = parse_step("--step", opts.step)  # finite; its range is checked with the attacks
    names = [n for a in opts.attack for n in str(a).split(",") if n.strip() and n.strip().lower() != "clean"]
    check_suites(opts, names)
    budgets = eps_values(opts.eps, opts.norm)
    opts.attack = check_attack_args(names, opts.single, budgets, opts.step, opts.max_iter, opts.norm) if names else []
    opts.eps = budgets[0] if len(budgets) == 1 else budgets  # results.json keeps its one-budget shape
    opts.step = DEFAULT_STEP[opts.norm] if opts.step is None else opts.step
    for flag, value, low in (("-n", opts.nb_repeat, 1), ("-b", opts.batch_size, 1), ("--workers", opts.workers, 0),
                             ("--visualize", opts.visualize, 0), ("--queries", opts.queries, 1),
                             ("--restarts", opts.restarts, 1), ("--eot", opts.eot, 1), ("--rank-k", opts.rank_k, 1),
                             ("--rank-m", opts.rank_m, 1), ("--rank-w", opts.rank_w, 1)):
        check_number(flag, value, low)
    check_optimiser_flags(opts)
    check_transfer_techniques(opts)
    if opts.input_defence is not None:
        kind, value = parse_input_defence(opts.input_defence)
        opts.input_defence = f"{kind}:{value:g}"
        check_bpda(kind, opts.bpda)
    elif opts.bpda:
        raise ReidError("--bpda: only used with --input-defence (it replaces the defence's backward pass)")
    check_number("--seed", opts.seed, 0, MAX_SEED)
    check_uap_flags(opts)
    check_generator_flags(opts)
    level = 1.0 if opts.norm == "linf" else 1.0 / 255  # one 8-bit step, in the budget's units
    small = [e for e in budgets if e < level - 1e-9]
    if opts.save_images and opts.attack and small:
        raise ReidError(f"--save-images: eps {eps_text(small[0], opts.norm)} is below one 8-bit level "
                        f"({eps_text(level, opts.norm)}), so a PNG would hold the clean image; drop "
                        "--save-images or use a larger --eps")
    opts.transfer_to = [str(p) for p in (opts.transfer_to or [])]
    check_transfer_paths(opts.transfer_to)
    opts.surrogates = [str(p) for p in (opts.surrogates or [])]
    check_transfer_paths(opts.surrogates, "--surrogates")
    return opts


def check_suites(opts, names):
    """``-a standard`` / ``-a ers`` fix their members' budgets: --max_iter, --queries and
    --restarts take the suite's values, and one of them changed from its default is refused (it
    would be another suite). A suite's budget and step (ers: RobRank's 8/255 and 3/255) are the
    defaults of --eps and --step, which may be given (the suite at another budget)."""
    for name in sorted({n.strip().lower() for n in names} & set(SUITES)):
        suite = SUITES[name]
        if opts.norm == "linf" and opts.eps is None and suite.eps is not None:
            opts.eps = suite.eps
        if opts.norm == "linf" and opts.step is None and suite.step is not None:
            opts.step = suite.step
        for flag, field_name, fixed in (("--max_iter", "max_iter", suite.max_iter),
                                        ("--queries", "queries", suite.queries),
                                        ("--restarts", "restarts", suite.restarts)):
            value, default = getattr(opts, field_name), Options.__dataclass_fields__[field_name].default
            if value not in (default, fixed):
                raise ReidError(f"{flag} {value}: -a {name} runs at its fixed {flag} {fixed}; drop {flag}, or name "
                                f"the attacks ({', '.join(suite.members)}) instead of {name}")
            setattr(opts, field_name, fixed)


# Optimiser flags: (flag, Options field, which attack specs use it, what those are).
OPTIMISER_FLAGS = (
    ("--queries", "queries", lambda s: s.gradient_free, "the gradient-free SQUARE_* / BANDITS_* / RGF_* attacks"),
    ("--restarts", "restarts", lambda s: s.optimiser != "fgsm", "per-image attacks except FGSM"),
    ("--eot", "eot", lambda s: True, "per-image attacks"),
    ("--rank-k", "rank_k", lambda s: s.loss == "ranking", "per-image attacks on the ranking loss (*RANK)"),
    ("--input-diversity", "input_diversity", lambda s: not s.gradient_free, "the gradient attacks"),
    ("--translation-invariance", "translation_invariance", lambda s: not s.gradient_free, "the gradient attacks"),
    ("--rank-m", "rank_m", lambda s: s.goal in ("QA+", "QA-", "SPQA+"), "the query attacks QA+ / QA- / SPQA+"),
    ("--rank-w", "rank_w", lambda s: s.goal in ("CA+", "CA-"), "the candidate attacks CA+ / CA-"),
)


def check_optimiser_flags(opts):
    """Flags of the optimisers make sense only with an attack that uses them: refused otherwise."""
    specs = {n: ATTACKS[n] for n in opts.attack if n in ATTACKS}
    for flag, field_name, used_by, users in OPTIMISER_FLAGS:
        value = getattr(opts, field_name)
        if value != Options.__dataclass_fields__[field_name].default and not any(map(used_by, specs.values())):
            raise ReidError(f"{flag} {value}: no attack of -a uses it ({users})")
    for name, spec in specs.items():
        per_step = OPTIMISERS[spec.optimiser].queries_per_step
        if spec.gradient_free and opts.queries < per_step:
            raise ReidError(f"--queries {opts.queries}: -a {name} spends {per_step} queries a step; "
                            f"give at least {per_step}")
    ranking = [n for n, s in specs.items() if s.uses_gallery and s.side is None]
    if ranking and opts.gallery:
        raise ReidError(f"--gallery: {ranking[0]} attacks the queries' ranking against the clean gallery; "
                        "run it without --gallery")
    if opts.cross_attack and specs and all(s.loss != "guided" for s in specs.values()):
        raise ReidError(f"--cross_attack: {', '.join(specs)} use no guides (their loss reads the other split); "
                        "drop --cross_attack")


def check_transfer_techniques(opts):
    """--input-diversity P in [0, 1]; --translation-invariance K: 0 (off) or an odd kernel size >= 3."""
    p, k = opts.input_diversity, opts.translation_invariance
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ReidError(f"--input-diversity {p}: expected a probability in [0, 1]")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not (k == 0 or (k >= 3 and k % 2 == 1)):
        raise ReidError(f"--translation-invariance {k}: expected 0 (off) or an odd kernel size >= 3")
    opts.input_diversity, opts.translation_invariance = float(p), int(k)


def default_out(stem, dataset):
    """attacks/<stem>-<dataset>-<date>-<time to the microsecond>: two runs started in the same
    second get two folders."""
    return os.path.join("attacks", f"{stem}-{dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}")


def check_uap_flags(opts):
    """Universal-perturbation options make sense only with -a UAP; their values are checked now."""
    given = [flag for flag, value in (("--uap", opts.uap), ("--uap-source", opts.uap_source),
                                      ("--meta-dataset", opts.meta_dataset)) if value]
    learning = [flag for flag, value in (("--uap-loss", opts.uap_loss), ("--uap-epochs", opts.uap_epochs),
                                         ("--uap-step", opts.uap_step), ("--uap-source-kind", opts.uap_source_kind),
                                         ("--meta-dataset-kind", opts.meta_dataset_kind)) if value is not None]
    if "UAP" not in opts.attack:
        if given or learning:
            raise ReidError(f"{(given + learning)[0]}: only used with -a UAP (it would change nothing)")
    opts.uap_loss = "centroid" if opts.uap_loss is None else opts.uap_loss
    opts.uap_epochs = 5 if opts.uap_epochs is None else opts.uap_epochs
    if "UAP" not in opts.attack:
        return
    if opts.uap and len(given) > 1:
        raise ReidError(f"--uap and {given[1]}: a saved perturbation is evaluated as it is, not learned again")
    for eps in eps_values(opts.eps, opts.norm):
        uap_config(opts, eps)


def check_generator_flags(opts):
    """--generator / --generator-epochs: only with -a MisRank; a file to load, or epochs to train."""
    given = [flag for flag, value in (("--generator", opts.generator), ("--generator-epochs", opts.generator_epochs))
             if value is not None]
    if "MisRank" not in opts.attack and given:
        raise ReidError(f"{given[0]}: only used with -a MisRank (it would change nothing)")
    if len(given) == 2:
        raise ReidError("--generator and --generator-epochs: a saved generator is evaluated as it is, not trained "
                        "again")
    if opts.generator is not None and not os.path.isfile(opts.generator):
        raise ReidError(f"--generator {opts.generator}: no such file")
    opts.generator_epochs = 5 if opts.generator_epochs is None else opts.generator_epochs
    check_number("--generator-epochs", opts.generator_epochs, 1)


def uap_config(opts, eps):
    """The UapConfig of the options at budget `eps` (checked before any heavy work)."""
    return UapConfig(loss=opts.uap_loss, eps=eps, epochs=opts.uap_epochs, step=opts.uap_step, seed=opts.seed)
