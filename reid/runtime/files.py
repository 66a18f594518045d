"""Files: atomic writes, safe torch.load, links or copies, content hashes."""

import hashlib
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager

import torch

from reid.runtime.errors import ReidError, first_message_line


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
