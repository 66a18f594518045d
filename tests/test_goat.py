"""GOAT: guide sampling against brute force, the adversarial batch, train.py end to end."""

import json
import os
import shutil

import pytest
import torch

from reid.attacks import GuidedLoss, pack_bank_guides
from reid.data import load_dataset
from reid.defences import Goat, GuidePool, goat_config
from reid.defences.goat import GoatConfig, guide_weights
from reid.models.checkpoint import read_checkpoint
from reid.runtime import ReidError
from tests.conftest import run_cli, tiny_model, train_cli

EPS = 5.0


# ----------------------------------------------------------------------------- flags

def test_flags_choose_the_guide_source():
    assert goat_config(False) is None
    assert goat_config(True, sma=True) == GoatConfig("self", 0, False)
    assert goat_config(True, push=4, pull=True) == GoatConfig("pool", 4, True)
    assert goat_config(True, id_batch=True).push == "batch"
    assert goat_config(True, push=2, id_batch=True).push == "pool"    # an explicit pool wins
    c = goat_config(True, sma=True, pull=True, eps=8, iters=3, step=2)
    assert (c.push, c.pull, c.eps, c.iters, c.step) == ("self", True, 8.0, 3, 2.0)
    assert goat_config(True, sma=True, eps=8, iters=10, step="auto").step == 2.0  # 2.5 eps / iters
    c = goat_config(True, sma=True, iters=5, norm="l2")  # L2 defaults: radius 0.5, step auto
    assert (c.norm, c.eps, c.step) == ("l2", 0.5, 0.25) and "L2 PGD radius 0.5" in c.describe()


@pytest.mark.parametrize("kwargs,needle", [
    (dict(adv=False, push=4), "--push: GOAT options need --adv"),
    (dict(adv=False, sma=True, pull=True), "--sma --pull: GOAT options need --adv"),
    (dict(adv=True), "--adv needs pushing guides"),
    (dict(adv=True, sma=True, push=4), "choose one"),
    (dict(adv=True, push=0), "--push 0"),
    (dict(adv=True, sma=True, eps=0), "--adv-eps 0"),
    (dict(adv=True, sma=True, iters=0), "--adv-iters 0"),
    (dict(adv=True, sma=True, step=-1), "--adv-step -1"),
    (dict(adv=True, sma=True, norm="l1"), "--adv-norm l1: expected one of linf, l2"),
    (dict(adv=True, sma=True, norm="l2", eps=-0.5), "--adv-eps -0.5: an L2 radius"),
])
def test_clashing_flags_are_one_line_errors(kwargs, needle):
    with pytest.raises(ReidError) as err:
        goat_config(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- guide pool

@pytest.fixture(scope="module")
def sorted_dataset(synthetic_dataset, tmp_path_factory):
    """A copy of the synthetic dataset with its guide pool built by sort_dataset.py."""
    root = tmp_path_factory.mktemp("goat") / "market"
    shutil.copytree(synthetic_dataset, root)
    run_cli("sort_dataset.py", root)
    return str(root)


def test_pool_guides_share_the_identity_and_exclude_the_image(sorted_dataset):
    data = load_dataset(sorted_dataset)
    pool = GuidePool.from_dataset(data, num_guides=3)
    torch.manual_seed(0)
    for i, (path, label, _) in enumerate(data.train):
        guides = pool(i)
        folder = os.path.join(data.root, "sorted", "train", f"{data.train_pids[label]:04d}")
        assert len(guides) == 3
        assert all(os.path.dirname(g) == folder and os.path.isfile(g) for g in guides)
        assert os.path.basename(path) not in {os.path.basename(g) for g in guides}
        same_identity = sum(s.pid == label for s in data.train)
        if same_identity > 3:      # enough others: no repeats
            assert len(set(guides)) == 3


def test_pool_of_a_lone_image_is_itself():
    pool = GuidePool([["a/0001/x.jpg"], ["a/0002/y.jpg", "a/0002/z.jpg"]], labels=[0, 1, 1],
                     own=[0, 0, 1], num_guides=2)
    assert pool(0) == ["a/0001/x.jpg"] * 2
    assert pool(1) == ["a/0002/z.jpg"] * 2 and pool(2) == ["a/0002/y.jpg"] * 2


def _train_goat(dataset, ckpt_dir, *extra, epochs=1, check=True):
    return train_cli(dataset, ckpt_dir, "--adv", "--adv-iters", 2, *extra, epochs=epochs, check=check)


@pytest.mark.parametrize("damage,needle", [
    ("remove", "does not exist"),
    ("drop_image", "does not hold this identity's training images"),
    ("extra_identity", "is not a training identity"),
    ("stale_image", "does not hold this identity's training images"),
    ("replaced_image", "is out of date"),
])
def test_missing_or_wrong_pool_is_a_one_line_error(sorted_dataset, tmp_path, damage, needle):
    """Each error names sort_dataset.py, and running it fixes what the error reported."""
    root = tmp_path / "market"
    shutil.copytree(sorted_dataset, root)
    pool = root / "sorted" / "train"
    first = sorted(os.listdir(pool))[0]
    image = sorted(os.listdir(pool / first))[0]
    if damage == "remove":
        shutil.rmtree(root / "sorted")
    elif damage == "drop_image":
        os.remove(pool / first / image)
    elif damage == "extra_identity":
        shutil.copytree(pool / first, pool / "9999")
    elif damage == "stale_image":  # an image the dataset no longer holds
        shutil.copy(pool / first / image, pool / first / "0000_c1s1_999999_01.jpg")
    else:  # the dataset's image replaced by another file: the pool still holds the old one
        other = sorted(os.listdir(pool / sorted(os.listdir(pool))[1]))[0]
        shutil.copy(root / "bounding_box_train" / other, tmp_path / "new.jpg")
        os.replace(tmp_path / "new.jpg", root / "bounding_box_train" / image)
    proc = _train_goat(root, tmp_path / "ckpt", "--push", check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert needle in err and f"sort_dataset.py {root}" in err
    assert not (tmp_path / "ckpt").exists()
    fixed = run_cli("sort_dataset.py", root)
    assert "(0 new, 0 replaced, 0 removed)" not in fixed.stdout.split("train")[1].splitlines()[0]
    GuidePool.from_dataset(load_dataset(str(root)), num_guides=2)  # the pool follows the dataset again
    if damage == "replaced_image":
        assert (pool / first / image).read_bytes() == (root / "bounding_box_train" / image).read_bytes()


# ----------------------------------------------------------------------------- guide weights

LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])   # identity 2 is alone in the batch


def _brute_pull(feats, labels):
    """Index of the furthest other-identity feature for each image, by a double loop."""
    out = []
    for i in range(len(feats)):
        best, arg = -1.0, None
        for j in range(len(feats)):
            d = float(((feats[i] - feats[j]) ** 2).sum())
            if labels[j] != labels[i] and d > best:
                best, arg = d, j
        out.append(arg)
    return out


@pytest.mark.parametrize("weighting", ["reference", "mean"])
@pytest.mark.parametrize("source", ["self", "batch", "pool"])
def test_guide_weights_against_brute_force(source, weighting):
    """mean: pushing guides share 1. reference (the attacks' default, the reference code's
    rule): each guide weighs 1, and in-batch guides are the whole identity, the image itself
    included, padded with the image up to the batch's largest identity."""
    feats = torch.randn(len(LABELS), 6, generator=torch.Generator().manual_seed(0))
    n_pool = 3 if source == "pool" else 0
    config = GoatConfig(source, n_pool, pull=True, weighting=weighting)
    largest = max(int((LABELS == label).sum()) for label in LABELS)
    w = guide_weights(config, feats, LABELS, n_pool)
    b = len(LABELS)
    assert w.shape == (b, b + b * n_pool)
    pulls = _brute_pull(feats, LABELS)
    for i in range(b):
        expected = torch.zeros(w.shape[1])
        if source == "self":
            expected[i] = 1
        elif source == "batch" and weighting == "mean":
            others = [j for j in range(b) if LABELS[j] == LABELS[i] and j != i] or [i]
            expected[others] = 1 / len(others)
        elif source == "batch":
            members = [j for j in range(b) if LABELS[j] == LABELS[i]]
            for j in (members + [i] * (largest - len(members)) if len(members) > 1 else [i]):
                expected[j] += 1
        else:
            expected[b + i * n_pool: b + (i + 1) * n_pool] = 1 / n_pool if weighting == "mean" else 1
        expected[pulls[i]] -= 1
        assert torch.allclose(w[i], expected), (source, i, w[i], expected)


@pytest.mark.parametrize("weighting,total", [("reference", 4.0), ("mean", 1.0)])
def test_no_pull_when_the_batch_holds_one_identity(weighting, total):
    feats = torch.randn(4, 5)
    w = guide_weights(GoatConfig("batch", 0, pull=True, weighting=weighting), feats,
                      torch.zeros(4, dtype=torch.long), 0)
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.full((4,), total))


def test_dense_packing_matches_the_loss_over_each_guide():
    bank = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    feats = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(3))
    value = GuidedLoss().per_sample(feats, pack_bank_guides(bank, None, w))
    naive = torch.stack([sum(w[i, k] * ((feats[i] - bank[k]) ** 2).sum() for k in range(10))
                         for i in range(3)])
    assert torch.allclose(value, naive, atol=1e-4)


# ----------------------------------------------------------------------------- adversarial batch

@pytest.mark.parametrize("source", ["self", "batch", "pool"])
def test_adversarial_batch_in_budget_raises_the_loss_and_restores_the_model(source):
    model = tiny_model(dim=8).train()
    model[1].bias.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(len(LABELS), 3, 16, 8, generator=gen)
    n_pool = 2 if source == "pool" else 0
    pool_images = torch.rand(len(LABELS), n_pool, 3, 16, 8, generator=gen) if n_pool else None
    goat = Goat(GoatConfig(source, n_pool, pull=True, eps=EPS, iters=5, step=1.0))
    running_mean = model[1].running_mean.clone()
    torch.manual_seed(0)
    adv = goat(model, images, LABELS, pool_images)

    assert adv.shape == images.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= EPS / 255 + 1e-7
    assert (adv != images).any()
    # the model comes back as it was: train mode, own requires_grad flags, no .grad, same BN stats
    assert model.training and model[1].training
    assert not model[1].bias.requires_grad and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, running_mean)
    # the attack increased the guided loss over the guides GOAT chose (from eval-mode features)
    model.eval()
    with torch.no_grad():
        bank = model(images if pool_images is None else torch.cat([images, pool_images.flatten(0, 1)]))
        packed = pack_bank_guides(bank, None, guide_weights(goat.config, bank[:len(images)], LABELS, n_pool))
        loss = GuidedLoss()
        assert loss(model(adv), packed) > loss(model(images), packed)


def test_l2_adversarial_batch_stays_in_its_radius():
    model = tiny_model(dim=8)
    images = torch.rand(len(LABELS), 3, 16, 8, generator=torch.Generator().manual_seed(0))
    goat = Goat(goat_config(True, sma=True, pull=True, eps=0.3, iters=4, norm="l2"))
    torch.manual_seed(0)
    adv = goat(model, images, LABELS)
    moves = (adv.double() - images.double()).flatten(1).norm(dim=1)
    assert adv.min() >= 0 and adv.max() <= 1 and torch.all(moves <= 0.3) and torch.all(moves > 0)


# ----------------------------------------------------------------------------- train.py

def test_goat_epoch_end_to_end_and_resume(sorted_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _train_goat(sorted_dataset, straight, "--push", "2", "--pull", epochs=2)
    assert "GOAT: push 2 pool guides + furthest pull" in proc.stdout
    ckpt = read_checkpoint(str(straight / "m-last.th"))
    assert ckpt["goat"] == {"push": "pool", "num_push": 2, "pull": True, "eps": 5.0, "iters": 2, "step": 1.0,
                            "weighting": "reference", "norm": "linf"}
    assert ckpt["args"]["goat"] == ckpt["goat"]
    log = [json.loads(line) for line in open(straight / "m.log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1] and all(0 <= r["mAP"] <= 1 for r in log)

    _train_goat(sorted_dataset, resumed, "--push", "2", "--pull", epochs=1)
    proc = _train_goat(sorted_dataset, resumed, "--push", "2", "--pull", "--resume", epochs=2)
    assert "resuming" in proc.stdout
    a, b = ckpt, read_checkpoint(str(resumed / "m-last.th"))
    assert a["epoch"] == b["epoch"] == 1
    for k in a["net"]:
        assert torch.allclose(a["net"][k].float(), b["net"][k].float(), atol=1e-5), k

    # resuming with other GOAT settings would silently change the run: refused
    proc = _train_goat(sorted_dataset, resumed, "--sma", "--resume", epochs=3, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "GOAT settings" in proc.stderr

    # a checkpoint from before --adv-norm resumes as L-inf (epochs=2: nothing left to train)
    last = str(resumed / "m-last.th")
    old = torch.load(last, weights_only=False)
    del old["goat"]["norm"]
    torch.save(old, last)
    _train_goat(sorted_dataset, resumed, "--push", "2", "--pull", "--resume", epochs=2)
    proc = _train_goat(sorted_dataset, resumed, "--push", "2", "--pull", "--adv-norm", "l2", "--resume", epochs=2,
                       check=False)
    assert proc.returncode == 2 and "'norm': 'linf'" in proc.stderr and "'norm': 'l2'" in proc.stderr


def test_the_papers_goat_command_parses_as_written():
    import train
    args = train.parse_args("DATA --dataset duke --lr 0.00035 -wd 5e-4 -n 60 -f goat.th -b 32 "
                            "--classif --pretrained --adv --push --pull".split())
    assert args.goat == GoatConfig("pool", 4, True, eps=5.0, iters=7, step=1.0)
    assert (args.dataset, args.kind, args.pretrained, args.batch_size) == ("duke", "classif", True, 32)
    assert train.parse_args("DATA --triplet --id_batch --adv".split()).goat.push == "batch"


def test_adv_norm_flags():
    import train
    goat = train.parse_args("DATA --adv --sma --adv-norm l2 --adv-iters 5".split()).goat
    assert (goat.norm, goat.eps, goat.step) == ("l2", 0.5, 0.25)
    goat = train.parse_args("DATA --adv --sma --adv-eps 8 --adv-step auto --adv-iters 10".split()).goat
    assert (goat.norm, goat.eps, goat.step) == ("linf", 8.0, 2.0)
    for argv, needle in (("DATA --adv-norm l2", "the budget of a defence.s attack; give --defence .or --adv."),
                         ("DATA --adv --sma --adv-norm L2", "--adv-norm L2: expected one of linf, l2"),
                         ("DATA --adv --sma --adv-step often", "--adv-step often: expected a number or auto")):
        with pytest.raises(ReidError, match=needle):
            train.parse_args(argv.split())


def test_goat_in_batch_guides_for_a_triplet_model(synthetic_dataset, tmp_path):
    """`--adv` with P x K batches needs no pool: guides are the identity's other instances."""
    proc = run_cli("train.py", synthetic_dataset, "--triplet", "--soft", "--id_batch", "-ni", 4, "-b", 16,
                   "-e", 64, "-n", 1, "-f", "t.th", "--height", 64, "--width", 32, "--workers", 0,
                   "--device", "cpu", "--checkpoint-dir", tmp_path, "--adv", "--pull", "--adv-iters", 1)
    assert "GOAT: push in-batch same-identity guides + furthest pull" in proc.stdout
    ckpt = read_checkpoint(str(tmp_path / "t-last.th"))
    assert ckpt["goat"]["push"] == "batch" and ckpt["goat"]["pull"] and ckpt["model"]["kind"] == "triplet"
    assert not os.path.exists(os.path.join(synthetic_dataset, "sorted"))   # nothing written into the data
