"""Transfer techniques of the gradient attacks (issue 23): input diversity and translation
invariance, one model wrapper every optimiser calls."""

import numpy as np
import pytest
import torch

from conftest import tiny_model
from reid import ReidError, evaluate_robustness
from reid.attacks import attack_batch, plan_attack
from reid.attacks.diversity import SmoothGradient, TransferModel, gaussian_kernel, resize_pad
from reid.defences import InputDefence


def images(n=4, seed=0):
    return torch.rand(n, 3, 16, 8, generator=torch.Generator().manual_seed(seed))


def test_resize_pad_keeps_size_and_range_and_is_the_input_defence_at_p_1():
    x = images()
    torch.manual_seed(3)
    out = resize_pad(x, 0.9, p=0.5)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    torch.manual_seed(3)
    assert torch.equal(resize_pad(x, 0.9, p=0.5), out)                 # reproducible by seed
    assert torch.equal(resize_pad(x, 0.9, p=0.0), x)                   # p = 0: the images as they are
    torch.manual_seed(4)
    defended = InputDefence(torch.nn.Identity(), "resize-pad:0.9")(x)
    torch.manual_seed(4)
    assert torch.equal(resize_pad(x, 0.9, p=1.0), defended)            # one transformation, two uses
    assert 0 < sum(kept) < len(x)                                       # p = 0.5: some of each


def brute_conv(plane, kernel):
    """Zero-padded 'same' correlation of one channel (H, W) with a (k, k) kernel, by loops."""
    k = kernel.shape[0]
    pad = np.pad(plane, k // 2)
    return np.array([[(pad[i:i + k, j:j + k] * kernel).sum() for j in range(plane.shape[1])]
                     for i in range(plane.shape[0])])


def test_translation_invariance_smooths_the_gradient_with_a_normalised_gaussian():
    kernel = gaussian_kernel(5)
    assert kernel.shape == (3, 1, 5, 5)
    assert torch.allclose(kernel.sum((1, 2, 3)), torch.ones(3))
    k = kernel[0, 0].numpy()
    assert np.allclose(k, k.T) and np.allclose(k, k[::-1]) and k.argmax() == 12  # symmetric, peak at the centre
    with pytest.raises(ValueError):
        gaussian_kernel(4)
    x = images(2).requires_grad_()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    (SmoothGradient.apply(x, kernel) * weights).sum().backward()
    for b in range(2):
        for c in range(3):
            assert np.allclose(x.grad[b, c].numpy(), brute_conv(weights[b, c].numpy(), k), atol=1e-6)
    y = images(2)
    assert torch.equal(SmoothGradient.apply(y, kernel), y)                # the identity forward


def test_attacks_with_the_techniques_keep_the_budget_and_are_reproducible():
    model = tiny_model()
    x = images(6)
    with torch.no_grad():
        feats = model(x)
    pids = torch.tensor([1, 1, 2, 2, 3, 3])
    plan = plan_attack("IFGSM", feats, pids)

    def run(**kw):
        return attack_batch(model, x, plan, range(6), eps=8, step=2, max_iter=5,
                            generator=torch.Generator().manual_seed(0), **kw)[0]
    plain = run()
    shaped = run(diversity=0.7, smoothing=3)
    assert torch.equal(shaped, run(diversity=0.7, smoothing=3))         # seeded: the same draws
    assert not torch.equal(shaped, plain)
    assert (shaped - x).abs().max() <= 8 / 255 + 1e-7 and 0 <= shaped.min() and shaped.max() <= 1
    wrapped = TransferModel(model, 0.0, 0)
    assert torch.equal(wrapped(x), model(x))                            # both off: the model itself


def test_technique_flags_are_checked_and_recorded(synthetic_dataset, tmp_path):
    model = tiny_model()
    common = dict(input_size=(64, 32), device="cpu", workers=0)
    for options, message in (({"input_diversity": 1.5}, "--input-diversity 1.5: expected a probability"),
                             ({"translation_invariance": 4}, "--translation-invariance 4: expected 0"),
                             ({"input_diversity": 0.5, "attacks": "SQUARE_RANK"}, "no attack of -a uses it")):
        options = {"attacks": "IFGSM", **options}
        with pytest.raises(ReidError, match=message):
            evaluate_robustness(model, synthetic_dataset, out=str(tmp_path / "bad"), **common, **options)
    results = evaluate_robustness(model, synthetic_dataset, attacks="IFGSM", out=str(tmp_path / "di"), nb_repeat=2,
                                  input_diversity=0.5, translation_invariance=3, max_iter=2, **common)
    entry = results["attacks"]["IFGSM"]
    assert entry["input_diversity"] == 0.5 and entry["translation_invariance"] == 3
    assert len(entry["runs"]) == 2 and "deterministic" not in entry     # input diversity draws: runs differ
