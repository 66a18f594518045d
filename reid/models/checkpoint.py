"""Checkpoints in the reference format, written atomically.

`{'net': state_dict, 'map': float, 'epoch': int, 'optim': optimizer_state}` plus
extra keys: `model` (`ReidNet.config()`: arch, kind, num_classes, embedding_size, img_size,
mean, std), `input_size`, `args`, `scheduler`, `best_map`, `rng`. The paper's checkpoints
(only the four reference keys) load too: the network is then a ResNet50 inferred from the
state dict's shapes.
"""

import random

import numpy as np
import torch

from reid.models.backbones import ReidNet, stored_config
from reid.runtime import ReidError, atomic_path, load_torch_file


def rng_state():
    """Python, numpy and torch RNG states, as types `weights_only` loading accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, map_score, epoch, optimizer=None, **extra):
    """Write the checkpoint atomically: an interrupted save keeps the old file."""
    ckpt = {"net": model.state_dict(), "map": float(map_score), "epoch": int(epoch),
            "optim": optimizer.state_dict() if optimizer is not None else None,
            "model": model.config(), **extra}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: the archive's records are named
        torch.save(ckpt, f)                               # "archive/", not after the temporary file


def read_checkpoint(path, map_location="cpu"):
    """Load a checkpoint (`weights_only`); anything but a dict with a state dict under
    'net' is a one-line ReidError "<path> is not a checkpoint ..."."""
    ckpt = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        found = f"a {type(ckpt).__name__}"
        if isinstance(ckpt, dict):
            keys = sorted(map(str, ckpt))
            more = ", ..." if len(keys) > 4 else ""
            found = f"a dict with keys {', '.join(keys[:4])}{more}" if keys else "an empty dict"
        raise ReidError(f"{path} is not a checkpoint: expected a dict with key 'net' (a state dict), found {found}")
    if not isinstance(ckpt["net"], dict):
        found = type(ckpt["net"]).__name__
        raise ReidError(f"{path} is not a checkpoint: its 'net' is not a state dict (found {found})")
    return ckpt


def load_model(path, kind=None, embedding_size=None, arch=None, map_location="cpu"):
    """Rebuild the network stored in a checkpoint; returns (model, checkpoint).

    The architecture, head and sizes come from the checkpoint's `model` record (for the
    paper's checkpoints, which have none: a ResNet50 read off the state dict). `kind` /
    `embedding_size` / `arch` are what the user's flags asked for: a mismatch with the
    checkpoint is an error rather than a silent reinterpretation.
    """
    ckpt = read_checkpoint(path, map_location)
    try:
        config = stored_config(ckpt.get("model"), ckpt["net"])
    except (ReidError, AttributeError, IndexError, TypeError) as err:  # the latter: entries that are not tensors
        raise ReidError(f"{path}: {err}") from None
    if arch is not None and arch != config["arch"]:
        raise ReidError(f"{path} holds a {config['arch']} network but --arch {arch} was given")
    if kind is not None and kind != config["kind"]:
        flag = "--classif" if kind == "classif" else "--triplet"
        raise ReidError(f"{path} holds a {config['kind']} model but {flag} was given")
    if embedding_size is not None and config["kind"] == "triplet" and embedding_size != config["embedding_size"]:
        raise ReidError(f"{path} has embedding size {config['embedding_size']} but -e {embedding_size} was given")
    try:
        model = ReidNet.from_config(config)
    except ReidError as err:
        raise ReidError(f"{path}: {err}") from None
    try:
        model.load_state_dict(ckpt["net"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ReidError(f"{path}: state dict does not match a {config['arch']} re-ID network: "
                        f"{str(err).splitlines()[0]}") from None
    return model, ckpt
