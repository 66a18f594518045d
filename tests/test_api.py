"""reid.evaluate_robustness: the Python entry point runs gen_adv.py's evaluation path."""

import json

import pytest

import reid
from reid.checkpoint import load_model
from reid.utils import ReidError
from tests.conftest import run_cli, tiny_model

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
