"""reid.evaluate_robustness: the Python entry point runs gen_adv.py's evaluation path."""

import json
import os
import subprocess
import sys

import pytest
import torch

import reid
from reid.models import load_model
from reid.runtime import ReidError, file_sha256
from tests.conftest import ROOT, run_cli, tiny_model

OPTIONS = dict(max_iter=3, device="cpu", workers=0, nb_repeat=2, seed=3)


def test_api_equals_cli(trained_checkpoint, synthetic_dataset, tmp_path):
    cli_out = tmp_path / "cli"
    run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "SMA", "FNA", "--eps", 3,
            "--max_iter", 3, "-n", 2, "--seed", 3, "--device", "cpu", "--workers", 0, "--out", cli_out)
    cli = json.load(open(cli_out / "results.json"))
    model, _ = load_model(str(trained_checkpoint / "m.th"))
    api = reid.evaluate_robustness(model, synthetic_dataset, attacks=["SMA", "FNA"], eps=3, input_size=(64, 32),
                                   out=str(tmp_path / "api"), **OPTIONS)
    assert api["clean"] == cli["clean"]
    for name in ("SMA", "FNA"):  # every run, every metric: the same code path, the same numbers
        assert api["attacks"][name]["runs"] == cli["attacks"][name]["runs"]
    assert json.load(open(tmp_path / "api" / "results.json"))["attacks"]["FNA"]["runs"] == api["attacks"]["FNA"]["runs"]


def test_api_on_a_custom_model(synthetic_dataset, tmp_path):
    results = reid.evaluate_robustness(tiny_model(), synthetic_dataset, attacks="SMA", eps=4, input_size=(64, 32),
                                       out=str(tmp_path / "o"), **OPTIONS)
    assert results["config"]["model"] == "Sequential"
    entry = results["attacks"]["SMA"]
    assert len(entry["runs"]) == 2 and 0 < entry["max_perturbation"] <= 4 + 1e-4


@pytest.mark.parametrize("kwargs, message", [
    (dict(attacks=["FNA"], colour="red"), r"^evaluate_robustness: unknown option 'colour'; expected one of "),
    (dict(attacks=["NOPE"]), r"^unknown attack 'NOPE'; valid attacks: "),
    (dict(attacks=["FNA"], eps=-1), r"^--eps -1: must be in \(0, 255\]"),
    (dict(attacks=["FNA"], input_size=(8, 32)), r"^input_size height 8: "),
])
def test_api_errors(synthetic_dataset, tmp_path, kwargs, message):
    with pytest.raises(ReidError, match=message):
        reid.evaluate_robustness(tiny_model(), synthetic_dataset, out=str(tmp_path / "o"), **kwargs)
    assert not (tmp_path / "o").exists()


def test_api_refuses_what_is_not_a_module(synthetic_dataset, tmp_path):
    with pytest.raises(ReidError, match=r"^evaluate_robustness: model must be a torch.nn.Module, got function$"):
        reid.evaluate_robustness(lambda x: x, synthetic_dataset, attacks=["FNA"], out=str(tmp_path / "o"))


# -- gen_adv.py --model-factory: the CLI over the same path ---------------------------------

FACTORY = '''
import torch.nn as nn


def build():  # the architecture of tests.conftest.tiny_model
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(32, 16))


def feature_maps():
    return nn.Conv2d(3, 4, 3)


def broken():
    raise ValueError("no weights here")


def number():
    return 3
'''


def write_factory(folder, name):
    (folder / f"{name}.py").write_text(FACTORY)
    weights = folder / "w.pt"
    torch.save(tiny_model(seed=4).state_dict(), weights)
    return weights


def test_model_factory_cli_equals_api(synthetic_dataset, tmp_path):
    """The user's module is importable from the current directory; the CLI's numbers are the API's."""
    weights = write_factory(tmp_path, "tinyfac_cli")
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "gen_adv.py"), synthetic_dataset, "--model-factory",
                           "tinyfac_cli:build", "--weights", "w.pt", "--height", "64", "--width", "32",
                           "-a", "SMA", "FNA", "--eps", "3", "--max_iter", "3", "-n", "2", "--seed", "3",
                           "--device", "cpu", "--workers", "0", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cli = json.load(open(out / "results.json"))
    api = reid.evaluate_robustness(tiny_model(seed=4), synthetic_dataset, attacks=["SMA", "FNA"], eps=3,
                                   input_size=(64, 32), out=str(tmp_path / "api"), **OPTIONS)
    assert cli["clean"] == api["clean"]
    for name in ("SMA", "FNA"):
        assert cli["attacks"][name]["runs"] == api["attacks"][name]["runs"]
    config = cli["config"]
    assert config["model_factory"] == "tinyfac_cli:build" and config["model"] == "Sequential"
    assert config["weights_sha256"] == file_sha256(str(weights)) and config["input_size"] == [64, 32]


@pytest.mark.parametrize("args, message", [
    (["--model-factory", "nowhere_mod:build"],
     r"^--model-factory nowhere_mod:build: cannot import nowhere_mod from the current directory or PYTHONPATH "),
    (["--model-factory", "tinyfac_err:missing"], r"^--model-factory tinyfac_err:missing: tinyfac_err \(.*"
                                                   r"tinyfac_err.py\) has no function missing$"),
    (["--model-factory", "tinyfac_err"], r"^--model-factory tinyfac_err: expected MODULE:FUNCTION "),
    (["--model-factory", "tinyfac_err:feature_maps"], r"^--model-factory tinyfac_err:feature_maps: the model maps a "
                                                        r"\(2, 3, 64, 32\) batch to shape \(2, 4, 62, 30\), expected "
                                                        r"features of shape \(B, D\)$"),
    (["--model-factory", "tinyfac_err:broken"],
     r"^--model-factory tinyfac_err:broken: broken\(\) failed \(ValueError: no weights here\)$"),
    (["--model-factory", "tinyfac_err:number"],
     r"^--model-factory tinyfac_err:number: number\(\) returned a int, expected a torch.nn.Module$"),
    (["--model-factory", "tinyfac_err:build", "--weights", "other.pt"],
     r"^--weights other.pt: does not fit the model of tinyfac_err:build \("),
    (["--model-factory", "tinyfac_err:build", "--weights", "nope.pt"], r"^weights file nope.pt does not exist$"),
    (["--model-factory", "tinyfac_err:build", "--classif"], r"^--classif: describes a checkpoint; not used with "),
    (["--model-factory", "tinyfac_err:build", "extra"], r"^--model-factory: expected one positional argument, the "
                                                         r"dataset folder \(2 given\)$"),
    (["--weights", "w.pt"], r"^--weights: only used with --model-factory"),
])
def test_model_factory_errors(synthetic_dataset, tmp_path, monkeypatch, args, message):
    import gen_adv
    write_factory(tmp_path, "tinyfac_err")
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ReidError, match=message) as err:
        gen_adv.main([synthetic_dataset, *args, "--height", "64", "--width", "32", "--device", "cpu",
                      "--out", str(out)])
    assert "\n" not in str(err.value) and not out.exists()


def test_api_takes_paths_and_numpy_numbers(synthetic_dataset, tmp_path):
    """What a Python user naturally passes: pathlib paths, numpy integers, one attack name."""
    import pathlib

    import numpy as np
    out = tmp_path / "paths"
    results = reid.evaluate_robustness(tiny_model(), pathlib.Path(synthetic_dataset), attacks="SMA",
                                       eps=np.int64(4), input_size=(np.int64(64), 32), out=out, max_iter=2,
                                       device="cpu", workers=0, nb_repeat=np.int32(1), seed=np.uint8(3))
    assert json.load(open(out / "results.json"))["attacks"]["SMA"] == results["attacks"]["SMA"]
    assert results["config"]["out"] == str(out) and results["config"]["dataset_folder"] == synthetic_dataset


@pytest.mark.parametrize("kwargs, message", [
    (dict(attacks=5), r"attacks=5: expected an attack name or a list of names"),
    (dict(attacks=["SMA", 3]), r"attack=\['SMA', 3\]: expected a list of strings"),
    (dict(input_size="64x32"), r"input_size='64x32': expected \(height, width\), two integers"),
    (dict(input_size=(64.0, 32)), r"input_size=\(64.0, 32\): expected \(height, width\), two integers"),
    (dict(nb_repeat="3"), r"nb_repeat='3': expected an integer"),
    (dict(batch_size=2.5), r"batch_size=2.5: expected an integer"),
    (dict(seed="0"), r"seed='0': expected an integer"),
    (dict(cosine=1), r"cosine=1: expected True or False"),
    (dict(eps="5"), r"eps='5': expected a number or a list of numbers or None"),
    (dict(out=3), r"out=3: expected a string or None"),
])
def test_api_wrong_types_are_one_line_before_any_work(synthetic_dataset, tmp_path, kwargs, message):
    args = dict(attacks="SMA", input_size=(64, 32), out=str(tmp_path / "o"), device="cpu", workers=0)
    args.update(kwargs)
    with pytest.raises(ReidError, match=rf"^evaluate_robustness: {message}$"):
        reid.evaluate_robustness(tiny_model(), synthetic_dataset, **args)
    assert not (tmp_path / "o").exists()


class Detached(torch.nn.Module):
    def __init__(self, transform):
        super().__init__()
        self.net, self.transform = tiny_model(), transform

    def forward(self, x):
        return self.transform(self.net(x))


@pytest.mark.parametrize("transform, message", [
    (lambda f: f.detach(), "the model's features carry no gradient with respect to the images"),
    (lambda f: (f * 100).long(), "maps a \\(2, 3, 64, 32\\) batch to torch.int64 features, expected floating point"),
    (lambda f: f / 0, "maps a \\(2, 3, 64, 32\\) batch to non-finite features"),
])
def test_api_model_probe_refuses_what_no_attack_can_use(synthetic_dataset, tmp_path, transform, message):
    """Said by the probe, before the clean pass, not at the first attack."""
    with pytest.raises(ReidError, match=rf"^evaluate_robustness: .*{message}"):
        reid.evaluate_robustness(Detached(transform), synthetic_dataset, attacks="SMA", input_size=(64, 32),
                                 out=str(tmp_path / "o"), device="cpu", workers=0)
    assert not (tmp_path / "o").exists()


def test_api_detached_model_is_fine_without_attacks(synthetic_dataset, tmp_path):
    results = reid.evaluate_robustness(Detached(lambda f: f.detach()), synthetic_dataset, input_size=(64, 32),
                                       out=str(tmp_path / "o"), device="cpu", workers=0)
    assert 0 < results["clean"]["mAP"] <= 1


def test_api_model_on_the_meta_device_is_one_line(synthetic_dataset, tmp_path):
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 32, 8))
    with pytest.raises(ReidError, match=r"^evaluate_robustness: the model's 1.weight is on the meta device"):
        reid.evaluate_robustness(model, synthetic_dataset, attacks="SMA", input_size=(64, 32),
                                 out=str(tmp_path / "o"), device="cpu", workers=0)
