"""Checkpoints in the reference format, written atomically.

`{'net': state_dict, 'map': float, 'epoch': int, 'optim': optimizer_state}` plus
extra keys: `model` (kind, num_classes, embedding_size), `input_size`, `args`,
`scheduler`, `best_map`, `rng`. The paper's checkpoints (only the four reference
keys) load too: the network is then inferred from the state dict's shapes.
"""

import hashlib
import os
import random

import numpy as np
import torch

from reid.models import ReidNet, infer_config
from reid.utils import ReidError, atomic_path


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
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def read_checkpoint(path, map_location="cpu"):
    if not os.path.isfile(path):
        raise ReidError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ReidError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        raise ReidError(f"{path} is not a re-ID checkpoint (expected a dict with key 'net')")
    return ckpt


def load_model(path, kind=None, embedding_size=None, map_location="cpu"):
    """Rebuild the network stored in a checkpoint; returns (model, checkpoint).

    `kind` / `embedding_size` are what the user's flags asked for: a mismatch with
    the checkpoint is an error rather than a silent reinterpretation.
    """
    ckpt = read_checkpoint(path, map_location)
    config = infer_config(ckpt["net"])
    if kind is not None and kind != config["kind"]:
        flag = "--classif" if kind == "classif" else "--triplet"
        raise ReidError(f"{path} holds a {config['kind']} model but {flag} was given")
    if embedding_size is not None and config["kind"] == "triplet" and embedding_size != config["embedding_size"]:
        raise ReidError(f"{path} has embedding size {config['embedding_size']} but -e {embedding_size} was given")
    model = ReidNet(config["kind"], config["num_classes"], config["embedding_size"])
    try:
        model.load_state_dict(ckpt["net"], strict=True)
    except RuntimeError as err:
        raise ReidError(f"{path}: state dict does not match a ResNet50 re-ID network: "
                        f"{str(err).splitlines()[0]}") from None
    return model, ckpt


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
