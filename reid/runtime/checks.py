"""Input checks made before any heavy work: numbers of flags, input folders, output folders.

Each raises a `ReidError` whose one-line message names the flag (or the folder's role)."""

import math
import os
import tempfile

from reid.runtime.errors import ReidError

MAX_SEED = 2**32 - 1  # --seed: numpy's range; seed * 1000003 + run still fits torch's generators


def _number(x):
    return str(x) if isinstance(x, int) else f"{x:g}"


def check_number(flag, value, low=None, high=None, *, strict=False):
    """Check a numeric command-line value; returns it, or raises a ReidError naming `flag`.

    Floats must be finite (argparse's `type=float` accepts "nan" and "inf"). `low` is a
    lower bound (exclusive with `strict=True`), `high` an inclusive upper bound. None
    (a flag left unset) passes.
    """
    if value is None:
        return value
    is_int = isinstance(value, int) and not isinstance(value, bool)
    shown = _number(value)
    if not is_int and not math.isfinite(value):
        raise ReidError(f"{flag} {shown}: expected a finite number")
    too_low = low is not None and (value <= low if strict else value < low)
    if too_low or (high is not None and value > high):
        bounds = [f"{'>' if strict else '>='} {_number(low)}" if low is not None else "",
                  f"<= {_number(high)}" if high is not None else ""]
        raise ReidError(f"{flag} {shown}: expected {'an integer' if is_int else 'a number'} "
                        + " and ".join(b for b in bounds if b))
    return value


def check_input_dir(path, what):
    """An input folder that exists must be a folder (a missing one is the caller's to report)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ReidError(f"{what} {path} is a file, not a folder")


def check_writable_dir(path, what):
    """Check, before any heavy work, that `path` is or can be made a folder we can write in.

    Creates the missing folders and a temporary file in the last one, then removes them
    all: the file system is left as it was, and a file in the way, a read-only or full
    disk, or a missing permission is a one-line ReidError naming `what` (the flag) now
    rather than a traceback after minutes of work.
    """
    shown = os.fspath(path)
    target = os.path.abspath(shown)
    missing, parent = [], target
    while not os.path.isdir(parent):
        if os.path.lexists(parent):
            which = "it" if parent == target else parent
            raise ReidError(f"{what} {shown}: {which} exists and is not a folder")
        missing.append(parent)
        parent = os.path.dirname(parent)
    created = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
        fd, probe = tempfile.mkstemp(dir=target, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ReidError(f"{what} {shown}: cannot write there ({err.strerror or err})") from None
    finally:
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                pass
