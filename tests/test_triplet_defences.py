"""ACT, HM and EST (train.py --defence): mining, the objectives against brute force, the inner
attacks' budgets, one epoch end to end with an exact resume, and the flag errors."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import SMALL, run_cli, tiny_model, train_cli
from reid.defences import HardnessLoss, TripletDefence, mine_triplets, triplet_config
from reid.models import read_checkpoint
from reid.training import Objective


def test_mined_triplets_follow_their_rule():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    feats = torch.randn(12, 5)
    dist = torch.cdist(feats, feats)
    for rule in ("random", "softhard"):
        for _ in range(5):
            anc, pos, neg = mine_triplets(feats, labels, rule)
            assert anc.tolist() == list(range(0, 12, 2))
            assert (labels[pos] == labels[anc]).all() and (pos != anc).all() and (labels[neg] != labels[anc]).all()
            if rule != "softhard":
                continue
            for a, p, n in zip(anc.tolist(), pos.tolist(), neg.tolist()):   # brute force, one anchor at a time
                positives = [j for j in range(12) if labels[j] == labels[a] and j != a]
                negatives = [j for j in range(12) if labels[j] != labels[a]]
                far_pos = max(dist[a, j] for j in positives)
                near_neg = min(dist[a, j] for j in negatives)
                if any(dist[a, j] < far_pos for j in negatives):
                    assert dist[a, n] < far_pos
                if any(dist[a, j] > near_neg for j in positives):
                    assert dist[a, p] > near_neg
    with pytest.raises(ValueError, match="no other image of its identity"):
        mine_triplets(feats[:4], torch.tensor([0, 1, 2, 3]), "random")


def test_hardness_loss_by_hand():
    fa = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    fp = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    fn = torch.tensor([[0.0, 4.0], [0.0, 2.0]])
    target = torch.tensor([-2.0, -2.0]).repeat(3)
    # H = d(a, p) - d(a, n): -1 (harder than -2: nothing to do) and -1 ... then -1 - (-2) >= 0
    loss = HardnessLoss().per_sample(torch.cat([fa, fp, fn]), target)
    assert torch.allclose(loss, torch.zeros(6))
    target = torch.tensor([0.5, 0.0]).repeat(3)                          # destinations above both
    loss = HardnessLoss().per_sample(torch.cat([fa, fp, fn]), target)
    assert torch.allclose(loss, torch.tensor([-(1.5 ** 2), -1.0]).repeat(3))
    assert torch.isclose(HardnessLoss()(torch.cat([fa, fp, fn]), target), torch.tensor(-(1.5 ** 2) - 1.0))


class Linear(nn.Module):
    """A fixed linear map of the pixels: the features of any image are known by hand."""

    def __init__(self, dim=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim, 3 * 8 * 4) / 4)

    def forward(self, x):
        return x.flatten(1) @ self.w.t()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 3, 8, 4, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


@pytest.mark.parametrize("name", ["act", "hm"])
def test_objective_equals_its_formula_and_attacks_stay_in_budget(name):
    model = Linear()
    images, labels = _batch()
    base = Objective("triplet", margin=1.0)
    defence = TripletDefence(base, triplet_config(name, eps=4, iters=5, step=1))
    torch.manual_seed(3)
    loss, acc = defence(model, images, labels)
    assert acc is None
    torch.manual_seed(3)                                       # the same draws: the same triplets and start
    batch, batch_labels = TripletDefence(base, triplet_config(name, eps=4, iters=5, step=1)).adversarial(
        model, images, labels)
    t = 4
    assert len(batch) == (3 if name == "act" else 5) * t
    originals = torch.cat([images[0::2], images[1::2]])         # with K = 2 the positive is the anchor's pair
    with torch.no_grad():
        f = model(batch)
    d = lambda x, y: (x - y).norm(dim=1)                        # noqa: E731
    fa, fp, fn = f[:t], f[t:2 * t], f[2 * t:3 * t]
    expected = F.relu(d(fa, fp) - d(fa, fn) + 1.0).mean()
    if name == "act":
        assert torch.equal(batch[:t], images[0::2])             # the anchors stay clean
        assert (batch[t:2 * t] - images[1::2]).abs().max() <= 4 / 255 + 1e-6
        assert (batch_labels[2 * t:] != batch_labels[:t]).all()   # negatives of another identity
    else:
        assert torch.equal(batch[3 * t:], originals)            # clean anchors and positives, for the ICS term
        assert (batch[:2 * t] - originals).abs().max() <= 4 / 255 + 1e-6
        ca, cp = f[3 * t:4 * t], f[4 * t:]
        assert abs(defence.previous - expected.item()) < 1e-5  # the next step's destination comes from it
        expected = expected + 0.5 * F.relu(d(ca, fa) - d(ca, cp)).mean()
        assert defence.destination() == -min(max(defence.previous, 0.0), 1.0)
    assert torch.isclose(loss, expected, atol=1e-5)


def test_act_adversary_collapses_positive_and_negative():
    model = tiny_model(dim=8)
    images, labels = torch.rand(8, 3, 16, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    defence = TripletDefence(Objective("triplet"), triplet_config("act", eps=8, iters=10, step=1))
    torch.manual_seed(0)
    batch, batch_labels = defence.adversarial(model, images, labels)
    torch.manual_seed(0)
    with torch.no_grad():
        clean = model(images)
    anc, pos, neg = mine_triplets(clean, labels, "random")
    with torch.no_grad():
        before = (model(images[pos]) - model(images[neg])).norm(dim=1)
        after = (model(batch[4:8]) - model(batch[8:])).norm(dim=1)
    assert torch.equal(batch_labels, torch.cat([labels[anc], labels[pos], labels[neg]]))
    assert (batch[4:8] - images[pos]).abs().max() <= 8 / 255 + 1e-6
    assert (after < before).all() and after.mean() < 0.8 * before.mean()


def test_hm_adversary_raises_hardness_to_the_destination_and_no_further():
    from reid.attacks import perturb
    model = tiny_model(dim=8)
    torch.manual_seed(1)
    x = torch.rand(12, 3, 16, 8)
    with torch.no_grad():
        f = model(x)
    fa, fp, fn = f.chunk(3)
    h = (fa - fp).norm(dim=1) - (fa - fn).norm(dim=1)
    dest = h.clone()
    dest[:2] += 0.05                                   # two triplets asked to become harder
    dest[2:] -= 1.0                                    # two already harder than asked: left alone
    adv = perturb(model, x, dest.repeat(3), eps=8, step=1, max_iter=10, rand_start=False, loss=HardnessLoss())
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        g = model(adv)
    ga, gp, gn = g.chunk(3)
    h_adv = (ga - gp).norm(dim=1) - (ga - gn).norm(dim=1)
    assert (h_adv[:2] > h[:2]).all()
    for part in range(3):                              # triplets 2 and 3: all three images untouched
        assert torch.equal(adv[part * 4 + 2: part * 4 + 4], x[part * 4 + 2: part * 4 + 4])


FLAGS = ["--id_batch", "-ni", "4", "--adv-iters", "2"]
SMALL_NET = ["--arch", "timm:resnet18"]   # the defences do not depend on the backbone; a small one is quicker


def _train(data, ckpt, kind, *flags, epochs=1, check=True):
    """train.py at 64x32 on CPU with the head ``kind``, checkpoint `m.th` in `ckpt`."""
    return run_cli("train.py", data, kind, "-n", epochs, "-b", 16, "-f", "m.th", *SMALL, "--workers", 0,
                   "--device", "cpu", "--checkpoint-dir", ckpt, *flags, check=check)


@pytest.mark.parametrize("defence, kind", [("hm", "--triplet"), ("act", "--classif")])
def test_defence_epoch_end_to_end_records_and_resumes_exactly(synthetic_dataset, tmp_path, defence, kind):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ["--defence", defence, *FLAGS, *SMALL_NET]
    proc = _train(synthetic_dataset, straight, kind, *flags, epochs=2)
    assert {"hm": "HM: soft-hard triplets", "act": "ACT: positive and negative"}[defence] in proc.stdout
    a = read_checkpoint(str(straight / "m-last.th"))
    record = a["defence"]
    assert {k: v for k, v in record.items() if k != "state"} == {
        "name": defence, "eps": 5.0, "iters": 2, "step": 1.0, "norm": "linf"}
    assert a["goat"] is None and a["args"]["defence"] == defence
    if defence == "hm":
        assert 0 <= record["state"]["previous"] < 1e3
    log = [json.loads(line) for line in open(straight / "m.log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1]

    _train(synthetic_dataset, resumed, kind, *flags, epochs=1)
    proc = _train(synthetic_dataset, resumed, kind, *flags, "--resume", epochs=2)
    assert "resuming" in proc.stdout
    b = read_checkpoint(str(resumed / "m-last.th"))
    assert b["epoch"] == 1 and b["defence"] == record
    for k in a["net"]:
        assert torch.allclose(a["net"][k].float(), b["net"][k].float(), atol=1e-5), k

    other = "act" if defence == "hm" else "hm"          # another defence, or none: refused, one line
    for flags in (["--defence", other, *FLAGS, *SMALL_NET], ["--id_batch", "-ni", "4", *SMALL_NET],
                  ["--defence", defence, *FLAGS[:3], *SMALL_NET]):
        proc = _train(synthetic_dataset, resumed, kind, *flags, "--resume", epochs=3, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "--resume:" in proc.stderr and "defence" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_est_is_goat_with_the_own_feature_guide(synthetic_dataset, tmp_path):
    proc = train_cli(synthetic_dataset, tmp_path, "--defence", "est", "--adv-iters", "1")
    assert "EST = GOAT: push SMA (own feature)" in proc.stdout
    ckpt = read_checkpoint(str(tmp_path / "m-last.th"))
    assert ckpt["goat"]["push"] == "self" and not ckpt["goat"]["pull"] and ckpt["defence"]["name"] == "est"


@pytest.mark.parametrize("extra, needle", [
    (["--adv", "--sma", "--defence", "hm"], "--adv and --defence hm: choose one defence"),
    (["--defence", "act"], "--defence act: mines triplets in identity batches; add --id_batch"),
    (["--defence", "hm", "--id_batch", "-ni", "1"], "--defence hm -ni 1: each anchor needs another image"),
    (["--defence", "hm", "--id_batch", "-ni", "8", "-b", "8"], "expected -b >= 2 x -ni (16)"),
    (["--defence", "est", "--push", "2"], "--defence est --push: GOAT's guide options"),
    (["--defence", "act", "--id_batch", "--pull"], "--defence act --pull: GOAT's guide options"),
    (["--defence", "hm", "--id_batch", "--uap-adv", "online"], "--uap-adv and --defence hm: choose one defence"),
    (["--adv-eps", "4"], "the budget of a defence's attack; give --defence (or --adv)"),
])
def test_contradictory_defence_flags_are_one_line(synthetic_dataset, tmp_path, extra, needle):
    proc = train_cli(synthetic_dataset, tmp_path, *extra, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- --free M


def test_free_replays_step_the_model_and_the_perturbation_from_one_backward():
    from reid.defences import FreeObjective
    from reid.training import train_epoch

    model = Linear()
    images, labels = _batch()
    seen = []

    def loss_of(net, x, y):                                # a loss whose input gradient is known: d/dx = w . 1
        seen.append(x.detach().clone())
        return net(x).sum(), None
    loss_of.kind = "triplet"
    free = FreeObjective(loss_of, replays=3, eps=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)   # the model stays put: delta's steps are checkable
    loader = [(images, labels, None, None), (images, labels, None, None)]
    stats = train_epoch(model, loader, optimizer, free, "cpu", epoch=0)
    assert len(seen) == 6 and stats["loss"] == pytest.approx(sum(model(x).sum().item() for x in seen) / 6, rel=1e-5)
    grad_sign = model.w.sum(0).sign().view(1, 3, 8, 4).detach()
    for r, x in enumerate(seen):                            # replay r: r steps of eps sign(grad), clipped at eps
        expected = (images + min(r, 1) * 4 / 255 * grad_sign).clamp(0, 1)
        assert torch.allclose(x, expected, atol=1e-6), r
    state = free.state()
    assert state["replays"] == 3 and state["eps"] == 4 and state["delta"].abs().max() <= 4 / 255 + 1e-7


def _free(data, ckpt, *flags, epochs=1, check=True):
    return _train(data, ckpt, "--classif", *SMALL_NET, "--free", 2, *flags, epochs=epochs, check=check)


def test_free_epoch_end_to_end_records_and_resumes_exactly(synthetic_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _free(synthetic_dataset, straight, epochs=2)
    assert "free adversarial training: each batch 2 times, L-inf 5/255" in proc.stdout
    a = read_checkpoint(str(straight / "m-last.th"))
    assert a["free"]["replays"] == 2 and a["free"]["eps"] == 5.0
    assert 0 < a["free"]["delta"].abs().max() <= 5 / 255 + 1e-7 and a["defence"] is None
    _free(synthetic_dataset, resumed, epochs=1)
    _free(synthetic_dataset, resumed, "--resume", epochs=2)
    b = read_checkpoint(str(resumed / "m-last.th"))
    for k in a["net"]:
        assert torch.allclose(a["net"][k].float(), b["net"][k].float(), atol=1e-5), k
    assert torch.allclose(a["free"]["delta"], b["free"]["delta"], atol=1e-7)
    proc = _free(synthetic_dataset, resumed, "--adv-eps", "4", "--resume", epochs=3, check=False)
    assert proc.returncode != 0 and "--resume:" in proc.stderr and "--free settings" in proc.stderr


@pytest.mark.parametrize("extra, needle", [
    (["--free", "2", "--defence", "hm", "--id_batch"], "--free with --defence hm: its adversary is not the ascent"),
    (["--free", "2", "--adv-norm", "l2"], "--free with --adv-norm l2: free adversarial training steps by"),
    (["--free", "0"], "--free 0"),
    (["--free", "2", "--uap-adv", "online"], "--free with --uap-adv: choose one defence"),
])
def test_free_flag_errors_are_one_line(synthetic_dataset, tmp_path, extra, needle):
    proc = train_cli(synthetic_dataset, tmp_path, *extra, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
