"""Small shared helpers: user-facing errors, devices, seeding, atomic files."""

import os
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager

import numpy as np
import torch


class ReidError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""


def cli_main(main):
    """Run a CLI entry point: ReidError -> one line on stderr and exit code 2."""
    try:
        return main()
    except ReidError as err:
        # A ReidError raised in a DataLoader worker comes back wrapped with the
        # worker's traceback; its own message is the last line.
        message = str(err).strip().splitlines()[-1]
        message = message.split("ReidError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def resolve_device(device="auto", gpu=None):
    """`--device auto|cpu|cuda|cuda:N`, with `--gpu N` as the reference alias."""
    if gpu is not None:
        device = f"cuda:{gpu}"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ReidError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReidError(f"--device {device}: no CUDA GPU is available (use --device cpu)")
    return dev


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
