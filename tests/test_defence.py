"""Defence against universal perturbations (reid/defences/universal.py): the perturb-and-append batch, the
online MI-SGD step, the meta branch's gradient against brute force, train.py end to end."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from reid.attacks import UapConfig, save_uap
from reid.attacks.universal import apply_delta
from reid.defences import MetaObjective, UapDefence, check_defence_flags
from reid.defences.universal import UapDefenceConfig, half_objective_grad
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError, file_sha256
from reid.training import Objective, batch_hard_triplet_loss
from tests.conftest import run_cli, tiny_model, train_cli

EPS = 8.0
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4])     # identity 4 alone; B = 9, half = 4


def _delta(seed=0, size=(16, 8), eps=EPS):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(3, *size, generator=gen) * 2 - 1) * eps / 255


def _images(seed=1, n=len(LABELS), size=(16, 8)):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the batch

def test_perturb_and_append_batch():
    delta, images = _delta(), _images()
    defence = UapDefence(UapDefenceConfig("file", EPS), delta, seed=3)
    defence.start_epoch(2)
    out, labels = defence(tiny_model(), images, LABELS)
    b, half = len(images), len(images) // 2
    assert out.shape == (b + half, *images.shape[1:]) and labels.shape == (b + half,)
    assert torch.equal(out[:b], images) and torch.equal(labels[:b], LABELS)
    rows = defence.rows(b)                                   # this step's half
    assert len(rows) == half == len(set(rows.tolist())) and bool((rows.diff() > 0).all())
    assert torch.equal(labels[b:], LABELS[rows])
    perturbed = out[b:]
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    assert (perturbed - images[rows]).abs().max() <= EPS / 255 + 1e-7
    assert torch.equal(perturbed, apply_delta(images[rows], delta))
    assert torch.equal(defence.delta, delta)                 # a file's delta never moves

    # the half depends on (seed, epoch, step) only: a fresh defence at the same place draws it again
    again = UapDefence(UapDefenceConfig("file", EPS), delta, seed=3)
    again.start_epoch(2)
    assert torch.equal(again(tiny_model(), images, LABELS)[0], out)
    draws = {}
    for seed, epoch, steps in ((3, 2, 1), (3, 2, 2), (3, 3, 1), (4, 2, 1)):
        d = UapDefence(UapDefenceConfig("file", EPS), delta, seed=seed)
        d.start_epoch(epoch)
        for _ in range(steps):
            d(tiny_model(), images, LABELS)
        draws[seed, epoch, steps] = tuple(d.rows(64).tolist())
    assert len(set(draws.values())) == 4                     # other step, epoch or seed: another half
    assert tuple(defence.rows(64).tolist()) == draws[3, 2, 1]


# ----------------------------------------------------------------------------- online step

def _brute_objective(model, images, labels, rows, delta):
    """The batch objective by loops: -10 mean_b [d(f_b, n_b) - d(f_b, p_b) + 0.5]_+ over the whole
    batch, f_b the normalised feature (perturbed for ``rows``), p_b / n_b the furthest same / other
    identity clean feature (normalised) of the whole batch (itself when alone)."""
    with torch.no_grad():
        clean = F.normalize(model(images), dim=1)
    terms = []
    for i in range(len(images)):
        x = apply_delta(images[i:i + 1], delta) if i in rows else images[i:i + 1]
        f = F.normalize(model(x), dim=1)[0]
        dist = [float((clean[i] - clean[j]).norm()) for j in range(len(images))]
        same = [j for j in range(len(images)) if labels[j] == labels[i]]
        other = [j for j in range(len(images)) if labels[j] != labels[i]] or [i]
        p, n = max(same, key=lambda j: dist[j]), max(other, key=lambda j: dist[j])
        terms.append(F.relu((f - clean[n]).norm() - (f - clean[p]).norm() + 0.5))
    return -10 * torch.stack(terms).mean()


def test_half_objective_and_its_gradient_against_brute_force():
    model, images = tiny_model(dim=8), _images()
    rows = torch.tensor([1, 4, 5, 8])
    delta = _delta(seed=5)
    value, grad = half_objective_grad(model, UapConfig(loss="batch", eps=EPS), images, LABELS, rows, delta)
    d = delta.clone().requires_grad_(True)
    expected = _brute_objective(model.eval(), images, LABELS, rows.tolist(), d)
    (expected_grad,) = torch.autograd.grad(expected, d)
    assert value == pytest.approx(float(expected.detach()), abs=1e-5)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_online_step_moves_delta_within_budget_and_raises_the_objective():
    model, images = tiny_model(dim=8).train(), _images()
    model[1].bias.requires_grad_(False)
    running_mean = model[1].running_mean.clone()
    defence = UapDefence(UapDefenceConfig("online", EPS), torch.zeros(3, 16, 8))
    out, labels = defence(model, images, LABELS)
    rows = defence.rows(len(images))
    alpha = EPS / 10 / 255
    assert (defence.delta != 0).any() and defence.momentum.abs().sum() > 0
    assert defence.delta.abs().max() <= alpha + 1e-7                    # one step of eps / 10
    assert torch.equal(out[len(images):], apply_delta(images[rows], defence.delta))   # the new delta
    # the model comes back as it was: train mode, own flags, no .grad, same BatchNorm statistics
    assert model.training and not model[1].bias.requires_grad and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, running_mean)
    config = UapConfig(loss="batch", eps=EPS)
    before, _ = half_objective_grad(model, config, images, LABELS, rows, torch.zeros(3, 16, 8))
    after, _ = half_objective_grad(model, config, images, LABELS, rows, defence.delta)
    assert after > before and defence.epoch_stats()["uap_objective"] == pytest.approx(before)
    # many steps stay within the budget
    for _ in range(15):
        defence(model, images, LABELS)
    assert defence.delta.abs().max() <= EPS / 255 + 1e-7


# ----------------------------------------------------------------------------- meta branch

def test_meta_gradient_equals_the_explicit_inner_step():
    """grad of the step = grad L_src(params) + grad L_meta(params'), params' = params - lr grad L_src,
    computed here by building params' as the weights of a copy of the model."""
    model = tiny_model(dim=8).train()
    images, meta_images = _images(seed=1), _images(seed=2, n=8)
    meta_labels = torch.tensor([5, 5, 6, 6, 7, 7, 8, 8])
    lr = 0.05

    def fresh():
        d = UapDefence(UapDefenceConfig("file", EPS), _delta(seed=4), seed=1)
        d.step = 0
        return d

    inner = Objective("triplet", soft_margin=True)
    meta = MetaObjective(inner, fresh(), lr, lambda epoch, cycle: [(meta_images, meta_labels)])
    meta.defence.step = 0
    reference = copy.deepcopy(model)
    loss, _ = meta(model, images, LABELS)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]

    # by hand: L_src and its gradient at params; params' in a copy; L_meta's gradient there
    params = list(reference.parameters())
    src = inner(reference, images, LABELS)[0]
    g_src = torch.autograd.grad(src, params)
    stepped = copy.deepcopy(reference)
    with torch.no_grad():
        for p, g in zip(stepped.parameters(), g_src):
            p -= lr * g
    m_images, m_labels = fresh().perturb_and_append(meta_images, meta_labels, stream=1)
    assert len(m_images) == 12
    meta_loss = batch_hard_triplet_loss(stepped(m_images), m_labels, soft_margin=True)
    g_meta = torch.autograd.grad(meta_loss, list(stepped.parameters()))
    assert float(loss.detach()) == pytest.approx(float(src.detach()) + float(meta_loss.detach()), rel=1e-5)
    for a, gs, gm in zip(got, g_src, g_meta):
        assert torch.allclose(a, gs + gm, atol=1e-6)
    stats = meta.epoch_stats()
    assert stats["src_loss"] == pytest.approx(float(src.detach()))
    assert stats["meta_loss"] == pytest.approx(float(meta_loss.detach()))


def test_meta_batches_restart_within_an_epoch():
    seen = []

    def batches(epoch, cycle):
        seen.append((epoch, cycle))
        return [(torch.zeros(1), torch.zeros(1))] * 2

    meta = MetaObjective(Objective("triplet"), None, 0.1, batches)
    meta.start_epoch(3)
    for _ in range(5):
        meta.next_batch()
    assert seen == [(3, 0), (3, 1), (3, 2)]
    empty = MetaObjective(Objective("triplet"), None, 0.1, lambda epoch, cycle: [])
    with pytest.raises(ReidError, match="no P x K batch"):
        empty.next_batch()


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize("kwargs,needle", [
    (dict(uap_adv="online", adv=True), "--uap-adv and --adv: choose one defence"),
    (dict(uap_adv=None, meta_dataset="D"), "--meta-dataset: only used with --uap-adv"),
    (dict(uap_adv=None, eps=4.0), "--uap-eps: only used with --uap-adv"),
    (dict(uap_adv="online", meta_lr=0.1), "--meta-lr: only used with --meta-dataset"),
    (dict(uap_adv="uap.pt", eps=4.0), "--uap-eps: only for --uap-adv online"),
    (dict(uap_adv="online", eps=0.0), "--uap-eps 0"),
    (dict(uap_adv="online", eps=300.0), "--uap-eps 300"),
    (dict(uap_adv="online", meta_dataset="D", meta_lr=-1.0), "--meta-lr -1"),
])
def test_flag_errors_are_one_line(kwargs, needle):
    with pytest.raises(ReidError) as err:
        check_defence_flags(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def _one_line_error(proc, needle):
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("extra,needle", [
    (["--uap-adv", "online", "--adv", "--sma"], "--uap-adv and --adv: choose one defence"),
    (["--meta-dataset", "."], "--meta-dataset: only used with --uap-adv"),
    (["--uap-adv", "no_such_uap.pt"], "--uap-adv no_such_uap.pt: no such file"),
])
def test_cli_flag_errors(synthetic_dataset, tmp_path, extra, needle):
    _one_line_error(train_cli(synthetic_dataset, tmp_path / "ckpt", *extra, check=False), needle)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("content,needle", [
    (b"not a torch file", "is not a universal perturbation file: torch.load failed"),
    ({"weights": torch.zeros(3)}, "is not a universal perturbation file (expected a dict with 'delta'"),
    ({"delta": torch.full((3, 8, 4), 0.5), "eps": 8.0}, "above its recorded eps 8/255"),
])
def test_bad_uap_file_is_one_line(synthetic_dataset, tmp_path, content, needle):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    proc = train_cli(synthetic_dataset, tmp_path / "ckpt", "--uap-adv", path, check=False)
    _one_line_error(proc, "--uap-adv: ")
    assert needle in proc.stderr
    assert not (tmp_path / "ckpt").exists()


# ----------------------------------------------------------------------------- train.py

def test_file_defence_epoch_end_to_end_and_evaluation(synthetic_dataset, tmp_path):
    uap = tmp_path / "uap.pt"
    save_uap(str(uap), _delta(seed=7, size=(32, 16)), UapConfig(eps=EPS))   # half size: resized
    proc = train_cli(synthetic_dataset, tmp_path, "--uap-adv", uap)
    assert "universal-perturbation defence: fixed delta" in proc.stdout and "resized from 32x16" in proc.stdout
    ckpt = read_checkpoint(str(tmp_path / "m-last.th"))
    assert ckpt["uap_adv"] == {"mode": "file", "eps": EPS, "file": str(uap), "sha256": file_sha256(str(uap)),
                               "meta_dataset": None, "meta_dataset_kind": None, "meta_lr": None}
    assert ckpt["args"]["uap_adv"] == str(uap) and ckpt["goat"] is None
    # a defended checkpoint evaluates as usual
    run_cli("gen_adv.py", tmp_path, synthetic_dataset, "m.th", "-a", "clean", "--workers", 0, "--device", "cpu",
            "--out", tmp_path / "eval")
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert 0 <= results["clean"]["mAP"] <= 1


def _train_online(dataset, ckpt_dir, *extra, epochs=1, check=True):
    return train_cli(dataset, ckpt_dir, "--uap-adv", "online", *extra, epochs=epochs, check=check)


def test_online_defence_end_to_end_and_resume(synthetic_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _train_online(synthetic_dataset, straight, epochs=2)
    assert "online delta (one MI-SGD step of 0.8/255 per batch" in proc.stdout
    a = read_checkpoint(str(straight / "m-last.th"))
    record = a["uap_adv"]
    assert {k: v for k, v in record.items() if k not in ("delta", "momentum")} == {
        "mode": "online", "eps": EPS, "file": None, "sha256": None, "meta_dataset": None,
        "meta_dataset_kind": None, "meta_lr": None}
    assert record["delta"].shape == (3, 64, 32) and 0 < record["delta"].abs().max() <= EPS / 255 + 1e-7
    assert record["momentum"].abs().sum() > 0
    log = [json.loads(line) for line in open(straight / "m.log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1] and all("uap_objective" in r for r in log)

    _train_online(synthetic_dataset, resumed, epochs=1)
    proc = _train_online(synthetic_dataset, resumed, "--resume", epochs=2)
    assert "resuming" in proc.stdout
    b = read_checkpoint(str(resumed / "m-last.th"))
    assert a["epoch"] == b["epoch"] == 1
    for k in a["net"]:
        assert torch.allclose(a["net"][k].float(), b["net"][k].float(), atol=1e-5), k
    assert torch.allclose(a["uap_adv"]["delta"], b["uap_adv"]["delta"], atol=1e-7)
    assert torch.allclose(a["uap_adv"]["momentum"], b["uap_adv"]["momentum"], atol=1e-5)

    # resuming with other settings, or without the defence, would silently change the run: refused
    for extra in (["--uap-eps", "4"], []):
        flags = ["--uap-adv", "online", *extra] if extra else []
        proc = train_cli(synthetic_dataset, resumed, *flags, "--resume", epochs=3, check=False)
        _one_line_error(proc, "--uap-adv settings")


@pytest.fixture(scope="module")
def meta_dataset(tmp_path_factory):
    from reid.data.synthetic import generate

    out = str(tmp_path_factory.mktemp("meta") / "virtual")
    generate(out, ids=8, cams=2, seed=1, style="virtual", distractors=2, junk=0)
    return out


def test_meta_defence_epoch_end_to_end(synthetic_dataset, meta_dataset, tmp_path):
    proc = _train_online(synthetic_dataset, tmp_path, "--meta-dataset", meta_dataset, "--meta-lr", "0.01")
    assert "meta branch on" in proc.stdout
    ckpt = read_checkpoint(str(tmp_path / "m-last.th"))
    assert (ckpt["uap_adv"]["mode"], ckpt["uap_adv"]["meta_dataset"], ckpt["uap_adv"]["meta_dataset_kind"],
            ckpt["uap_adv"]["meta_lr"]) == ("online", meta_dataset, "market", 0.01)
    log = json.loads(open(tmp_path / "m.log.jsonl").readline())
    assert log["meta_loss"] > 0 and log["loss"] == pytest.approx(log["src_loss"] + log["meta_loss"], rel=1e-4)
    proc = _train_online(synthetic_dataset, tmp_path, "--resume", epochs=2, check=False)   # meta branch dropped
    _one_line_error(proc, "--uap-adv settings")
