"""Bad user input stops at once with one line `error: ...` (exit code 2), never a traceback.

Most checks run in-process on the CLIs' argument parsing or on the shared helpers of
`reid.runtime`; a few go through the scripts as a user would, each failing before any
model or dataset is loaded, so the whole file runs in seconds.
"""

import json
import math
import os
import re
import shutil

import pytest
import torch

import reid.cli.attack
from reid.models import load_model
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError, check_number, check_writable_dir, checks, progress, resolve_device
from tests.conftest import run_cli


def one_line_error(proc, *needles):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# -- shared helpers ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_number_refuses_non_finite_floats(value):
    with pytest.raises(ReidError, match=r"^--lr -?(nan|inf): expected a finite number$"):
        check_number("--lr", value, 0, strict=True)


def test_check_number_bounds():
    assert check_number("--lr", 1e-4, 0, strict=True) == 1e-4
    assert check_number("-wd", 0.0, 0) == 0.0
    assert check_number("--height", 16, 16) == 16 and check_number("--height", None, 16) is None
    with pytest.raises(ReidError, match=r"^--lr 0: expected a number > 0$"):
        check_number("--lr", 0.0, 0, strict=True)
    with pytest.raises(ReidError, match=r"^-wd -0.5: expected a number >= 0$"):
        check_number("-wd", -0.5, 0)
    with pytest.raises(ReidError, match=r"^--height 15: expected an integer >= 16$"):
        check_number("--height", 15, 16)
    with pytest.raises(ReidError, match=r"^--seed 5: expected an integer >= 0 and <= 4$"):
        check_number("--seed", 5, 0, 4)


def test_check_writable_dir_leaves_nothing_behind(tmp_path):
    check_writable_dir(tmp_path, "--out")  # an existing folder
    check_writable_dir(tmp_path / "a" / "b" / "c", "--out")  # missing folders: created, probed, removed
    assert os.listdir(tmp_path) == []


def test_check_writable_dir_refuses_files(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReidError, match=r"^--out .*file: it exists and is not a folder$"):
        check_writable_dir(tmp_path / "file", "--out")
    with pytest.raises(ReidError, match=r"^--checkpoint-dir .*file/sub/deeper: .*file exists and is not a folder$"):
        check_writable_dir(tmp_path / "file" / "sub" / "deeper", "--checkpoint-dir")


@pytest.mark.parametrize("fail", ["mkdir", "mkstemp"])
def test_check_writable_dir_read_only(tmp_path, monkeypatch, fail):
    """Tests run as root, for whom chmod does not make a folder read-only: simulate it."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    if fail == "mkdir":
        monkeypatch.setattr(checks.os, "mkdir", refuse)
    else:
        monkeypatch.setattr(checks.tempfile, "mkstemp", refuse)
    target = tmp_path / "out" if fail == "mkdir" else tmp_path
    with pytest.raises(ReidError, match=r"^--out .*: cannot write there \(Permission denied\)$"):
        check_writable_dir(target, "--out")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_resolve_device_refuses_what_it_cannot_use(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    for device in ("meta", "cpu:3", "gpu", "cuda:-1"):
        with pytest.raises(ReidError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(device)
    with pytest.raises(ReidError, match=r"^--gpu -1: expected an integer >= 0$"):
        resolve_device(gpu=-1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ReidError, match=r"^--gpu 2: there is 1 CUDA GPU \(cuda:0 to cuda:0\)$"):
        resolve_device(gpu=2)
    with pytest.raises(ReidError, match=r"^--device cuda:1: there is 1 CUDA GPU"):
        resolve_device("cuda:1")


def test_progress_without_a_terminal_writes_a_few_plain_lines(capsys):
    items = list(range(1000))
    bar = progress(items, "query features", interval=0)
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss="0.123")
    assert seen == items
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and 1 <= len(lines) <= 4
    assert lines[-1].startswith("query features: 1000/1000 in ") and lines[-1].endswith(", loss 0.123")
    assert [line.split(" (")[0] for line in lines[:-1]] == ["query features: 250/1000", "query features: 500/1000",
                                                              "query features: 750/1000"]


def test_progress_quiet_for_fast_loops_and_unknown_lengths(capsys):
    assert list(progress(iter(range(5)), "attack")) == list(range(5))  # no len(): a count only
    assert list(progress(range(3000), "epoch 0")) == list(range(3000))  # fast: no intermediate lines
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("attack: 5 in ") and lines[1].startswith("epoch 0: 3000/3000 in ")


# -- checkpoints -------------------------------------------------------------------------

class Thing:  # not loadable with weights_only
    pass


@pytest.mark.parametrize("content,needle", [
    (lambda p: open(p, "wb").close(), "the file is empty"),
    (lambda p: open(p, "wb").write(bytes(range(256)) * 4), "torch.load failed"),
    (lambda p: open(p, "w").write("hello\n"), "torch.load failed"),
    (lambda p: torch.save([1, 2], p), "found a list"),
    (lambda p: torch.save({"model": 1, "epoch": 3}, p), "found a dict with keys epoch, model"),
    (lambda p: torch.save({"net": 3}, p), "'net' is not a state dict"),
    (lambda p: torch.save({"net": Thing()}, p), "Unsupported global"),
])
def test_bad_checkpoint_files_are_one_line_errors(tmp_path, content, needle):
    path = str(tmp_path / "m.th")
    content(path)
    with pytest.raises(ReidError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a checkpoint") and needle in message
    assert len(message.splitlines()) == 1 and len(message) < 300


def test_checkpoint_folder_and_foreign_state_dict(tmp_path):
    with pytest.raises(ReidError, match="is a folder, not a file"):
        read_checkpoint(str(tmp_path))
    path = str(tmp_path / "x.th")
    torch.save({"net": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(ReidError, match=f"^{path}: the checkpoint's network is neither"):
        load_model(path)


def test_gen_adv_empty_checkpoint_is_one_line(tmp_path):
    (tmp_path / "m.th").write_bytes(b"")
    proc = run_cli("gen_adv.py", tmp_path, tmp_path / "data", "m.th", "--device", "cpu", check=False)
    one_line_error(proc, f"{tmp_path / 'm.th'} is not a checkpoint")


# -- output folders: checked before any heavy work ---------------------------------------

def test_gen_adv_out_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    # the checkpoint does not exist either: the output folder is checked first, before any loading
    proc = run_cli("gen_adv.py", tmp_path / "nowhere", tmp_path / "data", "m.th", "--out", tmp_path / "taken",
                   "--device", "cpu", check=False)
    one_line_error(proc, f"--out {tmp_path / 'taken'}: it exists and is not a folder")


def test_gen_adv_out_under_a_file(tmp_path):
    import gen_adv
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ReidError, match=r"^--out .*taken/sub: .*taken exists and is not a folder$"):
        gen_adv.main([str(tmp_path / "nowhere"), str(tmp_path), "m.th", "--out", str(tmp_path / "taken" / "sub")])


def test_gen_adv_unwritable_out_fails_before_loading(tmp_path, monkeypatch):
    import gen_adv

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def never(*args, **kwargs):
        raise AssertionError("loaded the model before checking --out")

    monkeypatch.setattr(checks.tempfile, "mkstemp", refuse)  # a read-only folder, even for root
    monkeypatch.setattr(reid.cli.attack, "load_model", never)  # the command line behind gen_adv.py
    with pytest.raises(ReidError, match=r"^--out .*: cannot write there \(Permission denied\)$"):
        gen_adv.main([str(tmp_path), str(tmp_path), "m.th", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_training_log_with_a_bad_line_is_a_one_line_error(tmp_path):
    from reid.training import keep_log_epochs

    log = tmp_path / "m.log.jsonl"
    log.write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    with pytest.raises(ReidError, match=rf"^{log}: line 2 is not an epoch record"):
        keep_log_epochs(str(log), 1)
    assert log.read_text() == '{"epoch": 0}\nnot json\n{"epoch": 1}\n'   # left as it was


def test_train_checkpoint_dir_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    # the dataset does not exist either: the checkpoint folder is checked first
    proc = run_cli("train.py", tmp_path / "nowhere", "--checkpoint-dir", tmp_path / "taken", "--device", "cpu",
                   check=False)
    one_line_error(proc, f"--checkpoint-dir {tmp_path / 'taken'}: it exists and is not a folder")


def test_train_unwritable_checkpoint_places(tmp_path, monkeypatch):
    import train
    (tmp_path / "taken").write_text("x")
    common = [str(tmp_path / "nowhere"), "--device", "cpu"]
    with pytest.raises(ReidError, match=r"^--checkpoint-dir .*taken/ckpt: .*taken exists and is not a folder$"):
        train.main(common + ["--checkpoint-dir", str(tmp_path / "taken" / "ckpt")])
    with pytest.raises(ReidError, match=r"^-f .*taken: it exists and is not a folder$"):
        train.main(common + ["--checkpoint-dir", str(tmp_path), "-f", "taken/m.th"])
    (tmp_path / "m-last.th").mkdir()
    with pytest.raises(ReidError, match=r"^-f m.th: .*m-last.th is a folder$"):
        train.main(common + ["--checkpoint-dir", str(tmp_path), "-f", "m.th"])

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(checks.tempfile, "mkstemp", read_only)
    with pytest.raises(ReidError, match=r"^--checkpoint-dir .*: cannot write there \(Read-only file system\)$"):
        train.main(common + ["--checkpoint-dir", str(tmp_path / "new")])
    assert sorted(os.listdir(tmp_path)) == ["m-last.th", "taken"]


def test_sort_dataset_pool_in_the_way(tiny_market, monkeypatch):
    import reid.data.pool as pool
    from reid.data import sort_dataset
    with open(os.path.join(tiny_market, "sorted"), "w") as f:
        f.write("x")
    with pytest.raises(ReidError, match=r"^guide pool .*sorted: it exists and is not a folder$"):
        sort_dataset(tiny_market)
    os.remove(os.path.join(tiny_market, "sorted"))
    os.makedirs(os.path.join(tiny_market, "sorted", "train"))
    with open(os.path.join(tiny_market, "sorted", "train", "0003"), "w") as f:  # an identity's folder
        f.write("x")
    sort_dataset(tiny_market)  # the pool follows the dataset: the file gives way to the folder
    assert os.path.isdir(os.path.join(tiny_market, "sorted", "train", "0003"))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    shutil.rmtree(os.path.join(tiny_market, "sorted", "train", "0003"))
    monkeypatch.setattr(pool, "link_or_copy", full)
    with pytest.raises(ReidError, match=r"^cannot write .*sorted/train/0003/0003_c1s1_000002_01.jpg: No space left"):
        sort_dataset(tiny_market)


# -- numeric flags: refused up front, naming the flag ------------------------------------

def train_args(*extra):
    import train
    return train.parse_args(["DATA", *map(str, extra)])


def gen_adv_args(*extra):
    import gen_adv
    return gen_adv.parse_args(["CKPTS", "DATA", "m.th", *map(str, extra)])


@pytest.mark.parametrize("flag", ["--lr", "-wd", "--weight_decay", "--adv-eps", "--adv-step"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_train_float_flags_refuse_nan_and_inf(flag, value):
    shown = "-wd" if flag == "--weight_decay" else flag
    with pytest.raises(ReidError, match=f"^{shown} {value}: expected a finite number$"):
        train_args(f"{flag}={value}")  # "=": argparse takes a bare -inf for an option
    with pytest.raises(ReidError, match=f"^{shown} {value}: expected a finite number$"):
        train_args("--adv", "--sma", f"{flag}={value}")  # also before GOAT's own checks


@pytest.mark.parametrize("flag", ["--eps", "--step"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_gen_adv_float_flags_refuse_nan_and_inf(flag, value):
    for attack in ("clean", "FNA"):
        with pytest.raises(ReidError, match=f"^{flag} {value}: expected a finite number$"):
            gen_adv_args("-a", attack, f"{flag}={value}")


@pytest.mark.parametrize("args,message", [
    (["--lr", "0"], "--lr 0: expected a number > 0"),
    (["--lr", "-0.001"], "--lr -0.001: expected a number > 0"),
    (["-wd", "-1"], "-wd -1: expected a number >= 0"),
    (["-n", "0"], "-n 0: expected an integer >= 1"),
    (["-b", "0"], "-b 0: expected an integer >= 1"),
    (["--workers", "-1"], "--workers -1: expected an integer >= 0"),
    (["--height", "8"], "--height 8: expected an integer >= 16"),
    (["-ni", "0"], "-ni 0: expected an integer >= 1"),
    (["--seed", "-1"], "--seed -1: expected an integer >= 0 and <= 4294967295"),
    (["--seed", str(2**64)], "--seed 18446744073709551616: expected an integer >= 0 and <= 4294967295"),
    (["--id_batch", "-b", "30", "-ni", "4"], "-b 30: with --id_batch, expected a multiple of -ni 4"),
    (["-f", ""], "-f '': expected a file name"),
    (["--adv", "--sma", "--adv-eps", "0"], "--adv-eps 0: must be in (0, 255]"),
    (["--adv", "--sma", "--adv-iters", "0"], "--adv-iters 0: must be an integer >= 1"),
])
def test_train_numeric_flags(args, message):
    with pytest.raises(ReidError) as info:
        train_args(*args)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("args,message", [
    (["--height", "0"], "--height 0: expected an integer >= 16"),
    (["--height", "15"], "--height 15: expected an integer >= 16"),
    (["--width", "0"], "--width 0: expected an integer >= 16"),
    (["-e", "0"], "-e 0: expected an integer >= 1"),
    (["-n", "0"], "-n 0: expected an integer >= 1"),
    (["-b", "0"], "-b 0: expected an integer >= 1"),
    (["--workers", "-1"], "--workers -1: expected an integer >= 0"),
    (["--visualize", "-1"], "--visualize -1: expected an integer >= 0"),
    (["--seed", "-3"], "--seed -3: expected an integer >= 0 and <= 4294967295"),
    (["-a", "FNA", "--max_iter", "0"], "--max_iter 0: must be an integer >= 1"),
    (["-a", "FNA", "--eps", "0"], "--eps 0: must be in (0, 255]"),
    (["-a", "FNA", "--step", "-1"], "--step -1: must be > 0"),
    (["-a", "FNA", "--step", "fast"], "--step fast: expected a number or auto"),
    (["-a", "FNA", "--eps", "2", "2"], "--eps 2 2: give each budget once"),
    (["-a", "FNA", "--eps", "1", "nan"], "--eps nan: expected a finite number"),
    (["-a", "FNA", "--norm", "l2", "--eps", "-0.5"], "--eps -0.5: an L2 radius must be in (0, inf]"),
    (["-a", "SMA", "noise", "--norm", "l2"], "--norm l2: noise is a universal L-inf perturbation"),
    (["-a", "FNA", "--uap-epochs", "3"], "--uap-epochs: only used with -a UAP (it would change nothing)"),
    (["-a", "SMA", "noise", "--uap-loss", "guided"], "--uap-loss: only used with -a UAP"),
    (["-a", "FNA", "--eps", "0.5", "2", "--save-images"],
     "--save-images: eps 0.5/255 is below one 8-bit level (1/255), so a PNG would hold the clean image"),
    (["-a", "FNA", "--norm", "l2", "--eps", "0.002", "--save-images"],
     "--save-images: eps 0.002 (L2) is below one 8-bit level (0.00392157 (L2))"),
])
def test_gen_adv_numeric_flags(args, message):
    with pytest.raises(ReidError) as info:
        gen_adv_args(*args)
    assert str(info.value).startswith(message)


def test_gen_adv_budget_flags_are_normalised():
    gen_adv_args("-a", "FNA", "--eps", "0.5", "2")                    # small budgets without images are fine
    gen_adv_args("-a", "FNA", "--eps", "1", "--save-images")          # one 8-bit level can be saved
    args = gen_adv_args("-a", "SMA", "--eps", "2")
    assert (args.eps, args.step, args.norm) == (2.0, 1.0, "linf")  # one budget: a number, as before
    args = gen_adv_args("-a", "SMA", "--eps", "1", "4", "--step", "AUTO")
    assert (args.eps, args.step) == ([1.0, 4.0], "auto")
    args = gen_adv_args("-a", "SMA", "--norm", "l2")
    assert (args.eps, args.step) == (0.5, "auto")  # the L2 defaults


def test_gen_adv_size_flags_are_kept():
    args = gen_adv_args("--height", "16", "--width", "32")
    assert (args.height, args.width) == (16, 32)
    assert gen_adv_args().height is None  # not given: the checkpoint's size is used


def test_train_nan_lr_through_the_cli():
    """What a user sees: `train.py --lr nan` used to end in torch's ValueError traceback."""
    proc = run_cli("train.py", "/nonexistent/data", "--lr", "nan", check=False)
    one_line_error(proc, "--lr nan: expected a finite number")


def test_train_batch_larger_than_the_training_set(tiny_market, tmp_path):
    import train
    with pytest.raises(ReidError, match=r"^-b 8: more than the 7 training images"):
        train.main([tiny_market, "-b", "8", "--device", "cpu", "--workers", "0", "--checkpoint-dir", str(tmp_path)])


# -- input paths ---------------------------------------------------------------------------

def test_dataset_folder_that_is_a_file(tmp_path):
    """It used to be reported as "does not exist"."""
    import gen_adv
    import train
    data = tmp_path / "data.zip"
    data.write_text("x")
    with pytest.raises(ReidError, match=r"^dataset folder .*data.zip is a file, not a folder$"):
        train.parse_args([str(data)])
    with pytest.raises(ReidError, match=r"^dataset folder .*data.zip is a file, not a folder$"):
        gen_adv.parse_args([str(tmp_path), str(data), "m.th"])
    proc = run_cli("sort_dataset.py", data, check=False)
    one_line_error(proc, f"dataset folder {data} is a file, not a folder")


def test_checkpoints_folder_that_is_a_file(tmp_path):
    import gen_adv
    (tmp_path / "ckpts").write_text("x")
    with pytest.raises(ReidError, match=r"^checkpoints_folder .*ckpts is a file, not a folder$"):
        gen_adv.parse_args([str(tmp_path / "ckpts"), str(tmp_path), "m.th"])


def test_pretrained_path_problems_are_found_before_any_work(tmp_path):
    import train
    common = [str(tmp_path / "no-data"), "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ckpt")]
    with pytest.raises(ReidError, match=r"^--pretrained-path .*: is a folder, expected the weights file$"):
        train.main(common + ["--pretrained-path", str(tmp_path)])
    with pytest.raises(ReidError, match=r"^--pretrained-path .*nope.pth: no such file$"):
        train.main(common + ["--pretrained-path", str(tmp_path / "nope.pth")])
    (tmp_path / "empty.pth").write_bytes(b"")
    from reid.models import build_model
    with pytest.raises(ReidError, match=r"empty.pth is not a ResNet50 weights file: the file is empty$"):
        build_model("classif", 3, pretrained_path=str(tmp_path / "empty.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ReidError, match=r"list.pth is not a torchvision ResNet50 state dict"):
        build_model("classif", 3, pretrained_path=str(tmp_path / "list.pth"))


@pytest.mark.parametrize("args, message", [
    (["--soft"], "--soft_margin: a triplet option"),
    (["-e", "128"], "-e: a triplet option"),
])
def test_train_flags_that_do_nothing_for_classification_are_refused(args, message):
    with pytest.raises(ReidError, match=rf"^{message}"):
        train_args("--classif", *args)
    assert train_args("--triplet", *args).kind == "triplet"


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer and numpy / scipy raise their own errors on a full disk."""
    import errno

    import torch
    from reid.models import build_model, save_checkpoint
    from reid.runtime import atomic_path
    model = build_model("triplet", None, 8, input_size=(64, 32))
    path = tmp_path / "m.th"
    save_checkpoint(str(path), model, 0.5, 0)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ReidError, match=r"m.th: cannot write it \(the disk may be full: .*\); the previous file is "
                                        r"kept$"):
        save_checkpoint(str(path), model, 0.6, 1)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.th"]
    with pytest.raises(ReidError, match=r"features.mat: cannot write it \(No space left on device\); nothing was"):
        with atomic_path(tmp_path / "features.mat"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError):  # other errors are not disguised
        with atomic_path(tmp_path / "x"):
            raise ValueError("a bug")


def test_an_empty_image_stops_at_loading(tiny_market):
    from reid.data import load_dataset
    gallery = os.path.join(tiny_market, "bounding_box_test")
    victim = os.path.join(gallery, next(f for f in sorted(os.listdir(gallery)) if f.startswith("0005")))
    open(victim, "w").close()
    with pytest.raises(ReidError, match=rf"^{re.escape(victim)}: the image file is empty$"):
        load_dataset(tiny_market)


def test_a_garbage_training_log(synthetic_dataset, tmp_path):
    """A fresh run replaces it; a resume stops on it before training."""
    from tests.conftest import train_cli
    log = tmp_path / "m.log.jsonl"
    log.write_text("not json\n{}\n")
    train_cli(synthetic_dataset, tmp_path, epochs=1)
    assert [json.loads(line)["epoch"] for line in open(log)] == [0]
    log.write_text("garbage\n" + log.read_text())
    proc = train_cli(synthetic_dataset, tmp_path, "--resume", epochs=2, check=False)
    assert proc.returncode == 2 and "m.log.jsonl: line 1 is not an epoch record" in proc.stderr
    assert "epoch 1" not in proc.stdout
