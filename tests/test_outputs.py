"""Runs that share a folder: a unique default --out, a folder's outputs replaced as a set, an
unfinished results.json marked as such (issue 19, part 2)."""

import json
import os

import pytest
import torch

import reid.evaluation.run
from reid.evaluation import default_out
from reid.evaluation import report
from reid.runtime import ReidError, cli_main

COMMON = ["--max_iter", "2", "--eps", "3", "--device", "cpu", "--workers", "0"]


def test_default_out_differs_for_runs_started_in_the_same_second():
    assert len({default_out("m.th", "market") for _ in range(50)}) == 50


def test_a_reused_out_folder_holds_one_run(trained_checkpoint, synthetic_dataset, tmp_path, capsys):
    import gen_adv
    out = tmp_path / "out"
    out.mkdir()
    stale = ["robustness.csv", "robustness.png", "features.mat", "uap.pt", "uap.png", "perturbation_FNA.png",
             ".results.json.abc123.tmp", ".features.npz.x.tmp"]
    for name in stale + ["notes.txt"]:
        (out / name).write_text("an earlier run")
    (out / "rankings").mkdir()
    (out / "rankings" / "FNA_q.png").write_text("old")
    results = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "SMA", *COMMON,
                            "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]  # the user's file stays
    assert "held an earlier run's outputs, removed: " in capsys.readouterr().out
    assert results["complete"] is True and json.load(open(out / "results.json"))["complete"] is True


def test_an_input_inside_out_is_kept(trained_checkpoint, synthetic_dataset, tmp_path):
    """--uap out/uap.pt evaluates the perturbation an earlier run learned there: not removed."""
    import gen_adv
    out = tmp_path / "out"
    gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "UAP", "--eps", "8", "--uap-epochs", "1",
                  "--device", "cpu", "--workers", "0", "--out", str(out)])
    again = gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "UAP", "--eps", "8",
                          "--uap", str(out / "uap.pt"), "--device", "cpu", "--workers", "0", "--out", str(out)])
    assert (out / "uap.pt").exists() and again["attacks"]["UAP"]["uap"]["learned"] is False


def test_an_interrupted_run_says_so(trained_checkpoint, synthetic_dataset, tmp_path, monkeypatch, capsys):
    import gen_adv
    out = tmp_path / "out"
    run_attack = reid.evaluation.run.run_attack

    def second_fails(opts, name, *args, **kwargs):
        if name == "FNA":
            raise KeyboardInterrupt
        return run_attack(opts, name, *args, **kwargs)

    monkeypatch.setattr(reid.evaluation.run, "run_attack", second_fails)
    with pytest.raises(KeyboardInterrupt):
        gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "SMA", "FNA", *COMMON,
                      "--out", str(out)])
    partial = json.load(open(out / "results.json"))
    assert partial["complete"] is False and list(partial["attacks"]) == ["SMA"]
    capsys.readouterr()
    cli_main(lambda: report.main([str(out / "results.json")]))
    assert "is from a run that did not finish" in capsys.readouterr().out


def test_options_before_the_positionals_are_named(trained_checkpoint, synthetic_dataset):
    import gen_adv
    with pytest.raises(ReidError, match=r"\(0 positional argument\(s\) given\).*; -a took CK D m.th as attack "
                                        r"names: give the positionals first, or end -a's list with -- before them$"):
        gen_adv.main(["-a", "SMA", "CK", "D", "m.th"])


def dead_pid():
    import subprocess
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_two_runs_on_one_checkpoint_name_or_out_folder(trained_checkpoint, synthetic_dataset, tmp_path):
    """The second run stops at once; a lock left by a killed run is taken over and removed at the end."""
    import os
    import socket

    import gen_adv
    from tests.conftest import train_cli
    host = socket.gethostname()
    (tmp_path / ".m.lock").write_text(f"{os.getppid()} {host}\n")  # a live process: another run
    proc = train_cli(synthetic_dataset, tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: -f m.th in {tmp_path}: another run (process {os.getppid()} on {host}) is writing it; wait for "
        f"it to end, or remove {tmp_path / '.m.lock'} if that run is gone"]
    assert not (tmp_path / "m.th").exists()
    (tmp_path / ".m.lock").write_text(f"{dead_pid()} {host}\n")  # killed: taken over
    train_cli(synthetic_dataset, tmp_path)
    assert (tmp_path / "m.th").exists() and not (tmp_path / ".m.lock").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".reid-run.lock").write_text(f"{os.getppid()} {host}\n")
    with pytest.raises(ReidError, match=rf"^--out {out}: another run \(process {os.getppid()} on "):
        gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", *COMMON, "--out", str(out)])
    (out / ".reid-run.lock").write_text("")  # torn by a kill
    gen_adv.main([str(trained_checkpoint), synthetic_dataset, "m.th", *COMMON, "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def _save_all(out, data, split_name, layout_tf=(64, 32)):
    """ImageSaver over every image of one split of `data`, as attack_split would call it."""
    from reid.data import build_transforms, read_image
    from reid.evaluation.outputs import ImageSaver
    from reid.evaluation.splits import Split
    samples = getattr(data, split_name)
    split = Split(split_name, None, None, None, samples)
    saver = ImageSaver(str(out), "FNA", split, data, eps=5)
    tf = build_transforms(*layout_tf)
    clean = torch.stack([tf(read_image(s.path)) for s in samples])
    saver(clean, (clean + 4 / 255).clamp(0, 1), torch.arange(len(samples)), torch.ones(len(samples), dtype=torch.bool))
    return saver


def test_saved_images_are_partial_until_finished(tiny_market, tmp_path):
    """--save-images writes images/<NAME>.partial/ and renames it once every image is saved."""
    from reid.data import load_dataset
    data = load_dataset(tiny_market)
    saver = _save_all(tmp_path, data, "query")
    assert sorted(os.listdir(tmp_path / "images")) == ["FNA.partial"]  # a kill here leaves no "FNA" folder
    saver.finish()
    assert sorted(os.listdir(tmp_path / "images")) == ["FNA"]
    saved = load_dataset(str(tmp_path / "images" / "FNA"))
    assert [(s.pid, s.camid) for s in saved.query] == [(s.pid, s.camid) for s in data.query]


@pytest.mark.parametrize("split", ["query", "gallery"])
def test_openreid_saved_images_load_as_a_dataset(tmp_path, split):
    """An open-reid dataset's --save-images folder loads back with the same ids and cameras."""
    from reid.data import load_dataset
    from reid.data.synthetic import generate
    root = tmp_path / "personx"
    generate(str(root), ids=4, cams=3, seed=0, height=64, width=32, distractors=2, layout="openreid")
    data = load_dataset(str(root), "openreid")
    _save_all(tmp_path, data, split).finish()
    saved = load_dataset(str(tmp_path / "images" / "FNA"), "openreid")
    for name in ("train", "query", "gallery"):
        assert [(s.pid, s.camid) for s in getattr(saved, name)] == [(s.pid, s.camid) for s in getattr(data, name)]
    assert saved.train_pids == data.train_pids
    attacked = getattr(saved, split)
    assert all(s.path.endswith(".png") and os.path.dirname(s.path) == str(tmp_path / "images" / "FNA" / "images")
               for s in attacked)
    other = saved.gallery if split == "query" else saved.query
    assert all(os.path.samefile(a.path, b.path) for a, b in zip(other, data.gallery if split == "query" else data.query))
