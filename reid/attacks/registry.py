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

from dataclasses import dataclass
from typing import Optional

from ..utils import ReidError
from .guides import PULL_RULES, PUSH_RULES
from .optimisers import OPTIMISERS


@dataclass(frozen=True)
class AttackSpec:
    """One attack: guide rule (``push``, ``pull``) + ``optimiser``; ``single`` = has a
    single-guide form (one random pushing guide instead of all of them)."""

    push: Optional[str]
    pull: Optional[str]
    optimiser: str
    single: bool
    description: str

    def iterations(self, max_iter):
        """Forward/backward passes the optimiser makes (FGSM is one step whatever max_iter)."""
        return OPTIMISERS[self.optimiser].iterations(max_iter)


ATTACKS = {
    "FGSM": AttackSpec("others", None, "fgsm", True,
                       "one signed-gradient step of size eps away from same-identity images"),
    "IFGSM": AttackSpec("others", None, "pgd", True,
                        "iterative FGSM away from same-identity images"),
    "MIFGSM": AttackSpec("others", None, "momentum", True,
                         "momentum iterative FGSM (decay 1.0) away from same-identity images"),
    "SMA": AttackSpec("self", None, "pgd", False,
                      "self metric attack: away from the image's own feature, random start"),
    "ODFA": AttackSpec(None, "opposite", "pgd", False,
                       "opposite-direction feature attack: towards -f(x)"),
    "FNA": AttackSpec("others", "furthest_centroid", "pgd", False,
                      "furthest-negative attack: away from same identity, towards the "
                      "furthest identity centroid"),
    "FNA_pull": AttackSpec(None, "furthest_centroid", "pgd", False,
                           "towards the furthest identity centroid only"),
    "FNA_rand": AttackSpec("others", "random_centroid", "pgd", False,
                           "FNA with the centroid of a random other identity"),
}

ATTACK_NAMES = tuple(ATTACKS)

# Perturbations added to the images rather than optimised per image (``universal.py``):
# named explicitly, never part of ``all`` (a UAP is learned on a training split first).
UNIVERSAL_ATTACKS = {
    "UAP": "universal adversarial perturbation: one delta learned on a training split (MI-SGD)",
    "noise": "uniform random sign noise of the same budget (the baseline a UAP must beat)",
}


def _check_table():
    for name, spec in ATTACKS.items():
        assert spec.push in PUSH_RULES + (None,), (name, spec.push)
        assert spec.pull in PULL_RULES + (None,), (name, spec.pull)
        assert spec.push or spec.pull, name
        assert spec.optimiser in OPTIMISERS, (name, spec.optimiser)
        assert not spec.single or spec.push == "others", name


_check_table()


def canonical_name(name):
    """The table's spelling of an attack name (case-insensitive), or ReidError listing them."""
    for known in (*ATTACKS, *UNIVERSAL_ATTACKS):
        if str(name).lower() == known.lower():
            return known
    raise ReidError(f"unknown attack {name!r}; valid attacks: "
                    f"{', '.join(ATTACK_NAMES + tuple(UNIVERSAL_ATTACKS))} (or all)")


def get_attack_spec(name):
    return ATTACKS[canonical_name(name)]


def resolve_attack_names(names):
    """Attack names from the CLI (a string or a list, comma-separated names allowed; ``all``
    = every attack), canonical, deduplicated, in the order given."""
    if isinstance(names, str):
        names = [names]
    names = [part.strip() for name in names for part in str(name).split(",") if part.strip()]
    out = []
    for name in names:
        expanded = ATTACK_NAMES if str(name).lower() == "all" else [canonical_name(name)]
        out.extend(n for n in expanded if n not in out)
    if not out:
        raise ReidError(f"no attack given; valid attacks: "
                    f"{', '.join(ATTACK_NAMES + tuple(UNIVERSAL_ATTACKS))} (or all)")
    return out


def check_single(name, single):
    name = canonical_name(name)
    if single and not (name in ATTACKS and ATTACKS[name].single):
        with_single = ", ".join(n for n, s in ATTACKS.items() if s.single)
        raise ReidError(f"--single: attack {name} has no single-guide form "
                        f"(only {with_single} do)")
    return name


def check_budget(eps=5.0, step=1.0, max_iter=15, flags=("--eps", "--step", "--max_iter")):
    """Validate the budget in /255 units; return (eps, step) as fractions of 1 and max_iter.

    ``flags``: the option names the error messages cite (train.py's GOAT flags differ).
    """
    eps_flag, step_flag, iter_flag = flags
    try:
        eps, step = float(eps), float(step)
    except (TypeError, ValueError):
        raise ReidError(f"{eps_flag} {eps!r} / {step_flag} {step!r}: expected numbers") from None
    if not 0 < eps <= 255:
        raise ReidError(f"{eps_flag} {eps:g}: must be in (0, 255] (an L-inf budget in /255 units)")
    if not step > 0:
        raise ReidError(f"{step_flag} {step:g}: must be > 0 (in /255 units)")
    try:
        bad = isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ReidError(f"{iter_flag} {max_iter}: must be an integer >= 1")
    return eps / 255.0, step / 255.0, int(max_iter)


def check_attack_args(names, single=False, eps=5.0, step=1.0, max_iter=15):
    """Validate every user-facing attack option at once (call it before doing any work).

    Returns the canonical list of names. ``single`` is checked per name; with ``all`` it
    raises too, since most attacks have no single-guide form.
    """
    resolved = resolve_attack_names(names)
    for name in resolved:
        check_single(name, single)
    check_budget(eps, step, max_iter)
    return resolved
