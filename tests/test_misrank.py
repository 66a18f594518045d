"""The Mis-Ranking generator (reid/attacks/misrank.py, -a MisRank): its budget, its loss by hand,
the one-backward training step that keeps generator and discriminator apart, and gen_adv.py
training, saving, reloading and evaluating it."""

import json

import pytest
import torch

from reid.attacks.misrank import (GeneratorConfig, GeneratorPair, MisRankObjective, PerturbationGenerator, gan_loss,
                                  misrank_loss)
from reid.runtime import ReidError
from reid.runtime.files import file_sha256

COMMON = ["--eps", "8", "--seed", "1", "--device", "cpu", "--workers", "0"]


@pytest.mark.parametrize("size", [(64, 32), (30, 14)])
def test_the_generator_keeps_the_budget_the_size_and_the_range(size):
    torch.manual_seed(0)
    g = PerturbationGenerator(eps=8, width=8, blocks=1)
    x = torch.rand(3, 3, *size)
    delta = g(x)
    assert delta.shape == x.shape and delta.abs().max() <= 8 / 255 + 1e-7
    out = g.perturb(x)
    assert out.min() >= 0 and out.max() <= 1 and (out - x).abs().max() <= 8 / 255 + 1e-7


def test_misrank_loss_by_hand():
    torch.manual_seed(0)
    adv, clean = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([1, 1, 2, 2, 3])  # the lone image of identity 3 has no true match: left out
    a, c = (torch.nn.functional.normalize(t, dim=1) for t in (adv, clean))
    terms = []
    for i in range(4):
        pos = [float((a[i] - c[j]).norm()) for j in range(5) if j != i and labels[j] == labels[i]]
        neg = [float((a[i] - c[j]).norm()) for j in range(5) if labels[j] != labels[i]]
        terms.append(max(0.0, max(neg) - min(pos) + 0.3))
    assert misrank_loss(adv, clean, labels, 0.3).item() == pytest.approx(sum(terms) / 4, rel=1e-5)
    with pytest.raises(ReidError, match="P x K"):
        misrank_loss(adv[:2], clean[:2], torch.tensor([1, 2]), 0.3)


def test_one_backward_trains_each_network_on_its_own_loss():
    """The objective's gradient on the discriminator is that of its loss alone (the perturbed
    images detached), on the generator that of the mis-ranking and GAN terms alone (the
    discriminator's weights detached), and the surrogate gets none."""
    from conftest import tiny_model
    torch.manual_seed(0)
    surrogate = tiny_model(dim=8)
    config = GeneratorConfig(eps=8, width=8, blocks=1)
    pair = GeneratorPair(config)
    images, labels = torch.rand(4, 3, 16, 8), torch.tensor([1, 1, 2, 2])
    loss, _ = MisRankObjective(surrogate, config)(pair, images, labels)
    loss.backward()
    got = {n: p.grad.clone() for n, p in pair.named_parameters()}
    assert all(p.grad is None for p in surrogate.parameters())

    pair.zero_grad()
    adv = pair.generator.perturb(images)
    with torch.no_grad():
        clean = surrogate(images)
    g_loss = misrank_loss(surrogate(adv), clean, labels, 0.3)
    d_fake = pair.discriminator(adv)
    g_loss = g_loss + config.gan_weight * gan_loss(d_fake, real=True)
    g_grads = torch.autograd.grad(g_loss, list(pair.generator.parameters()))
    d_loss = (gan_loss(pair.discriminator(images), True) + gan_loss(pair.discriminator(adv.detach()), False)) / 2
    d_grads = torch.autograd.grad(d_loss, list(pair.discriminator.parameters()))
    for (name, _), want in zip(pair.generator.named_parameters(), g_grads):
        torch.testing.assert_close(got[f"generator.{name}"], want, rtol=1e-4, atol=1e-7)
    for (name, _), want in zip(pair.discriminator.named_parameters(), d_grads):
        torch.testing.assert_close(got[f"discriminator.{name}"], want, rtol=1e-4, atol=1e-7)


def test_gen_adv_trains_saves_and_reloads_the_generator(trained_checkpoint, synthetic_dataset, tmp_path):
    import gen_adv
    base = [str(trained_checkpoint), synthetic_dataset, "m.th", "-a", "MisRank", *COMMON]
    first = gen_adv.main(base + ["--generator-epochs", "1", "--out", str(tmp_path / "a")])
    entry = first["attacks"]["MisRank"]
    info = entry["generator"]
    assert info["learned"] and info["file"] == str(tmp_path / "a" / "generator.pt")
    assert info["source_checkpoint_sha256"] == file_sha256(str(trained_checkpoint / "m.th"))
    assert info["config"]["eps"] == 8 and info["config"]["epochs"] == 1 and len(info["history"]) == 1
    assert 0 < entry["max_perturbation"] <= 8 + 1e-3 and entry["images_attacked"] > 0
    again = gen_adv.main(base + ["--generator", info["file"], "--out", str(tmp_path / "b")])
    assert again["attacks"]["MisRank"]["mean"] == entry["mean"]  # the same weights, the same numbers
    assert again["attacks"]["MisRank"]["generator"]["learned"] is False
    assert json.load(open(tmp_path / "b" / "results.json"))["attacks"]["MisRank"]["mean"] == entry["mean"]
    assert not (tmp_path / "b" / "generator.pt").exists()
    with pytest.raises(ReidError, match=r"its budget 8/255 exceeds --eps 4"):
        gen_adv.main([*base[:5], "--eps", "4", "--device", "cpu", "--workers", "0", "--generator", info["file"],
                      "--out", str(tmp_path / "c")])


@pytest.mark.parametrize("extra, message", [
    (["-a", "FNA", "--generator", "x.pt"], "--generator: only used with -a MisRank"),
    (["-a", "FNA", "--generator-epochs", "2"], "--generator-epochs: only used with -a MisRank"),
    (["-a", "MisRank", "--generator-epochs", "0"], "--generator-epochs"),
    (["-a", "MisRank", "--generator", "nope.pt"], "--generator nope.pt: no such file"),
    (["-a", "MisRank", "--norm", "l2"], "--norm l2"),
])
def test_generator_flag_errors_are_one_line(tmp_path, extra, message):
    import gen_adv
    with pytest.raises(ReidError) as err:
        gen_adv.parse_args([str(tmp_path), str(tmp_path), "m.th", *extra])
    assert message in str(err.value) and "\n" not in str(err.value), err.value


def test_a_file_that_is_not_a_generator_is_one_line(tmp_path):
    from reid.attacks.misrank import load_generator
    path = tmp_path / "g.pt"
    torch.save({"delta": torch.zeros(3)}, path)
    with pytest.raises(ReidError, match=r"is not a generator file"):
        load_generator(str(path))
    import gen_adv
    with pytest.raises(ReidError, match="not trained again"):
        gen_adv.parse_args([str(tmp_path), str(tmp_path), "m.th", "-a", "MisRank", "--generator", str(path),
                            "--generator-epochs", "2"])
