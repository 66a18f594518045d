"""End to end through the CLIs: synthetic data -> train.py -> gen_adv.py -> results.json."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from reid.models.checkpoint import read_checkpoint
from tests.conftest import SMALL, run_cli as run, train_cli as train

METRIC_KEYS = {"mAP", "rank1", "rank5", "rank10", "mINP"}


def test_train_writes_checkpoints_and_log(trained_checkpoint):
    assert {"m.th", "m-last.th", "m.log.jsonl"} <= set(os.listdir(trained_checkpoint))
    log = [json.loads(line) for line in open(trained_checkpoint / "m.log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1]
    assert all(METRIC_KEYS <= set(r) and 0 <= r["mAP"] <= 1 for r in log)
    last = read_checkpoint(str(trained_checkpoint / "m-last.th"))
    best = read_checkpoint(str(trained_checkpoint / "m.th"))
    assert last["epoch"] == 1 and last["input_size"] == [64, 32]
    assert best["map"] == max(r["mAP"] for r in log) == last["best_map"]


def test_gen_adv_clean_results_and_features(trained_checkpoint, synthetic_dataset, tmp_path):
    out = tmp_path / "eval"
    proc = run("gen_adv.py", str(trained_checkpoint), synthetic_dataset, "m.th", "--classif", "-a", "clean",
               "--device", "cpu", "--workers", "0", "--out", str(out), "--save-features")
    assert "mAP" in proc.stdout
    # stderr is a pipe, not a terminal: a few plain progress lines, no redrawn tqdm bars
    assert "\r" not in proc.stderr and len(proc.stderr.splitlines()) <= 8, proc.stderr
    results = json.load(open(out / "results.json"))
    assert set(results) == {"config", "complete", "clean", "attacks", "checks"} and results["complete"] is True
    assert set(results["clean"]) == METRIC_KEYS
    assert results["config"]["input_size"] == [64, 32]  # read from the checkpoint
    assert len(results["config"]["checkpoint_sha256"]) == 64
    # the checkpoint's logged mAP is what gen_adv measures on the same model
    best = read_checkpoint(str(trained_checkpoint / "m.th"))
    assert results["clean"]["mAP"] == pytest.approx(best["map"], abs=1e-6)
    feats = np.load(out / "features.npz")
    assert {"query_features", "query_pids", "query_camids", "gallery_features", "gallery_pids",
            "gallery_camids"} <= set(feats.files)
    assert feats["query_features"].shape == (len(feats["query_pids"]), 2048)
    assert (out / "features.mat").exists()


def test_resume_continues_exactly(synthetic_dataset, trained_checkpoint, tmp_path):
    straight, resumed = trained_checkpoint, tmp_path / "resumed"  # `trained`: 2 epochs in one go, seed 0
    train(synthetic_dataset, resumed, epochs=1)
    with open(resumed / "m.log.jsonl", "a") as f:  # stopped after logging epoch 1, before checkpointing it,
        f.write(json.dumps({"epoch": 1, "mAP": -1.0}) + '\n{"epoch": 2, "lo')   # and killed mid-line
    proc = train(synthetic_dataset, resumed, "--resume", epochs=2)
    assert "resuming" in proc.stdout
    assert "\r" not in proc.stderr and len(proc.stderr.splitlines()) <= 8, proc.stderr  # plain progress lines
    a = read_checkpoint(str(straight / "m-last.th"))
    b = read_checkpoint(str(resumed / "m-last.th"))
    assert a["epoch"] == b["epoch"] == 1
    for k in a["net"]:
        assert torch.equal(a["net"][k], b["net"][k]), k
    logs = [[json.loads(x) for x in open(d / "m.log.jsonl")] for d in (straight, resumed)]
    assert [r["epoch"] for r in logs[1]] == [0, 1]                   # the redone epoch logged once
    assert [r["mAP"] for r in logs[0]] == [r["mAP"] for r in logs[1]]
    train(synthetic_dataset, resumed, epochs=1)                      # a fresh run in the folder: a fresh log
    assert [json.loads(x)["epoch"] for x in open(resumed / "m.log.jsonl")] == [0]


def test_resume_after_a_kill_in_the_first_last_write(synthetic_dataset, trained_checkpoint, tmp_path):
    """Killed while writing epoch 0's -last (atomic: none is left, the best of epoch 0 was just
    written): --resume continues from that best, exactly as the straight run."""
    train(synthetic_dataset, tmp_path, epochs=1)
    os.remove(tmp_path / "m-last.th")
    proc = train(synthetic_dataset, tmp_path, "--resume", epochs=2)
    assert f"resuming {tmp_path / 'm.th'} at epoch 1" in proc.stdout
    a = read_checkpoint(str(trained_checkpoint / "m-last.th"))
    b = read_checkpoint(str(tmp_path / "m-last.th"))
    assert a["epoch"] == b["epoch"] == 1 and all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "m.log.jsonl")] == [0, 1]
    # a best that is not the log's last epoch continues nothing: one line saying what to do
    os.remove(tmp_path / "m-last.th")
    with open(tmp_path / "m.log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 1.0}) + "\n")
    proc = train(synthetic_dataset, tmp_path, "--resume", epochs=3, check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].endswith("start the run without --resume"), proc.stderr


def test_evaluating_does_not_change_the_training(synthetic_dataset, trained_checkpoint, tmp_path):
    # the same 2 epochs, evaluated after the last only (the fixture evaluates after each): evaluation
    # draws nothing from the global RNG, so augmentation and the weights are the same to the bit
    train(synthetic_dataset, tmp_path, "--eval-every", 2, epochs=2)
    a = read_checkpoint(str(trained_checkpoint / "m-last.th"))
    b = read_checkpoint(str(tmp_path / "m-last.th"))
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    assert ["mAP" in json.loads(x) for x in open(tmp_path / "m.log.jsonl")] == [False, True]


def test_sort_dataset_builds_pool_idempotently(synthetic_dataset, tmp_path):
    import shutil
    data = tmp_path / "copy"
    shutil.copytree(synthetic_dataset, data)
    first = run("sort_dataset.py", str(data))
    second = run("sort_dataset.py", str(data))
    nothing = "(0 new, 0 replaced, 0 removed)"
    assert nothing in second.stdout and nothing not in first.stdout.split("train")[1].splitlines()[0]
    from reid.data import load_dataset
    ds = load_dataset(str(data))
    pool = data / "sorted" / "train"
    assert sorted(int(p) for p in os.listdir(pool)) == ds.train_pids
    n = sum(len(os.listdir(pool / p)) for p in os.listdir(pool))
    assert n == len(ds.train)
    for pid in os.listdir(pool):  # every image sits under its own identity
        assert all(f.startswith(pid + "_") for f in os.listdir(pool / pid))
    gallery_pool = data / "sorted" / "gallery"
    assert sum(len(os.listdir(gallery_pool / p)) for p in os.listdir(gallery_pool)) == len(ds.gallery)


@pytest.mark.parametrize("args,needle", [
    (["train.py", "/nonexistent/data"], "/nonexistent/data does not exist"),
    (["gen_adv.py", "/nonexistent", "DATA", "m.th"], "checkpoint /nonexistent/m.th does not exist"),
    (["sort_dataset.py", "/nonexistent/data"], "/nonexistent/data does not exist"),
])
def test_cli_errors_are_one_line(args, needle):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_gen_adv_kind_mismatch_writes_nothing(trained_checkpoint, synthetic_dataset, tmp_path):
    out = tmp_path / "never"
    proc = run("gen_adv.py", str(trained_checkpoint), synthetic_dataset, "m.th", "--triplet", "--out", str(out), check=False)
    assert proc.returncode == 2 and "--triplet" in proc.stderr and not out.exists()


def test_unreadable_image_in_a_loader_worker_is_one_line(trained_checkpoint, synthetic_dataset, tmp_path):
    import shutil
    data = tmp_path / "broken"
    shutil.copytree(synthetic_dataset, data)
    victim = sorted(os.listdir(data / "query"))[0]
    (data / "query" / victim).write_bytes(b"broken")
    proc = run("gen_adv.py", trained_checkpoint, data, "m.th", "--workers", "1", "--device", "cpu",
               "--out", tmp_path / "out", check=False)
    last = proc.stderr.strip().splitlines()[-1]  # progress bars may precede it
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith("error: cannot read image") and victim in last


RESUME = ["--resume", "-f", "m.th", "-n", "3", *SMALL, "--classif", "-b", "16", "--device", "cpu", "--workers", "0"]


@pytest.mark.parametrize("flags, shown", [(["--lr", "0.1"], "--lr 0.00035, the flags given ask for 0.1"),
                                          (["-wd", "0"], "-wd 0.0005, the flags given ask for 0.0"),
                                          (["--seed", "1"], "--seed 0, the flags given ask for 1"),
                                          (["--workers", "1"], "--workers 0, the flags given ask for 1")])
def test_resume_with_changed_flags_stops_naming_the_flag(trained_checkpoint, synthetic_dataset, tmp_path, flags,
                                                         shown):
    """A resume continues the recorded run or refuses: the optimiser's settings come from the
    checkpoint, so a new --lr would be recorded as the run's while the old one trains on."""
    import train
    from reid.runtime import ReidError
    shutil.copy(trained_checkpoint / "m-last.th", tmp_path / "m-last.th")
    args = [synthetic_dataset, *RESUME, "--checkpoint-dir", str(tmp_path)]  # the last --workers counts
    with pytest.raises(ReidError, match=rf"^--resume: .*m-last.th was trained with {re.escape(shown)} \(a resume"):
        train.main(args + flags)
    assert read_checkpoint(str(tmp_path / "m-last.th"))["epoch"] == 1  # left as it was


def test_resume_on_another_dataset_with_as_many_identities_stops(trained_checkpoint, synthetic_dataset, tmp_path):
    """Labels would mean other people, and "best mAP so far" would compare two test sets."""
    import train
    from reid.data.synthetic import generate
    from reid.runtime import ReidError
    other = str(tmp_path / "other")
    generate(other, ids=12, cams=3, seed=5, distractors=6, junk=3)  # the same size, other identities
    shutil.copy(trained_checkpoint / "m-last.th", tmp_path / "m-last.th")
    with pytest.raises(ReidError, match=r"^--resume: .*m-last.th was trained on other identities than those of "):
        train.main([other, *RESUME, "--checkpoint-dir", str(tmp_path)])
    ckpt = read_checkpoint(str(tmp_path / "m-last.th"))  # the same identities, other images: stops too
    ckpt["train_fingerprint"] = "0" * 64
    torch.save(ckpt, tmp_path / "m-last.th")
    with pytest.raises(ReidError, match=r"m-last.th was trained on other training images than those of "):
        train.main([synthetic_dataset, *RESUME, "--checkpoint-dir", str(tmp_path)])


def test_the_same_run_writes_the_same_checkpoint_bytes(synthetic_dataset, tmp_path):
    """Same seed, same flags: the same file, to the byte (its SHA-256 names the model in results.json)."""
    import hashlib

    def digests():
        train(synthetic_dataset, tmp_path, epochs=1)  # a fresh run each time, in the same folder
        return [hashlib.sha256(open(tmp_path / name, "rb").read()).hexdigest() for name in ("m.th", "m-last.th")]

    assert digests() == digests()


def test_a_non_finite_loss_stops_at_once(synthetic_dataset, tmp_path):
    proc = train(synthetic_dataset, tmp_path, "--lr", "1e308", epochs=2, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: epoch 0, step ")
    assert "the training loss is nan (not finite)" in proc.stderr or "the training loss is inf" in proc.stderr
    assert not (tmp_path / "m.th").exists() and not (tmp_path / "m-last.th").exists()


def test_training_that_cannot_learn_is_refused(tmp_path):
    from tests.conftest import make_market
    root = make_market(tmp_path / "one", train=[(1, 1), (1, 2), (1, 1)], query=[(2, 1)], gallery=[(2, 2), (3, 1)])
    proc = train(root, tmp_path / "c", "-b", "2", check=False)
    assert proc.returncode == 2 and "1 training identity; re-ID training needs at least 2" in proc.stderr
    proc = run("train.py", root, "--triplet", "--id_batch", "-b", "4", "-ni", "4", check=False)
    assert proc.returncode == 2 and "-b 4 -ni 4: one identity per batch" in proc.stderr


def test_a_ctrl_c_swallowed_in_a_del_still_stops_the_run(capsys):
    """A Ctrl-C that lands in a __del__ (a DataLoader iterator joining its workers) or an at-fork
    callback (a DataLoader starting them) is ignored there by Python; cli_main raises it again
    in the run, which stops with exit code 130 instead of going on to the end."""
    import signal
    import time

    from reid.runtime import cli_main

    class JoiningWorkers:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)   # Ctrl-C while __del__ runs
            sum(range(10))                       # the handler runs here, inside __del__

    def run_on():
        JoiningWorkers()
        for _ in range(500):                     # the rest of the run (5 s at most)
            time.sleep(0.01)
        return "finished"

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    with pytest.raises(SystemExit) as stop:
        cli_main(run_on)
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted" and "Exception ignored" not in err
    assert signal.getsignal(signal.SIGINT) is before  # put back
