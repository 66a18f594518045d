"""Files: atomic writes, safe torch.load, links or copies, content hashes."""

import errno
import hashlib
import os
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager

import torch

from reid.runtime.errors import ReidError, first_message_line

WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)  # a write, not a bug


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it over `path` only on success.

    A crash or Ctrl-C leaves the previous file intact instead of a truncated one. A write
    that fails for want of room or permission (a full disk: `OSError` ENOSPC, or torch's
    `RuntimeError` from its zip writer) is a one-line ReidError naming `path`, the previous
    file kept.
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
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        raise ReidError(f"{path}: cannot write it ({os.strerror(err.errno)}); "
                        f"{'the previous file is kept' if os.path.exists(path) else 'nothing was written'}") from None
    except RuntimeError as err:  # torch.save's zip writer on a full disk
        if "PytorchStreamWriter" not in str(err) and "inline_container" not in str(err):
            raise
        raise ReidError(f"{path}: cannot write it (the disk may be full: {first_message_line(err)}); "
                        f"{'the previous file is kept' if os.path.exists(path) else 'nothing was written'}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _lock_owner(path):
    """(pid, host) written in a lock file, or None for an unreadable one (torn by a kill)."""
    try:
        pid, host = open(path).read().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def run_lock(path, what, enabled=True):
    """Hold the lock file `path` while a run writes the outputs it guards: a second run on the
    same outputs stops at once, in one line naming `what` (the flag and its value). A lock whose
    process is gone (a killed run, on this host) is taken over. `enabled` False (a torchrun rank
    other than 0): nothing is held."""
    if not enabled:
        yield
        return
    created, folder = [], os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):  # made for the lock, removed again with it if the run wrote nothing there
        created.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(created):
        os.mkdir(folder)
    me = (os.getpid(), socket.gethostname())
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != me and (owner[1] != me[1] or _alive(owner[0])):
                raise ReidError(f"{what}: another run (process {owner[0]} on {owner[1]}) is writing it; wait for it "
                                f"to end, or remove {path} if that run is gone") from None
            try:
                os.remove(path)  # left by a run that was killed
            except FileNotFoundError:
                pass
    with os.fdopen(fd, "w") as f:
        f.write(f"{me[0]} {me[1]}\n")
    try:
        yield
    finally:
        if _lock_owner(path) == me:
            os.remove(path)
        for folder in created:  # innermost first; a folder the run wrote in stays
            try:
                os.rmdir(folder)
            except OSError:
                break


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
            raise ReidError(f"{path} is not a {what}: torch.load failed ({first_message_line(err)})") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


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


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
