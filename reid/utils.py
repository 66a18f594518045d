"""Small shared helpers: user-facing errors, input checks, devices, seeding, files, progress."""

import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm


class ReidError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""


def cli_main(main):
    """Run a CLI entry point: ReidError -> one line on stderr and exit code 2. Under torchrun
    the error is also handed to ``reid.distributed.on_error`` (torchrun's report)."""
    try:
        return main()
    except ReidError as err:
        # A ReidError raised in a DataLoader worker comes back wrapped with the
        # worker's traceback; its own message is the last line.
        message = str(err).strip().splitlines()[-1]
        message = message.split("ReidError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        _launcher_error(err)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        _launcher_error(err)
        raise


def _launcher_error(err):
    from reid import distributed  # here: reid.distributed imports this module

    distributed.on_error(err)


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


def _first_message_line(err):
    """The informative line of an exception's message (torch's can run to a page)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch.load(weights_only=True): the reason follows
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def load_torch_file(path, what, map_location="cpu"):
    """`torch.load(path, weights_only=True)` with one-line errors: "<path> is not a <what>: ...".

    Every failure of torch.load (empty, truncated or foreign files, pickles holding
    objects other than tensors and containers) becomes a ReidError; warnings torch
    emits while failing are dropped, those of a successful load are kept.
    """
    if os.path.isdir(path):
        raise ReidError(f"{what} {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise ReidError(f"{what} {path} does not exist")
    if os.path.getsize(path) == 0:
        raise ReidError(f"{path} is not a {what}: the file is empty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            raise ReidError(f"{path} is not a {what}: torch.load failed ({_first_message_line(err)})") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def resolve_device(device="auto", gpu=None):
    """`--device auto|cpu|cuda|cuda:N`, with `--gpu N` as the reference alias."""
    if gpu is not None:
        check_number("--gpu", gpu, 0)
        device = f"cuda:{gpu}"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index is not None):
        raise ReidError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    shown = f"--gpu {gpu}" if gpu is not None else f"--device {device}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReidError(f"{shown}: no CUDA GPU is available (use --device cpu)")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.index is not None and dev.index >= count:
        raise ReidError(f"{shown}: there {'is' if count == 1 else 'are'} {count} CUDA GPU{'' if count == 1 else 's'} "
                        f"(cuda:0 to cuda:{count - 1})")
    return dev


def image_generator(seed, index):
    """A generator of its own for image ``index`` of a run seeded with ``seed``: what is drawn
    for an image does not depend on the batch it comes in, nor on the process that attacks it."""
    return torch.Generator().manual_seed((int(seed) * 1000003 + int(index)) % 2**64)


def seed_everything(seed):
    """Seed python, numpy and torch so the same seed gives the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it over `path` only on success.

    A crash or Ctrl-C leaves the previous file intact instead of a truncated one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def link_or_copy(src, dst, mode="link"):
    """Place `src` at `dst` as a hard link (default), a copy or a symlink.

    Hard links cost no disk space; across file systems they fall back to a copy.
    Returns the mode actually used.
    """
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return mode
    if mode == "link":
        try:
            os.link(src, dst)
            return mode
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"


class _LogProgress:
    """Progress for log files: a few whole lines on stderr instead of a redrawn bar.

    Prints `desc: n/total (p%), s s` at 25, 50 and 75 % when at least `interval` seconds
    passed since the last line, and a final `desc: n/total in s s` line (with the
    `set_postfix` values) when the loop completes. Nothing is printed for a loop that
    stops on an error.
    """

    def __init__(self, iterable, desc, total, interval):
        self.iterable, self.desc, self.interval = iterable, desc, interval
        if total is None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total, self.postfix = total, ""

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self, text):
        print(f"{self.desc}: {text}" + (f", {self.postfix}" if self.postfix else ""), file=sys.stderr, flush=True)

    def __iter__(self):
        start = last = time.perf_counter()
        total, n = self.total, 0
        marks = sorted({math.ceil(total * q / 4) for q in (1, 2, 3)} - {0, total}) if total else []
        for item in self.iterable:
            yield item
            n += 1
            if marks and n >= marks[0]:
                while marks and n >= marks[0]:
                    marks.pop(0)
                now = time.perf_counter()
                if now - last >= self.interval:
                    last = now
                    self._line(f"{n}/{total} ({100 * n // total}%), {now - start:.1f} s")
        count = f"{n}/{total}" if total is not None else str(n)
        self._line(f"{count} in {time.perf_counter() - start:.1f} s")


_PROGRESS = {"enabled": True}


def set_progress(enabled):
    """Switch progress output on or off (off in the processes of a torchrun other than the first)."""
    _PROGRESS["enabled"] = bool(enabled)


class _Silent:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **values):
        pass


def progress(iterable, desc, total=None, interval=10.0):
    """Iterate with progress: a tqdm bar on a terminal, a few plain lines otherwise.

    When stderr is not a terminal (a log file, a pipe, CI), tqdm's carriage-return
    updates would fill the log with thousands of partial lines; a `_LogProgress` writes
    at most four (see there). Both have `set_postfix(**values)`.
    """
    if not _PROGRESS["enabled"]:
        return _Silent(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return _LogProgress(iterable, desc, total, interval)
