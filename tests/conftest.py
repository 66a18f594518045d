"""Shared fixtures: tiny hand-made datasets in the real layouts, tiny models."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_model(seed=0, dim=16):
    """A small random CNN with the re-ID models' contract: images in [0, 1] -> features (B, D)."""
    import torch.nn as nn
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(32, dim),
    ).eval()


def write_image(path, seed=0, size=(16, 32)):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_market(root, train, query, gallery):
    """Write a Market-1501 layout; each list holds (pid, cam) pairs, one image each."""
    for sub, items in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        for i, (pid, cam) in enumerate(items):
            name = f"{pid:04d}" if pid >= 0 else "-1"
            write_image(os.path.join(root, sub, f"{name}_c{cam}s1_{i:06d}_01.jpg"), seed=i)
    return root


@pytest.fixture
def tiny_market(tmp_path):
    train = [(7, 1), (7, 2), (3, 1), (3, 3), (42, 2), (42, 1), (42, 3)]
    query = [(5, 1), (9, 2)]
    gallery = [(5, 2), (5, 1), (9, 1), (0, 1), (-1, 2), (-1, 1)]
    return make_market(str(tmp_path / "Market-1501-v15.09.15"), train, query, gallery)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small synthetic dataset (Market layout) shared by the end-to-end tests."""
    from reid.data.synthetic import generate

    out = str(tmp_path_factory.mktemp("synthetic") / "market")
    generate(out, ids=12, cams=3, seed=0, distractors=6, junk=3)
    return out


SMALL = ["--height", "64", "--width", "32"]


# The CLIs run in processes of their own, forked from a server that has imported the toolkit once:
# each run is a fresh process (its own globals, seeds, exit status, stdout and stderr, as a user's
# `python train.py ...`) without paying the interpreter's and torch's start-up every time.
_PRELOAD = ["torch", "torchvision", "timm", "scipy.cluster.vq", "reid.cli.train", "reid.cli.attack",
            "reid.cli.sort"]
CLI_TIMEOUT = 3600  # a hung CLI fails its test; a slow machine is not a hang


def _script_main(args, environ, out, err):
    """In the forked child: `python *args` in ROOT with stdout / stderr into the files `out` / `err`."""
    import multiprocessing
    import runpy
    import traceback

    multiprocessing.set_start_method("fork", force=True)  # a user's process: DataLoader workers fork, as on Linux
    for fd, path in ((1, out), (2, err)):
        with open(path, "wb") as f:
            os.dup2(f.fileno(), fd)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    code = 0
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            runpy.run_path(os.path.join(ROOT, args[0]), run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_cli(*args, check=True):
    """Run one of the CLIs (a script of ROOT, or ``-m module``) as a user would; returns the CompletedProcess."""
    import multiprocessing
    import tempfile

    args = [str(a) for a in args]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = ctx.Process(target=_script_main, args=(args, dict(os.environ), out, err))
        child.start()
        child.join(CLI_TIMEOUT)
        if child.exitcode is None:
            child.kill()
            child.join()
        texts = []
        for path in (out, err):
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
            else:
                texts.append("")
    proc = subprocess.CompletedProcess([sys.executable, *args], child.exitcode, *texts)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train_cli(dataset, ckpt_dir, *extra, epochs=1, check=True):
    """train.py at 64x32 on CPU, checkpoint `m.th` in `ckpt_dir`."""
    return run_cli("train.py", dataset, "--classif", "-n", epochs, "-b", 16, "-f", "m.th", *SMALL,
                   "--workers", 0, "--device", "cpu", "--checkpoint-dir", ckpt_dir, *extra, check=check)


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_dataset, tmp_path_factory):
    """Folder holding `m.th`: a classification model trained 2 epochs (seed 0) on the synthetic data."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    train_cli(synthetic_dataset, ckpt_dir, epochs=2)
    return ckpt_dir
