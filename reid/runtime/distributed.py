"""Several processes launched by ``torchrun``: PyTorch's own distributed engine, thinly wrapped.

``torchrun --nproc_per_node N train.py ...`` (or ``gen_adv.py``) starts N copies of the script;
each is a *rank* and finds its place in the environment variables torchrun sets (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` / ``MASTER_PORT``). ``setup`` joins them into one
process group, NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU. Without
torchrun (or with one process) nothing here does anything: every helper is the identity and a
plain ``python train.py`` runs exactly as before.

Everything else stays the loops of the single-process toolkit; this module only decides which
share of the work a rank does and puts the shares back together:

  * training: ``wrap`` puts the model in ``DistributedDataParallel`` (gradients averaged over
    the ranks at every step), ``reid.data.ShardedBatchSampler`` gives each rank its part of
    every global batch;
  * evaluation: ``shard_loader`` hands a rank a contiguous block of whole batches of a split
    (the batches one process makes, so the numbers do not depend on the number of
    processes), ``gather_shards`` concatenates every rank's block (all_gather of
    variable-size tensors) in split order, so features and adversarial features come back
    whole, on every rank;
  * metrics are computed once, on rank 0, and broadcast (``broadcast_object``); rank 0 alone
    prints, logs and writes files (``main_only``); the others' stdout and progress are silent,
    their errors still reach stderr.

A rank that raises exits (``reid.runtime.cli_main``) and torchrun stops the others; SIGTERM
(torchrun's way of stopping them) raises ``SystemExit`` so that pending temporary files are
removed. Every file is written atomically (``reid.runtime.atomic_path``), so no stop leaves a
half-written checkpoint or results.json.
"""

import atexit
import functools
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from reid.runtime.devices import resolve_device
from reid.runtime.errors import ReidError
from reid.runtime.progress import set_progress

_STATE = {"device": None, "stdout": None}


def launched():
    """Whether torchrun started this process with others (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active():
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """Rank 0: the process that prints, logs and writes."""
    return rank() == 0


def _terminate(signum, frame):
    """SIGTERM from torchrun, which stops every process once one has ended: one line (unless
    ``on_error`` said why already) and out at once. Not an exception unwinding the stack: its
    loader iterators would meet workers killed by the same signal and print their tracebacks;
    every file is written atomically, so stopping mid-write loses nothing but that write."""
    if not _STATE.get("said"):
        print("error: stopped by torchrun: another process of this run ended first (see its message)",
              file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)


def setup(device="auto", gpu=None):
    """The device of this process (``--device`` / ``--gpu`` resolved); under torchrun, also
    join the process group: NCCL on CUDA with one GPU per process (``cuda:LOCAL_RANK``; pass
    ``--device cuda`` or ``auto``, not an index), gloo on CPU. Only the first process keeps
    its stdout and progress output. The group is left at exit (``shutdown``)."""
    wanted = resolve_device(device, gpu)
    if not launched():
        return wanted
    if active():
        return _STATE["device"]
    if not dist.is_available():
        raise ReidError("torchrun: this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        if gpu is not None or wanted.index is not None:
            shown = f"--gpu {gpu}" if gpu is not None else f"--device {device}"
            raise ReidError(f"{shown}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                            "pass --device cuda (or auto)")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ReidError(f"torchrun: local rank {local_rank} but this machine has {count} CUDA GPU(s); "
                            f"start at most {count} processes per node")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
        dist.init_process_group("nccl", device_id=wanted)
    else:
        dist.init_process_group("gloo")
    _STATE["device"] = wanted
    signal.signal(signal.SIGTERM, _terminate)
    atexit.register(shutdown)
    if not is_main():
        _STATE["stdout"] = sys.stdout
        sys.stdout = open(os.devnull, "w")
        set_progress(False)
    return wanted


_PEER_LOST = ("closed by peer", "connection reset", "remote worker", "broken pipe")
STOP_WAIT = 30.0  # seconds a process whose peer died waits for torchrun to stop it


def on_error(err):
    """Under torchrun, what a process does with the error that ends it (``reid.runtime.cli_main``
    calls this): its message goes to torchrun's error file, so torchrun's summary shows it. A
    process whose collective failed only because another process died says so in one line and
    waits for torchrun to stop it (SIGTERM, within a second): the first failure, with its own
    message, stays the one torchrun reports."""
    if not launched():
        return
    text = str(err).lower()
    if active() and isinstance(err, RuntimeError) and any(s in text for s in _PEER_LOST):
        print("error: another process of this run stopped (see its message); this one stops too",
              file=sys.stderr, flush=True)
        _STATE["said"] = True
        time.sleep(STOP_WAIT)
        sys.exit(1)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
        ErrorHandler().record_exception(err)


def shutdown():
    """Leave the process group (at exit; idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _STATE["stdout"] is not None:
        sys.stdout.close()
        sys.stdout, _STATE["stdout"] = _STATE["stdout"], None
        set_progress(True)


def _comm_device():
    """Where collectives need their tensors: the GPU with NCCL, the CPU with gloo."""
    return _STATE["device"] if dist.get_backend() == "nccl" else torch.device("cpu")


# --------------------------------------------------------------------------- sharding


def shard_bounds(n, rank_=None, world=None, unit=1):
    """[start, stop) of the block of n items that ``rank_`` of ``world`` handles: whole
    ``unit``s (batches; the last one may be short), as many per rank as can be, give or take
    one; in rank order the blocks cover 0..n-1. A rank gets an empty block when there are
    fewer units than ranks."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    units = -(-n // unit)
    return min(n, units * rank_ // world * unit), min(n, units * (rank_ + 1) // world * unit)


def shard_loader(loader):
    """A loader over this rank's block of ``loader``'s dataset: whole batches of it, the very
    batches one process would make (same images, same size), so that each image goes through
    the model in the same company whatever the number of processes; on the CPU that keeps the
    float results, and so the numbers, the same to the bit. Same batch size, workers and
    generator; items keep their index in the whole split. ``loader`` itself when not
    distributed."""
    if not active():
        return loader
    start, stop = shard_bounds(len(loader.dataset), unit=loader.batch_size)
    return DataLoader(Subset(loader.dataset, range(start, stop)), batch_size=loader.batch_size,
                      shuffle=False, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      generator=loader.generator)


def gather_shards(local):
    """Every rank's ``local`` (n_r, ...) concatenated in rank order, on every rank, on
    ``local``'s device: an all_gather of tensors whose first dimension differs by rank. A rank
    with nothing to give passes any empty tensor; the others' shape and dtype are used."""
    if not active():
        return local
    device, comm = local.device, _comm_device()
    shapes = all_gather_object((len(local), tuple(local.shape[1:]), local.dtype))
    sizes = [s[0] for s in shapes]
    if not any(sizes):
        return local
    _, trail, dtype = next(s for s in shapes if s[0])
    t = local.reshape(len(local), *trail).to(comm, dtype).contiguous()
    padded = t.new_zeros((max(sizes), *trail))
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(device)


def gather_rows(rows, loader):
    """``rows`` (N, ...), one per item of ``loader``'s dataset, of which this rank filled its
    block (``shard_loader``): the whole, on every rank."""
    if not active():
        return rows
    start, stop = shard_bounds(len(rows), unit=loader.batch_size)
    return gather_shards(rows[start:stop])


def all_max(value):
    """The largest of every rank's float ``value``."""
    if not active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def average(stats):
    """A dict of floats averaged over the ranks (each rank's training statistics)."""
    if not active():
        return stats
    keys = sorted(stats)
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable object), on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor(t):
    """Rank 0's tensor ``t`` (same shape and dtype on every rank), on every rank."""
    if not active():
        return t
    buf = t.to(_comm_device()).contiguous()
    dist.broadcast(buf, src=0)
    return buf.to(t.device)


def all_gather_object(obj):
    """[rank 0's obj, rank 1's obj, ...] on every rank ([obj] when not distributed)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def main_only(fn):
    """Decorator: ``fn`` runs on rank 0 only (a file written once); elsewhere it returns None."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


# --------------------------------------------------------------------------- training


class _Ddp(DistributedDataParallel):
    """DistributedDataParallel that lends its module's attributes (``fc``, ``config``, ...)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def check_training(device, batch_size, num_instances=None, sync_bn=False, uap_adv=None, meta_dataset=None):
    """train.py's flags that need something of torchrun's processes (ReidError otherwise):
    ``-b`` is the global batch, shared equally (whole identities for P x K batches of K =
    ``num_instances``); SyncBatchNorm needs GPUs; the online UAP delta and the meta branch
    are one process's state. Nothing to check without torchrun."""
    if not active():
        return
    world = world_size()
    unit = world * (num_instances or 1)
    if batch_size % unit:
        what = f"-ni {num_instances} x {world} processes" if num_instances else f"the {world} processes"
        raise ReidError(f"-b {batch_size}: the global batch is shared by {world} processes; expected a multiple "
                        f"of {what} = {unit}")
    if sync_bn and torch.device(device).type != "cuda":
        raise ReidError("--sync-bn: SyncBatchNorm needs CUDA GPUs (this run is on the CPU)")
    if uap_adv == "online" or meta_dataset is not None:
        flag = "--meta-dataset" if meta_dataset is not None else "--uap-adv online"
        raise ReidError(f"{flag}: not available under torchrun (the delta / meta step is one process's state); "
                        "train with one process, or with --uap-adv FILE")


def wrap(model, device, sync_bn=False):
    """``model`` in DistributedDataParallel (parameters and buffers taken from rank 0 now,
    gradients averaged at every backward pass); ``sync_bn`` converts its BatchNorm layers to
    SyncBatchNorm first (in place: the optimiser's parameters stay the same). ``model`` itself
    when not distributed. ``check_training`` first."""
    if not active():
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return _Ddp(model, device_ids=ids, gradient_as_bucket_view=True)


def unwrap(model):
    """The module inside DistributedDataParallel (attacks and guides run on it, per rank)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def own_rng_state(ckpt):
    """This rank's RNG state of a checkpoint: its own (``rng_ranks``) when the checkpoint was
    written by as many processes, else rank 0's (``rng``)."""
    states = ckpt.get("rng_ranks")
    if states and len(states) == world_size():
        return states[rank()]
    return ckpt["rng"]


def rng_record(state):
    """Checkpoint entries for every rank's RNG ``state``: ``rng`` (rank 0's, the key a
    single-process checkpoint has) and, under torchrun, ``rng_ranks`` (all of them)."""
    states = all_gather_object(state)
    return {"rng": states[0], **({"rng_ranks": states} if len(states) > 1 else {})}
