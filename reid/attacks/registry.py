"""The attack table: every metric attack is a guide rule joined to an optimiser.

An attack is not code of its own but one row of ``ATTACKS``: which pushing guides, which
pulling guide, which advertorch optimiser, and whether it has a single-guide form. Adding an
attack built from existing pieces is one entry here; a new piece is one rule in
``guides.py`` or one function in ``optimisers.py``.

Pushing rules (moved away from):
  ``"others"``  every other image of the same identity in the guide set (``single``: one of
                them at random); identities with no other image fall back to ``"self"``.
  ``"self"``    the image's own clean feature; always starts from a uniform random point of
                the eps-ball, because the gradient of ||f(x) - f(x)||^2 is zero at x.
Pulling rules (moved towards):
  ``"opposite"``           -f(x), the opposite of the image's own clean feature (ODFA, as in
                           Zheng et al. 2018: the feature moves *towards* -f(x); the
                           reference code maximised the distance to -f(x) instead, which
                           moves it the wrong way).
  ``"furthest_centroid"``  the centroid of the other identity cluster furthest from f(x).
  ``"random_centroid"``    the centroid of another identity drawn at random.
"""

import math
from dataclasses import dataclass, replace
from typing import Optional

from .guides import PULL_RULES, PUSH_RULES
from .optimisers import OPTIMISERS
from .targeted import GALLERY_GOALS, GOALS, TARGETED_GOALS

from reid.runtime import ReidError


@dataclass(frozen=True)
class AttackSpec:
    """One attack: guide rule (``push``, ``pull``) + ``optimiser`` + ``loss``; ``single`` = has
    a single-guide form (one random pushing guide instead of all of them). ``loss``:
    ``"guided"`` (the one guided loss over the guides), ``"ranking"`` (the ranking loss over
    the gallery, ``loss.RankingLoss``: no guides, the attacker knows the gallery) or
    ``"targeted"`` (a deep-ranking goal over the gallery, ``targeted.TargetedLoss``: ``goal``).
    ``paper``: one of the papers' attacks, which ``all`` names."""

    push: Optional[str]
    pull: Optional[str]
    optimiser: str
    single: bool
    description: str
    loss: str = "guided"
    paper: bool = False
    goal: Optional[str] = None  # the ranking goal of a "targeted" loss (``targeted.py``)

    def iterations(self, max_iter):
        """Passes the optimiser makes per image: forward+backward for gradient attacks (FGSM is
        one step whatever max_iter), forward only (queries) for gradient-free ones."""
        return OPTIMISERS[self.optimiser].iterations(max_iter)

    @property
    def gradient_free(self):
        return OPTIMISERS[self.optimiser].gradient_free

    @property
    def uses_gallery(self):
        """Whether the attacker must know the gallery (a stronger threat model than the guides
        of the attacked set alone)."""
        return self.loss in ("ranking", "targeted")

    @property
    def side(self):
        """The split the attack perturbs when it is not the user's choice: the candidate
        attacks (CA) perturb gallery images; None: the queries, or the gallery with --gallery."""
        return "gallery" if self.goal in GALLERY_GOALS else None

    @property
    def targeted(self):
        """Whether the attack aims at chosen targets (scored by its own metric, not a candidate
        of the per-query worst case)."""
        return self.goal in TARGETED_GOALS


PAPER_ATTACKS = {
    "FGSM": AttackSpec("others", None, "fgsm", True,
                       "one signed-gradient step of size eps away from same-identity images", paper=True),
    "IFGSM": AttackSpec("others", None, "pgd", True,
                        "iterative FGSM away from same-identity images", paper=True),
    "MIFGSM": AttackSpec("others", None, "momentum", True,
                         "momentum iterative FGSM (decay 1.0) away from same-identity images", paper=True),
    "SMA": AttackSpec("self", None, "pgd", False,
                      "self metric attack: away from the image's own feature, random start", paper=True),
    "ODFA": AttackSpec(None, "opposite", "pgd", False,
                       "opposite-direction feature attack: towards -f(x)", paper=True),
    "FNA": AttackSpec("others", "furthest_centroid", "pgd", False,
                      "furthest-negative attack: away from same identity, towards the "
                      "furthest identity centroid", paper=True),
    "FNA_pull": AttackSpec(None, "furthest_centroid", "pgd", False,
                           "towards the furthest identity centroid only", paper=True),
    "FNA_rand": AttackSpec("others", "random_centroid", "pgd", False,
                           "FNA with the centroid of a random other identity", paper=True),
}

RANK = AttackSpec(None, None, "pgd", False, "PGD on the ranking loss: the nearest true match pushed "
                  "behind the k-th nearest non-match of the gallery (the attacker knows the gallery)",
                  loss="ranking")

_GOAL_TEXT = {
    "QA+": "query attack: M gallery images of other identities raised to the top of the query's ranking",
    "QA-": "query attack: M of the query's true matches pushed to the bottom of its ranking",
    "SPQA+": "semantics-preserving QA+: the candidates raised while the query's nearest true matches stay on top",
    "CA+": "candidate attack: a gallery image raised in the rankings of W queries of other identities",
    "CA-": "candidate attack: a gallery image pushed down the rankings of W queries it truly matches",
    "TMA": "targeted mismatch: the query's feature onto that of a random image of another identity",
    "LTM": "learning-to-mis-rank: the nearest true match pushed behind the furthest non-match",
    "GTM": "greedy top-1 mis-ranking: towards the nearest item of an identity other than the top-1's",
    "GTT": "greedy top-1 translocation: the clean top-1 item pushed down the ranking",
}
TARGETED = {goal: AttackSpec(None, None, "pgd", False, f"{text} (knows the gallery)", loss="targeted", goal=goal)
            for goal, text in _GOAL_TEXT.items()}

# APGD_<X>: the guides of X with APGD as the optimiser (MIFGSM's momentum is APGD's own);
# SQUARE_<X> / BANDITS_<X> / RGF_<X>: the loss of X with a query-based optimiser (blackbox.py).
QUERY_ATTACKS = {"square": "Square (gradient-free)", "bandits": "Bandits-TD (gradient estimated from queries)",
                 "rgf": "RGF (gradient estimated from queries)"}
ATTACKS = {
    **PAPER_ATTACKS,
    **{f"APGD_{name}": replace(spec, optimiser="apgd", paper=False, description=f"APGD on {name}'s guides")
       for name, spec in PAPER_ATTACKS.items() if spec.optimiser == "pgd"},
    "RANK": RANK,
    "APGD_RANK": replace(RANK, optimiser="apgd", description="APGD on the ranking loss (knows the gallery)"),
    **{f"{label.upper()}_{name}": replace(spec, optimiser=label, paper=False, description=f"{text} {what}")
       for label, text in QUERY_ATTACKS.items()
       for name, spec, what in (("SMA", PAPER_ATTACKS["SMA"], "away from the image's own feature"),
                                ("FNA", PAPER_ATTACKS["FNA"], "on FNA's guides"),
                                ("RANK", RANK, "on the ranking loss (knows the gallery)"))},
    **TARGETED,
}

ATTACK_NAMES = tuple(name for name, spec in ATTACKS.items() if spec.paper)
"""The papers' attacks: what ``-a all`` runs."""


@dataclass(frozen=True)
class Suite:
    """A fixed ensemble and its fixed configuration (``-a standard``): the members run at
    ``max_iter`` gradient passes (APGD), ``queries`` (Square) and ``restarts``, whatever
    the flags say, so that two numbers of the suite are comparable."""

    members: tuple
    max_iter: int
    queries: int
    restarts: int
    eps: Optional[float] = None  # the budget (/255) and step when --eps / --step are not given
    step: Optional[float] = None


SUITES = {"standard": Suite(("APGD_SMA", "APGD_FNA", "APGD_RANK", "SQUARE_RANK"), max_iter=100, queries=1000,
                            restarts=1),
          # RobRank's rob224 profile (the empirical robustness score): PGD, 32 steps of 3/255 in 8/255
          "ers": Suite(("CA+", "CA-", "QA+", "QA-", "TMA", "SMA", "LTM", "GTM", "GTT"), max_iter=32, queries=1000,
                       restarts=1, eps=8.0, step=3.0)}

# Perturbations added to the images rather than optimised per image (``universal.py``):
# named explicitly, never part of ``all`` (a UAP is learned on a training split first).
UNIVERSAL_ATTACKS = {
    "UAP": "universal adversarial perturbation: one delta learned on a training split (MI-SGD)",
    "noise": "uniform random sign noise of the same budget (the baseline a UAP must beat)",
    "MisRank": "the Mis-Ranking generator: a network trained against a surrogate perturbs each image in one "
               "forward pass",
}


def _check_table():
    for name, spec in ATTACKS.items():
        assert spec.push in PUSH_RULES + (None,), (name, spec.push)
        assert spec.pull in PULL_RULES + (None,), (name, spec.pull)
        assert bool(spec.push or spec.pull) == (spec.loss == "guided"), name
        assert spec.loss in ("guided", "ranking", "targeted"), name
        assert (spec.goal in GOALS) == (spec.loss == "targeted"), name
        assert spec.optimiser in OPTIMISERS, (name, spec.optimiser)
        assert not spec.single or spec.push == "others", name


_check_table()


def _valid_names():
    return (f"{', '.join((*ATTACKS, *UNIVERSAL_ATTACKS))} (or all: the papers' attacks; standard: the suite; "
            "ers: RobRank's profile)")


def canonical_name(name):
    """The table's spelling of an attack name (case-insensitive), or ReidError listing them."""
    for known in (*ATTACKS, *UNIVERSAL_ATTACKS):
        if str(name).lower() == known.lower():
            return known
    raise ReidError(f"unknown attack {name!r}; valid attacks: {_valid_names()}")


def get_attack_spec(name):
    return ATTACKS[canonical_name(name)]


def resolve_attack_names(names):
    """Attack names from the CLI (a string or a list, comma-separated names allowed; ``all``
    = the papers' attacks, ``standard`` / ``ers`` = the members of that ``SUITES`` entry), canonical,
    deduplicated, in the order given."""
    if isinstance(names, str):
        names = [names]
    names = [part.strip() for name in names for part in str(name).split(",") if part.strip()]
    out = []
    for name in names:
        lower = str(name).lower()
        expanded = (ATTACK_NAMES if lower == "all" else SUITES[lower].members if lower in SUITES
                    else [canonical_name(name)])
        out.extend(n for n in expanded if n not in out)
    if not out:
        raise ReidError(f"no attack given; valid attacks: {_valid_names()}")
    return out


def check_single(name, single):
    name = canonical_name(name)
    if single and not (name in ATTACKS and ATTACKS[name].single):
        with_single = ", ".join(n for n, s in ATTACKS.items() if s.single)
        raise ReidError(f"--single: attack {name} has no single-guide form "
                        f"(only {with_single} do)")
    return name


NORMS = ("linf", "l2")
DEFAULT_EPS = {"linf": 5.0, "l2": 0.5}
"""The budget when none is given: L-inf 5/255; L2 a radius of 0.5 in [0, 1] pixel units."""
DEFAULT_STEP = {"linf": 1.0, "l2": "auto"}
"""The step when none is given: L-inf 1/255 (the reference code's); L2 the ``auto`` rule."""
AUTO_STEP_FACTOR = 2.5


def auto_step(eps, max_iter):
    """``--step auto``: 2.5 eps / max_iter in the budget's own units, for both norms.

    Madry et al.'s rule (ICLR 2018): the iterations can travel 2.5 radii, enough to cross the
    ball from a random start and still move along its boundary, whatever eps and max_iter a
    sweep uses (a fixed 1/255 would cross a 1/255 ball in one step and need 16 steps for 16/255).
    """
    return AUTO_STEP_FACTOR * float(eps) / int(max_iter)


def image_diameter(input_size):
    """The largest L2 distance between two images of ``input_size`` (H, W) in [0, 1]: sqrt(3 H W)."""
    height, width = input_size
    return math.sqrt(3 * int(height) * int(width))


def check_norm(norm, flag="--norm"):
    if norm not in NORMS:
        raise ReidError(f"{flag} {norm}: expected one of {', '.join(NORMS)}")
    return norm


def parse_step(flag, value):
    """A step flag's value as given on the command line: None, ``"auto"`` or a finite number."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None if value is None else "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReidError(f"{flag} {value}: expected a number or auto") from None
    if not math.isfinite(number):
        raise ReidError(f"{flag} {value}: expected a finite number")
    return number


def resolve_step(step, eps, max_iter, norm="linf"):
    """The numeric step (in the budget's units) of ``step``: a number, ``"auto"`` (see
    ``auto_step``) or None (the norm's default, ``DEFAULT_STEP``)."""
    if step is None:
        step = DEFAULT_STEP[norm]
    return auto_step(eps, max_iter) if isinstance(step, str) and step.lower() == "auto" else step


def check_budget(eps=None, step=None, max_iter=15, flags=("--eps", "--step", "--max_iter", "--norm"),
                 norm="linf", input_size=None):
    """Validate a budget; return (eps, step) in [0, 1] pixel units and max_iter.

    ``norm="linf"``: eps and step in /255 units, eps in (0, 255]. ``norm="l2"``: eps is the
    radius of the ball in [0, 1] pixel units of the whole image (the L2 norm of the
    perturbation over its 3 x H x W values), in (0, sqrt(3 H W)] when ``input_size`` (H, W) is
    known, and step is in the same units. eps None: the norm's default (``DEFAULT_EPS``);
    step None or ``"auto"``: see ``resolve_step``. ``flags``: the option names the error
    messages cite (train.py's GOAT flags differ).
    """
    eps_flag, step_flag, iter_flag, norm_flag = flags
    check_norm(norm, norm_flag)
    try:
        bad = isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ReidError(f"{iter_flag} {max_iter}: must be an integer >= 1")
    eps = DEFAULT_EPS[norm] if eps is None else eps
    try:
        eps = float(eps)
        step = float(resolve_step(step, eps, max_iter, norm))
    except (TypeError, ValueError):
        raise ReidError(f"{eps_flag} {eps!r} / {step_flag} {step!r}: expected numbers "
                        "(a step may also be auto)") from None
    if norm == "linf" and not 0 < eps <= 255:
        raise ReidError(f"{eps_flag} {eps:g}: must be in (0, 255] (an L-inf budget in /255 units)")
    if norm == "l2":
        top = math.inf if input_size is None else image_diameter(input_size)
        if not 0 < eps <= top:
            at = "" if input_size is None else (f", the diameter of a {input_size[0]}x{input_size[1]} image, "
                                                "sqrt(3*H*W)")
            raise ReidError(f"{eps_flag} {eps:g}: an L2 radius must be in (0, {top:.4g}]{at} "
                            "(in [0, 1] pixel units)")
    if not (step > 0 and math.isfinite(step)):
        unit = "/255 units" if norm == "linf" else "L2 units"
        raise ReidError(f"{step_flag} {step:g}: must be > 0 (in {unit}) or auto")
    scale = 255.0 if norm == "linf" else 1.0
    return eps / scale, step / scale, int(max_iter)


def check_attack_args(names, single=False, eps=None, step=None, max_iter=15, norm="linf", input_size=None):
    """Validate every user-facing attack option at once (call it before doing any work).

    Returns the canonical list of names. ``single`` is checked per name; with ``all`` it
    raises too, since most attacks have no single-guide form. ``eps``: one budget or a list
    (a sweep), each checked. Universal perturbations are L-inf only.
    """
    resolved = resolve_attack_names(names)
    for name in resolved:
        check_single(name, single)
    for value in (eps if isinstance(eps, (list, tuple)) else [eps]):
        check_budget(value, step, max_iter, norm=norm, input_size=input_size)
    universal = [n for n in resolved if n in UNIVERSAL_ATTACKS]
    if norm != "linf" and universal:
        raise ReidError(f"--norm {norm}: {universal[0]} is a universal L-inf perturbation; "
                        f"run it with --norm linf")
    no_form = [n for n in resolved if n in ATTACKS and OPTIMISERS[ATTACKS[n].optimiser].run(norm) is None]
    if no_form:
        raise ReidError(f"--norm {norm}: {no_form[0]} has no {norm} form (the Square attack is L-inf only); "
                        f"run it with --norm linf")
    return resolved
