"""Speed-up of train.py and gen_adv.py with several processes (torchrun) over one, in one run.

Runs the real command lines, one process (plain `python`) then `torchrun --nproc_per_node N`,
on the same data and flags, and reads the figures the scripts record themselves, so process
start-up, dataset loading and model building are not counted:

  training   one epoch of train.py (global batch -b shared by the processes, DDP);
             `train_seconds` of its log -> training images per second;
  attack     one attack of gen_adv.py over the query split, sharded across the processes,
             adversarial features gathered; `attack_seconds` of results.json -> attacked images
             per second.

speed-up = (time with 1 process) / (time with N); target >= 1.7 for the attack with 2
processes on a 2-core CPU. gen_adv.py deals whole batches of `--attack-batch` images to the
processes (the batches one process makes, so that the numbers are the same to the bit), so
the attack's speed-up is bounded by (attacked images) / (largest process's share); the
report gives that bound, the efficiency against it, and whether the two runs' results are
identical. On the CPU each process gets `--threads` threads (default 1,
through OMP_NUM_THREADS): N processes use N x threads cores. Measure on an otherwise idle
machine. On a GPU machine pass `--device cuda` (one GPU per process).

    python benchmarks/bench_distributed.py --out benchmarks/bench_distributed.json
    python benchmarks/bench_distributed.py --device cuda --nproc 8 --height 256 --width 128 --ids 200
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, nproc, threads):
    """One command line with `nproc` processes (1: plain python)."""
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, *launcher, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")


def train_epoch(opts, data, ckpt_dir, nproc):
    """Seconds of one training epoch with `nproc` processes."""
    run(["train.py", data, "--classif", "-n", 1, "-b", opts.batch, "-f", "m.th", "--height", opts.height,
         "--width", opts.width, "--workers", opts.workers, "--device", opts.device, "--checkpoint-dir", ckpt_dir],
        nproc, opts.threads)
    with open(os.path.join(ckpt_dir, "m.log.jsonl")) as f:
        record = json.loads(f.readlines()[-1])
    return record["train_seconds"]


def attack_run(opts, data, ckpt_dir, out, nproc):
    """Seconds, attacked images and mAP of one attack over the query split with `nproc` processes."""
    run(["gen_adv.py", ckpt_dir, data, "m.th", "-a", opts.attack, "--max_iter", opts.iters, "-b", opts.attack_batch,
         "--workers", opts.workers, "--device", opts.device, "--out", out], nproc, opts.threads)
    with open(os.path.join(out, "results.json")) as f:
        entry = json.load(f)["attacks"][opts.attack]
    return entry["attack_seconds"], entry["images_attacked"], entry["mean"]["mAP"]


def same_results(*paths):
    """Whether results.json files hold the same numbers (times and the process count aside)."""
    def numbers(path):
        with open(path) as f:
            r = json.load(f)
        for entry in r["attacks"].values():
            entry.pop("attack_seconds")
        return {k: v for k, v in r.items() if k != "config"}
    return all(numbers(p) == numbers(paths[0]) for p in paths[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="a Market-layout dataset (default: a synthetic one made in --work)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--attack", default="SMA")
    numbers = (("--ids", 40, "identities of the synthetic dataset"), ("--nproc", 2, "processes to compare with one"),
               ("--threads", 1, "threads per process on the CPU"), ("--height", 64, "input height"),
               ("--width", 32, "input width"), ("--batch", 32, "global batch of training"),
               ("--attack-batch", 16, "attack batch (each process's)"),
               ("--workers", 0, "data loading processes per process"), ("--iters", 10, "attack iterations"))
    for flag, default, text in numbers:
        p.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    p.add_argument("--out", default="benchmarks/bench_distributed.json")
    opts = p.parse_args()
    sys.path.insert(0, ROOT)
    import torch

    from reid.data import load_dataset
    from reid.data.synthetic import generate
    from reid.runtime.distributed import shard_bounds

    work = opts.work or tempfile.mkdtemp(prefix="bench_distributed-")
    data = opts.dataset
    if data is None:
        data = os.path.join(work, "data")
        if not os.path.isdir(os.path.join(data, "query")):
            generate(data, ids=opts.ids, seed=0, height=2 * opts.height, width=2 * opts.width)
    dataset = load_dataset(data, "market")
    train_images = len(dataset.train) // opts.batch * opts.batch

    rows = {}
    for nproc in (1, opts.nproc):
        ckpt_dir = os.path.join(work, f"ckpt{nproc}")
        t_train = train_epoch(opts, data, ckpt_dir, nproc)
        # every attack run evaluates the model trained with one process, so they do the same work
        t_attack, attacked, m_ap = attack_run(opts, data, os.path.join(work, "ckpt1"),
                                              os.path.join(work, f"attack{nproc}"), nproc)
        rows[nproc] = {"train_epoch_seconds": t_train, "train_images_per_second": train_images / t_train,
                       "attack_seconds": t_attack, "attacked_images_per_second": attacked / t_attack,
                       "attack_mAP": m_ap}
        print(f"{nproc} process(es): training epoch {t_train:.1f} s ({train_images / t_train:.1f} images/s), "
              f"{opts.attack} {t_attack:.1f} s ({attacked / t_attack:.2f} images/s)")
    one, many = rows[1], rows[opts.nproc]
    n = len(dataset.query)
    bound = n / max(b - a for a, b in (shard_bounds(n, r, opts.nproc, opts.attack_batch) for r in range(opts.nproc)))
    same = same_results(*(os.path.join(work, f"attack{k}", "results.json") for k in (1, opts.nproc)))
    report = {
        "what": "speed-up of a training epoch (DDP) and of an attack run (sharded) with --nproc processes over one",
        "machine": {"device": opts.device, "cpus": os.cpu_count(), "threads_per_process": opts.threads,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "settings": {k: getattr(opts, k) for k in ("nproc", "height", "width", "batch", "attack_batch", "workers",
                                                    "attack", "iters")},
        "dataset": {"root": dataset.root, "train_images_per_epoch": train_images, "query": len(dataset.query)},
        "runs": {str(k): v for k, v in rows.items()},
        "train_speedup": one["train_epoch_seconds"] / many["train_epoch_seconds"],
        "attack_speedup": one["attack_seconds"] / many["attack_seconds"],
        "attack_target": 1.7,
        "attack_speedup_bound": bound,
        "attack_efficiency": one["attack_seconds"] / many["attack_seconds"] / bound,
        "same_attack_results": same,
    }
    print(f"speed-up with {opts.nproc} processes: training {report['train_speedup']:.2f}x, "
          f"attack {report['attack_speedup']:.2f}x (target >= 1.7; bound {bound:.2f}x for whole batches); "
          f"same attack results: {same}")
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
