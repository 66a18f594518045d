"""Several processes (torchrun, gloo on CPU): sharded samplers, per-image random starts,
DDP training, sharded evaluation with the same numbers as one process, failing ranks.

The tests that start processes are marked ``distributed`` (``pytest -m distributed`` runs
them alone, ``-m "not distributed"`` skips them); they use a tiny synthetic dataset.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import RandomSampler

from conftest import ROOT, SMALL, tiny_model
from reid.runtime import distributed
from reid.attacks import attack_batch, plan_attack
from reid.attacks.core import _start_point
from reid.data import RandomIdentitySampler, ShardedBatchSampler
from reid.models import load_model
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError

# ----------------------------------------------------------------------------- no processes


def epoch_parts(make_sampler, batch_size, world):
    """[[rank 0's part, rank 1's part, ...] per step] of an epoch, each rank with its own sampler."""
    per_rank = [list(ShardedBatchSampler(make_sampler(), batch_size, r, world)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    return list(zip(*per_rank))


@pytest.mark.parametrize("world", [2, 3])
def test_plain_shards_are_disjoint_and_make_the_single_process_epoch(world):
    n, b = 50, 12
    make = lambda: RandomSampler(range(n), generator=torch.Generator().manual_seed(7))  # noqa: E731
    single = list(ShardedBatchSampler(make(), b))
    assert single == [list(x) for x in torch.utils.data.BatchSampler(make(), b, drop_last=True)]
    steps = epoch_parts(make, b, world)
    assert len(steps) == len(single) == n // b
    for parts, batch in zip(steps, single):
        assert all(len(p) == b // world for p in parts)
        assert len(set().union(*map(set, parts))) == b          # disjoint
        assert sum(parts, []) == batch                          # together: the single-process batch
    seen = [i for parts in steps for p in parts for i in p]
    assert len(seen) == len(set(seen)) == n // b * b            # the epoch, each sample once


def test_identity_shards_hold_whole_identities():
    labels = [i // 5 for i in range(60)] + [99, 99]          # 12 identities of 5, one of 2
    k, b, world = 2, 8, 2
    make = lambda: RandomIdentitySampler(labels, b, k, torch.Generator().manual_seed(3))  # noqa: E731
    single = list(ShardedBatchSampler(make(), b))
    steps = epoch_parts(make, b, world)
    assert len(steps) == len(single) > 0
    for parts, batch in zip(steps, single):
        assert sum(parts, []) == batch
        ids = [[labels[i] for i in p] for p in parts]
        for part in ids:
            assert all(part.count(pid) == k for pid in part)   # K instances of each identity
        assert not set(ids[0]) & set(ids[1])                   # an identity on one rank only
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ShardedBatchSampler(make(), b, 0, 3)


def test_shard_bounds_cover_in_order():
    for n in (5, 16, 17):
        for world in (1, 2, 3, 4):
            blocks = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1


@pytest.mark.parametrize("n,unit,world", [(90, 32, 2), (230, 32, 2), (17, 3, 4), (5, 8, 3), (64, 8, 3)])
def test_shard_bounds_deal_out_the_one_process_batches(n, unit, world):
    batches = [list(range(i, min(i + unit, n))) for i in range(0, n, unit)]   # one process's batches
    dealt = []
    for r in range(world):
        start, stop = distributed.shard_bounds(n, r, world, unit)
        assert start % unit == 0 and (stop % unit == 0 or stop == n)
        dealt += [list(range(i, min(i + unit, stop))) for i in range(start, stop, unit)]
        counts = [len(range(*distributed.shard_bounds(n, q, world, unit))) for q in range(world)]
    assert dealt == batches                          # the same batches, in order, each on one rank
    assert max(counts) - min(counts) <= unit         # shared out to within one batch


def test_random_starts_do_not_depend_on_batches():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(7, 3, 16, 8, generator=gen)
    pids = torch.tensor([1, 1, 2, 3, 3, 0, 4])
    with torch.no_grad():
        feats = model(images)

    def run(seed, batches):
        plan = plan_attack("SMA", feats, pids, generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        return torch.cat([attack_batch(model, images[b], plan, b, eps=5, max_iter=2, generator=g)[0]
                          for b in batches])

    whole = run(11, [list(range(7))])
    assert torch.equal(whole, run(11, [[0, 1], [2, 3, 4], [5, 6]]))
    # The starts themselves, to the bit, whatever the batches (a whole attack on one-image batches
    # may differ in the last bits: the CPU's convolution kernels depend on the batch size).
    def starts(batches):
        g = torch.Generator().manual_seed(11)
        return torch.cat([_start_point(images[b], True, 5 / 255, "linf", g, torch.tensor(b)) for b in batches])

    assert torch.equal(starts([list(range(7))]), starts([[i] for i in range(7)]))
    assert torch.equal(starts([list(range(7))]), starts([[5, 6], [0, 1, 2, 3, 4]])[[2, 3, 4, 5, 6, 0, 1]])
    # image i's start comes from (seed, i): a run seeded otherwise starts elsewhere
    moved = (whole - images).flatten(1).abs().amax(1) > 0
    assert moved.tolist() == (pids > 0).tolist()
    assert not torch.equal(whole[moved], run(12, [list(range(7))])[moved])


def test_training_flags_checked_against_the_processes(monkeypatch):
    distributed.check_training("cpu", 30, None, False, None, None)   # one process: nothing to check
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ReidError, match=r"^-b 30: .* multiple of -ni 4 x 2 processes = 8$"):
        distributed.check_training("cpu", 30, 4)
    with pytest.raises(ReidError, match=r"^-b 31: .* multiple of the 2 processes = 2$"):
        distributed.check_training("cpu", 31)
    with pytest.raises(ReidError, match="^--sync-bn: SyncBatchNorm needs CUDA GPUs"):
        distributed.check_training("cpu", 32, sync_bn=True)
    with pytest.raises(ReidError, match="^--uap-adv online: not available under torchrun"):
        distributed.check_training("cpu", 32, uap_adv="online")
    distributed.check_training("cpu", 32, 4, uap_adv="some/uap.pt")


def test_amp_is_refused_on_cpu(tmp_path):
    import gen_adv
    import train

    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ReidError, match=r"^--amp: bfloat16 autocast is for CUDA GPUs; this run is on cpu"):
        train.main([str(data), "--amp", "--device", "cpu", "--checkpoint-dir", str(tmp_path / "c")])
    with pytest.raises(ReidError, match=r"^--amp: bfloat16 autocast is for CUDA GPUs; this run is on cpu"):
        gen_adv.main([str(tmp_path), str(data), "m.th", "--amp", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*args, nproc=2):
    """The command line of a script under `torchrun --nproc_per_node nproc` (nproc None: plain python)."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                         "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return [sys.executable, *launcher, *map(str, args)]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, nproc=2, check=True):
    """A script under `torchrun --nproc_per_node nproc` (nproc None: plain python), one thread each."""
    proc = subprocess.run(command(*args, nproc=nproc), cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from reid.data.synthetic import generate

    out = str(tmp_path_factory.mktemp("ddp") / "market")
    generate(out, ids=8, cams=2, seed=0, height=64, width=32, distractors=4, junk=2)
    return out


def train_args(data, ckpt_dir, *extra, epochs=1):
    return ("train.py", data, "-n", epochs, "-b", 8, "-f", "m.th", *SMALL, "--workers", 0, "--device", "cpu",
            "--checkpoint-dir", ckpt_dir, *extra)


@pytest.fixture(scope="module")
def ddp_checkpoint(tiny_data, tmp_path_factory):
    """A classification model trained one epoch by 2 processes (plain batches); its folder."""
    ckpt_dir = tmp_path_factory.mktemp("ddp_ckpt")
    proc = run(*train_args(tiny_data, ckpt_dir, "--classif"))
    yield ckpt_dir, proc
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # ~0.5 GB: not kept beside the rest of the session (CI disks)


def check_checkpoint(ckpt_dir, epoch, processes=2):
    """Exactly the files of one run, the last checkpoint a valid one of `epoch`."""
    assert sorted(os.listdir(ckpt_dir)) == ["m-last.th", "m.log.jsonl", "m.th"]   # no temporary leftovers
    model, ckpt = load_model(os.path.join(ckpt_dir, "m-last.th"))
    assert ckpt["epoch"] == epoch and 0 <= ckpt["map"] <= 1
    assert not any(k.startswith("module.") for k in ckpt["net"])                 # the bare network
    assert len(ckpt["rng_ranks"]) == processes and ckpt["args"]["sync_bn"] is False
    with open(os.path.join(ckpt_dir, "m.log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert [r["epoch"] for r in log] == list(range(epoch + 1))                   # logged once, by rank 0
    return model, ckpt, log


@pytest.mark.distributed
def test_ddp_epoch_writes_one_valid_checkpoint_and_resumes(ddp_checkpoint, tiny_data):
    ckpt_dir, proc = ddp_checkpoint
    model, ckpt, log = check_checkpoint(ckpt_dir, 0)
    assert proc.stdout.count("epoch 0: loss") == 1                                # rank 0 alone prints
    assert ckpt["optim"]["state"]                                                 # the optimiser stepped
    assert log[0]["mAP"] == ckpt["map"]
    resumed = run(*train_args(tiny_data, ckpt_dir, "--classif", "--resume", epochs=2))
    assert resumed.stdout.count("resuming") == 1 and resumed.stdout.count("epoch 1: loss") == 1
    _, after, _ = check_checkpoint(ckpt_dir, 1)
    assert not torch.equal(after["net"]["fc.weight"], ckpt["net"]["fc.weight"])


@pytest.mark.distributed
def test_ddp_goat_epoch_with_identity_batches(tiny_data, tmp_path):
    run(*train_args(tiny_data, tmp_path, "--triplet", "-e", 32, "--id_batch", "-ni", 2, "--adv", "--adv-iters", 2))
    _, ckpt, _ = check_checkpoint(tmp_path, 0)
    assert ckpt["goat"]["push"] == "batch" and ckpt["model"]["kind"] == "triplet"


@pytest.mark.distributed
def test_ddp_hm_epoch_shares_its_gradual_destination(tiny_data, tmp_path):
    run(*train_args(tiny_data, tmp_path, "--triplet", "-e", 32, "--id_batch", "-ni", 2, "--defence", "hm",
                    "--adv-iters", 2))
    _, ckpt, _ = check_checkpoint(tmp_path, 0)
    assert ckpt["defence"]["name"] == "hm" and ckpt["defence"]["state"]["previous"] >= 0
    proc = run(*train_args(tiny_data, tmp_path / "x", "--triplet", "--id_batch", "-ni", 4, "--defence", "hm"),
               check=False)                                   # one identity per process: refused, one line
    assert proc.returncode != 0 and "expected -b >= 2 x -ni x processes (16)" in proc.stderr


@pytest.mark.distributed
def test_ddp_goat_epoch_with_pool_guides_loaded_by_workers(tiny_data, tmp_path):
    data = tmp_path / "market"
    shutil.copytree(tiny_data, data)
    run("sort_dataset.py", data, nproc=None)
    ckpt_dir = tmp_path / "ckpt"
    run(*train_args(data, ckpt_dir, "--classif", "--adv", "--adv-iters", 2, "--push", 2, "--pull"),
        "--workers", 1)                                           # each process's loader worker reads its guides
    _, ckpt, _ = check_checkpoint(ckpt_dir, 0)
    assert ckpt["goat"]["push"] == "pool" and ckpt["goat"]["num_push"] == 2 and ckpt["goat"]["pull"]


@pytest.mark.distributed
def test_ctrl_c_stops_every_process_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    # Ctrl-C in a terminal: SIGINT to torchrun and its processes (one process group), mid-training
    proc = subprocess.Popen(command(*train_args(tiny_data, tmp_path, "--classif", epochs=100)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "m-last.th").exists():               # renamed into place: a whole checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)                                               # into the next epoch
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "interrupted" in err
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)                                        # no process of the run is left
    epoch = read_checkpoint(str(tmp_path / "m-last.th"))["epoch"]
    assert epoch < 99
    resumed = run(*train_args(tiny_data, tmp_path, "--classif", "--resume", epochs=epoch + 2))
    assert f"resuming {tmp_path / 'm-last.th'} at epoch {epoch + 1}" in resumed.stdout
    check_checkpoint(tmp_path, epoch + 1)                            # one record per epoch, no leftovers


def rank_pid(launcher, rank_):
    """The pid of torchrun's child process of rank `rank_` (RANK in its environment), or None."""
    children = []
    for task in os.listdir(f"/proc/{launcher}/task"):
        with open(f"/proc/{launcher}/task/{task}/children") as f:
            children += [int(p) for p in f.read().split()]
    for pid in children:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"RANK={rank_}".encode() in f.read().split(b"\0"):
                    return pid
        except OSError:
            continue
    return None


@pytest.mark.distributed
def test_a_killed_rank_with_loader_workers_leaves_the_survivor_one_line(tiny_data, tmp_path):
    # kill -9 of one process while both iterate loaders with workers: torchrun stops the other
    args = [a if a != 0 else 2 for a in train_args(tiny_data, tmp_path, "--classif", epochs=100)]
    proc = subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ONE_THREAD, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "m-last.th").exists():                  # both ranks are in their epochs' loops
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = err.split("Traceback (most recent call last):\n  File \"<frozen runpy>\"")[0]  # before torchrun's report
    assert "stopped by torchrun" in ours or "another process of this run stopped" in ours, err
    assert "Traceback" not in ours and "DataLoader worker" not in err and "Exception ignored" not in err, err
    assert "SIGKILL" in err.split("Root Cause", 1)[1]                  # torchrun names the killed one


def png(path):
    return np.asarray(Image.open(path))


def npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.distributed
def test_gen_adv_same_numbers_with_one_and_two_processes(ddp_checkpoint, tiny_data, tmp_path):
    ckpt_dir, _ = ddp_checkpoint
    args = ("gen_adv.py", ckpt_dir, tiny_data, "m.th", "-a", "SMA", "IFGSM", "--max_iter", 3, "--workers", 0,
            "--device", "cpu", "--save-images", "--save-features", "--visualize", 2, "-b", 3,
            "--transfer-to", os.path.join(ckpt_dir, "m-last.th"))
    run(*args, "--out", tmp_path / "one", nproc=None)
    run(*args, "--out", tmp_path / "two")
    one, two = (json.load(open(tmp_path / d / "results.json")) for d in ("one", "two"))
    assert (one["config"]["processes"], two["config"]["processes"]) == (1, 2)
    assert one["config"]["threads"] == two["config"]["threads"] == 1      # OMP_NUM_THREADS=1, as compared
    # each process attacks whole batches, the batches one process makes: the same numbers to the bit
    strip = lambda r: {k: v for k, v in r.items() if k not in ("config",)}  # noqa: E731
    for entry in (*one["attacks"].values(), *two["attacks"].values()):
        entry.pop("attack_seconds")
    assert strip(one) == strip(two)
    assert one["transfer"] and one["worst"]
    sma = one["attacks"]["SMA"]
    assert 4.9 < sma["max_perturbation"] < 5.01 and sma["images_attacked"] == 16
    feats = [npz(tmp_path / d / "features.npz") for d in ("one", "two")]
    assert feats[0].keys() == feats[1].keys() and "transfer0_query_features_adv_SMA" in feats[0]
    assert all(np.array_equal(feats[0][k], feats[1][k]) for k in feats[0])
    # every adversarial image saved (each by the process that made it), the same images
    folder = os.path.join("images", "SMA", "query")
    names = sorted(os.listdir(tmp_path / "one" / folder))
    assert names == sorted(os.listdir(tmp_path / "two" / folder)) and len(names) == 16
    for name in names:
        assert np.array_equal(png(tmp_path / "one" / folder / name), png(tmp_path / "two" / folder / name))
    assert sorted(os.listdir(tmp_path / "two" / "rankings")) == sorted(os.listdir(tmp_path / "one" / "rankings"))
    assert np.array_equal(png(tmp_path / "one" / "perturbation_SMA.png"), png(tmp_path / "two" / "perturbation_SMA.png"))


@pytest.mark.distributed
def test_gen_adv_with_a_process_that_has_no_batch(ddp_checkpoint, tiny_data, tmp_path):
    ckpt_dir, _ = ddp_checkpoint
    args = ("gen_adv.py", ckpt_dir, tiny_data, "m.th", "-a", "SMA", "--max_iter", 3, "--workers", 0,
            "--device", "cpu", "--save-features", "-b", 64)   # each split is one batch
    run(*args, "--out", tmp_path / "one", nproc=None)
    run(*args, "--out", tmp_path / "two")                     # the second process gets none, and waits
    one, two = (json.load(open(tmp_path / d / "results.json")) for d in ("one", "two"))
    assert two["config"]["processes"] == 2
    assert one["clean"] == two["clean"] and one["attacks"]["SMA"]["runs"] == two["attacks"]["SMA"]["runs"]
    feats = [npz(tmp_path / d / "features.npz") for d in ("one", "two")]
    assert all(np.array_equal(feats[0][k], feats[1][k]) for k in feats[0])


FAILING = """
import os, sys, time
sys.path.insert(0, {root!r})
import torch.distributed as dist
from reid.runtime import distributed
from reid.runtime import ReidError, cli_main

def main():
    distributed.setup("cpu")
    with open(os.path.join({out!r}, f"pid{{distributed.rank()}}"), "w") as f:
        f.write(str(os.getpid()))
    if distributed.rank() == 1:
        time.sleep(1)
        raise ReidError("rank 1 cannot read its shard")
    dist.barrier()      # rank 0 waits for a rank that never comes
    time.sleep(120)

cli_main(main)
"""


@pytest.mark.distributed
def test_a_failing_rank_stops_the_run_with_its_message(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING.format(root=ROOT, out=str(tmp_path)))
    proc = run(script, check=False)
    assert proc.returncode != 0
    assert "error: rank 1 cannot read its shard" in proc.stderr
    summary = proc.stderr.split("Root Cause", 1)[1]           # torchrun's report names the first failure
    assert "rank      : 1" in summary and "rank 1 cannot read its shard" in summary
    for r in (0, 1):
        pid = int((tmp_path / f"pid{r}").read_text())
        assert not os.path.exists(f"/proc/{pid}"), f"rank {r} (pid {pid}) is still running"
