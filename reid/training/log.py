"""The training log, one JSON record an epoch (`<name>.log.jsonl`), kept consistent with the
checkpoint it continues."""

import json
import os

from reid.models import read_checkpoint
from reid.runtime import ReidError, atomic_path


def append_jsonl(path, record):
    """Append one line; a line is small enough to be written whole."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _logged_epoch(line):
    """The epoch of one line of a training log; None if the line is not an epoch record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) else None


def check_log(path):
    """The lines of a training log ([] if there is none), every one but a torn last one an epoch
    record; one line naming the file otherwise."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if _logged_epoch(line) is None:
            raise ReidError(f"{path}: line {i + 1} is not an epoch record (expected one JSON line per epoch)")
    return lines


def keep_log_epochs(path, epochs):
    """Keep the records of the first `epochs` epochs of a training log, drop the rest (atomically).

    train.py logs an epoch before checkpointing it, so a run stopped in between has logged one
    epoch more than its last checkpoint holds: ``--resume`` redoes that epoch and must not log it
    twice; a fresh run (``epochs`` 0) starts an empty log. A torn last line (a process killed in
    the middle of writing it) is dropped; a bad line elsewhere is an error naming the file.
    """
    if not os.path.exists(path):
        return
    if epochs == 0:  # a fresh run: whatever the old log holds, it is replaced
        with atomic_path(path) as tmp:
            open(tmp, "w").close()
        return
    lines = check_log(path)
    logged = [_logged_epoch(line) for line in lines]
    kept = [line for line, epoch in zip(lines, logged) if epoch is not None and epoch < epochs]
    if len(kept) == len(lines):
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.writelines(line + "\n" for line in kept)


def resume_point(last_path, best_path, log_path):
    """The checkpoint ``--resume`` continues: `last_path`, or, where there is none, `best_path`
    when it holds the last epoch the log records (a run stopped while writing its first
    `-last`: the best of that epoch was written just before, with the same RNG state, so
    the resume is as exact). Anything else is one line saying what to do."""
    if os.path.isfile(last_path):
        return last_path
    nothing = f"--resume: no checkpoint {last_path} to continue from"
    if not os.path.isfile(best_path):
        raise ReidError(f"{nothing}; start the run without --resume")
    records = [json.loads(line) for line in check_log(log_path) if _logged_epoch(line) is not None]
    last = records[-1] if records else {}
    ckpt = read_checkpoint(best_path)
    if not (last.get("saved_best") and "rng" in ckpt and ckpt["epoch"] == last["epoch"]
            and ckpt["map"] == last.get("mAP")):
        raise ReidError(f"{nothing}, and {best_path} is not the checkpoint of the last epoch logged in {log_path}; "
                        "start the run without --resume")
    return best_path
