"""Runs that share a folder: a unique default --out, a folder's outputs replaced as a set, an
unfinished results.json marked as such (issue 19, part 2)."""

import json

import pytest

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
