"""The per-identity guide pool DATASET/sorted/{train,query,gallery}/<pid>/ (ImageFolder layout) that
GOAT samples its pushing guides from; `sort_dataset.py` builds it. Files are hard links by default
(no extra disk space), falling back to copies across file systems. The pool follows the dataset:
a second run adds what is missing, re-places an image the dataset replaced (`same_image`) and
removes what the dataset no longer holds, so it fixes whatever `GuidePool` reported."""

import os
import shutil

from reid.data.datasets import load_dataset
from reid.runtime import ReidError, check_input_dir, check_writable_dir, file_sha256, link_or_copy

SPLITS = ("train", "query", "gallery")


def same_image(src, dst):
    """Whether the pool entry `dst` holds the dataset image `src`: the same file (a hard link, or a
    symbolic link to it), or a copy of the same size and modification time or, failing the time,
    the same bytes. A missing or dangling `dst` is not."""
    try:
        a, b = os.stat(src), os.stat(dst)
    except OSError:
        return False
    if os.path.samestat(a, b):
        return True
    if a.st_size != b.st_size:
        return False
    return a.st_mtime_ns == b.st_mtime_ns or file_sha256(src) == file_sha256(dst)


def pool_folder(pid):
    """The folder name of an original pid (-1 for junk)."""
    return f"{pid:04d}" if pid >= 0 else str(pid)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _follow(split_root, wanted, mode):
    """Make `split_root` hold exactly `wanted` ({(folder, name): source}); returns (added, replaced, removed)."""
    added = replaced = removed = 0
    folders = {folder for folder, _ in wanted}
    present = sorted(os.listdir(split_root)) if os.path.isdir(split_root) else []
    for folder in present:  # what the dataset no longer holds goes first
        path = os.path.join(split_root, folder)
        if folder not in folders or not os.path.isdir(path) or os.path.islink(path):
            _remove(path)
            removed += 1
            continue
        for name in sorted(os.listdir(path)):
            if (folder, name) not in wanted:
                _remove(os.path.join(path, name))
                removed += 1
    for (folder, name), src in sorted(wanted.items()):
        dst = os.path.join(split_root, folder, name)
        try:
            if os.path.lexists(dst):
                if same_image(src, dst):
                    continue
                _remove(dst)  # the dataset replaced it (or a dangling link): place it again
                replaced += 1
            else:
                added += 1
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            link_or_copy(src, dst, mode)
        except OSError as err:
            raise ReidError(f"cannot write {dst}: {err.strerror}") from None
    return added, replaced, removed


def sort_dataset(dataset_folder, dataset="market", mode="link"):
    """Create or update the sorted/ tree; returns {split: (identities, images, added, replaced, removed)}."""
    check_input_dir(dataset_folder, "dataset folder")
    data = load_dataset(dataset_folder, dataset)
    out_root = os.path.join(data.root, "sorted")
    check_writable_dir(out_root, "guide pool")
    counts = {}
    for split in SPLITS:
        samples = getattr(data, split)
        if split == "train":  # folder names are original pids; labels follow their sorted order
            samples = [s._replace(pid=data.train_pids[s.pid]) for s in samples]
        wanted = {(pool_folder(pid), os.path.basename(path)): path for path, pid, _ in samples}
        try:
            changes = _follow(os.path.join(out_root, split), wanted, mode)
        except OSError as err:
            raise ReidError(f"cannot update the guide pool {os.path.join(out_root, split)}: {err}") from None
        counts[split] = (len({s.pid for s in samples}), len(samples), *changes)
    return out_root, counts
