"""Tests of reid.attacks: guided loss, guide selection, optimisers, determinism, bad input.

Everything runs on CPU with a tiny random CNN on 16x8 images (same contract as the re-ID
models: images in [0, 1] -> features (B, D)), so the whole file takes a few seconds.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from reid.attacks import (ATTACKS, ATTACK_NAMES, GuidedLoss, L2PGDAttack, LinfPGDAttack, MomentumIterativeAttack,
                          attack_batch, auto_step, check_attack_args, check_budget, guided_loss, image_diameter,
                          pack_bank_guides, pack_guides, perturb, plan_attack, resolve_attack_names)
from reid.runtime import ReidError
from tests.conftest import tiny_model

EPS = 5.0


# identities: 1 x5, 2 x3, 3 x2, 4 x1 (singleton -> fallback), 5 x4, distractors 0, junk -1
PIDS = torch.tensor([1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 5, 5, 0, 0, -1])


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(len(PIDS), 3, 16, 8, generator=gen)
    with torch.no_grad():
        feats = model(images)
    return model, images, feats


def rows_of(t):
    return sorted(tuple(round(v, 5) for v in r.tolist()) for r in t)


# ----------------------------------------------------------------------------- guided loss

def naive_loss(feats, guides, weights, cosine):
    total = feats.new_zeros(())
    for b in range(feats.shape[0]):
        f = F.normalize(feats[b], dim=0) if cosine else feats[b]
        for k in range(guides.shape[1]):
            total = total + weights[b, k] * ((f - guides[b, k]) ** 2).sum()
    return total


@pytest.mark.parametrize("cosine", [False, True])
def test_guided_loss_matches_double_loop(cosine):
    gen = torch.Generator().manual_seed(0)
    B, K, D = 5, 4, 7
    feats = torch.randn(B, D, generator=gen, dtype=torch.float64)
    guides = torch.randn(B, K, D, generator=gen, dtype=torch.float64)
    if cosine:
        guides = F.normalize(guides, dim=-1)
    weights = torch.tensor([[0.5, 0.5, -1.0, 0.0],      # push x2 + pull
                            [1.0, 0.0, 0.0, 0.0],       # single push + padding
                            [0.0, 0.0, 0.0, -1.0],      # pull only, padding first
                            [1 / 3, 1 / 3, 1 / 3, 0.0],
                            [0.0, 0.0, 0.0, 0.0]],      # not attacked: all padding
                           dtype=torch.float64)
    f1 = feats.clone().requires_grad_()
    f2 = feats.clone().requires_grad_()
    ours = guided_loss(f1, guides, weights, cosine=cosine)
    ref = naive_loss(f2, guides, weights, cosine)
    ours.backward()
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(f1.grad, f2.grad, rtol=1e-10, atol=1e-10)
    assert torch.all(f1.grad[4] == 0)


def test_guided_loss_float32_and_per_sample():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(6, 16, generator=gen) * 5
    guides = torch.randn(6, 3, 16, generator=gen) * 5
    weights = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1, 0, 0], [0.5, 0.5, -1]] * 2)
    loss = GuidedLoss()
    per = loss.per_sample(feats, pack_guides(guides, weights))
    ref = torch.stack([naive_loss(feats[b:b + 1], guides[b:b + 1], weights[b:b + 1], False)
                       for b in range(6)])
    assert per.shape == (6,)
    assert torch.allclose(per, ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError):
        pack_guides(guides, weights[:, :2])
    # the plan's gather-free packing agrees with packing the gathered guides
    bank = torch.randn(20, 16, generator=gen)
    index = torch.randint(0, 20, (6, 3), generator=gen)
    assert torch.allclose(pack_bank_guides(bank, index, weights),
                          pack_guides(bank[index], weights), atol=1e-5)


# ----------------------------------------------------------------------------- guides

def pushing(plan, i):
    g, w = plan.guides([i])
    return g[0][w[0] > 0], w[0][w[0] > 0]


def pulling(plan, i):
    g, w = plan.guides([i])
    return g[0][w[0] < 0], w[0][w[0] < 0]


def brute_centroids(feats, pids):
    ids = sorted({int(p) for p in pids if p > 0})
    return ids, torch.stack([feats[pids == p].mean(0) for p in ids])


def weight_by_feature(plan, i):
    """{feature row (rounded): total pushing weight} of image i."""
    out = {}
    for g, w in zip(*pushing(plan, i)):
        key = rows_of(g[None])[0]
        out[key] = out.get(key, 0.0) + float(w)
    return out


@pytest.mark.parametrize("name", ["FGSM", "IFGSM", "MIFGSM", "FNA", "FNA_rand"])
def test_reference_weighting_is_the_reference_codes_padded_guide_stack(setup, name):
    """Default weighting: the reference code stacks every image of the identity (the image
    itself included) and pads the stack with the image's own feature up to the largest
    identity, each entry weighing 1. Brute force: build that stack and count."""
    _, _, feats = setup
    plan = plan_attack(name, feats, PIDS)                      # weighting="reference" by default
    largest = max(int((PIDS == p).sum()) for p in set(PIDS.tolist()) if p > 0)
    for i, p in enumerate(PIDS.tolist()):
        if p <= 0:
            assert len(pushing(plan, i)[0]) == 0
            continue
        members = [j for j in range(len(PIDS)) if PIDS[j] == p]
        if len(members) == 1:      # singleton: our fallback (own feature, random start)
            assert plan.rand_start[i] and weight_by_feature(plan, i) == {rows_of(feats[i:i + 1])[0]: 1.0}
            continue
        stack = members + [i] * (largest - len(members))
        expected = {}
        for j in stack:
            key = rows_of(feats[j:j + 1])[0]
            expected[key] = expected.get(key, 0.0) + 1.0
        got = weight_by_feature(plan, i)
        assert got.keys() == expected.keys()
        assert all(abs(got[k] - expected[k]) < 1e-6 for k in got)
        assert not plan.rand_start[i]


@pytest.mark.parametrize("name", ["FGSM", "IFGSM", "MIFGSM", "FNA", "FNA_rand"])
def test_pushing_guides_are_the_other_same_identity_images(setup, name):
    _, _, feats = setup
    plan = plan_attack(name, feats, PIDS, weighting="mean")
    for i, p in enumerate(PIDS.tolist()):
        g, w = pushing(plan, i)
        if p <= 0:
            assert len(g) == 0 and not plan.attacked[i]
            continue
        others = [j for j in range(len(PIDS)) if PIDS[j] == p and j != i]
        if not others:         # fallback: own feature, random start
            assert rows_of(g) == rows_of(feats[i:i + 1]) and plan.rand_start[i]
            assert torch.allclose(w, torch.ones(1))
            continue
        assert rows_of(g) == rows_of(feats[others])
        assert torch.allclose(w, torch.full((len(others),), 1 / len(others)))
        assert not plan.rand_start[i]
    assert plan.num_fallback == 1        # identity 4 is a singleton


def test_single_guide_is_another_image_of_the_same_identity(setup):
    _, _, feats = setup
    chosen = set()
    for seed in range(8):
        plan = plan_attack("IFGSM", feats, PIDS, single=True,
                           generator=torch.Generator().manual_seed(seed))
        assert plan.index.shape[1] <= 2     # one guide (+ the fallback column)
        for i, p in enumerate(PIDS.tolist()):
            g, w = pushing(plan, i)
            if p <= 0:
                assert len(g) == 0
                continue
            assert len(g) == 1 and w.item() == 1.0
            others = [j for j in range(len(PIDS)) if PIDS[j] == p and j != i]
            if not others:
                assert torch.equal(g[0], feats[i])
                continue
            match = [j for j in others if torch.equal(feats[j], g[0])]
            assert len(match) == 1
            if i == 0:
                chosen.add(match[0])
    assert len(chosen) > 1               # really random over seeds


@pytest.mark.parametrize("cosine", [False, True])
def test_fna_pulls_towards_the_furthest_other_centroid(setup, cosine):
    _, _, feats = setup
    space = F.normalize(feats, dim=1) if cosine else feats
    plan = plan_attack("FNA", feats, PIDS, cosine=cosine)
    pull_only = plan_attack("FNA_pull", feats, PIDS, cosine=cosine)
    ids, cents = brute_centroids(space, PIDS)
    for i, p in enumerate(PIDS.tolist()):
        if p <= 0:
            assert len(pulling(plan, i)[0]) == 0
            continue
        best, best_d = None, -1.0
        for q, c in zip(ids, cents):
            d = ((space[i] - c) ** 2).sum().item()
            if q != p and d > best_d:
                best, best_d = c, d
        for pl in (plan, pull_only):
            g, w = pulling(pl, i)
            assert len(g) == 1 and w.item() == -1.0
            assert torch.allclose(g[0], best, atol=1e-5)
        assert len(pushing(pull_only, i)[0]) == 0
    assert pull_only.num_fallback == 0


def test_fna_rand_pulls_towards_a_random_other_centroid(setup):
    _, _, feats = setup
    ids, cents = brute_centroids(feats, PIDS)
    picked = set()
    for seed in range(6):
        plan = plan_attack("FNA_rand", feats, PIDS, generator=torch.Generator().manual_seed(seed))
        for i, p in enumerate(PIDS.tolist()):
            if p <= 0:
                continue
            g, w = pulling(plan, i)
            assert len(g) == 1 and w.item() == -1.0
            match = [q for q, c in zip(ids, cents) if torch.allclose(c, g[0], atol=1e-5)]
            assert len(match) == 1 and match[0] != p
            if i == 0:
                picked.add(match[0])
    assert len(picked) > 1


def test_sma_and_odfa_guides(setup):
    _, _, feats = setup
    sma = plan_attack("SMA", feats, PIDS)
    odfa = plan_attack("ODFA", feats, PIDS)
    attacked = PIDS > 0
    assert torch.equal(sma.rand_start, attacked) and sma.num_fallback == 0
    assert not odfa.rand_start.any() and odfa.num_fallback == 0
    for i in range(len(PIDS)):
        if not attacked[i]:
            continue
        g, w = pushing(sma, i)
        assert torch.equal(g, feats[i:i + 1]) and w.item() == 1.0
        g, w = pulling(odfa, i)
        assert torch.equal(g, -feats[i:i + 1]) and w.item() == -1.0


def test_cross_attack_guides_from_the_other_set(setup):
    _, _, feats = setup
    gen = torch.Generator().manual_seed(5)
    g_feats = torch.randn(9, feats.shape[1], generator=gen)
    g_pids = torch.tensor([1, 1, 2, 3, 3, 3, 7, 0, -1])   # no 4, no 5 -> fallbacks
    plan = plan_attack("FNA", feats, PIDS, g_feats, g_pids)
    for i, p in enumerate(PIDS.tolist()):
        g, _ = pushing(plan, i)
        if p <= 0:
            continue
        same = g_feats[g_pids == p]
        if len(same):
            assert rows_of(g) == rows_of(same) and not plan.rand_start[i]
        else:
            assert torch.equal(g, feats[i:i + 1]) and plan.rand_start[i]
        # the pulling centroid comes from the guide set's other identities (not 0 / -1)
        ids, cents = brute_centroids(g_feats, g_pids)
        d = {q: ((feats[i] - c) ** 2).sum().item() for q, c in zip(ids, cents) if q != p}
        far = max(d, key=d.get)
        assert torch.allclose(pulling(plan, i)[0][0], cents[ids.index(far)], atol=1e-5)
    assert plan.num_fallback == int(((PIDS == 4) | (PIDS == 5)).sum())


# ----------------------------------------------------------------------------- attacks

@pytest.mark.parametrize("name,cosine", [(n, False) for n in ATTACK_NAMES] + [("FNA", True)])
def test_every_attack_respects_the_budget(setup, name, cosine):
    model, images, feats = setup
    plan = plan_attack(name, feats, PIDS, cosine=cosine, generator=torch.Generator().manual_seed(0))
    adv, adv_feats = attack_batch(model, images, plan, torch.arange(len(PIDS)), eps=EPS,
                                  max_iter=5, generator=torch.Generator().manual_seed(0))
    assert adv.shape == images.shape and adv_feats.shape == feats.shape
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= EPS / 255 + 1e-6
    keep = PIDS <= 0
    assert torch.equal(adv[keep], images[keep])
    assert torch.equal(adv_feats[keep], feats[keep])
    moved = (adv[~keep] - images[~keep]).flatten(1).abs().amax(1)
    assert torch.all(moved > 0)
    with torch.no_grad():
        assert torch.allclose(adv_feats, model(adv), atol=1e-5)
    # the attack increases the guided loss it maximises
    loss = GuidedLoss(cosine)
    rows = torch.nonzero(~keep).squeeze(1)
    with torch.no_grad():
        before = loss(model(images[rows]), plan.packed(rows))
        after = loss(adv_feats[rows], plan.packed(rows))
    assert after > before


def test_batches_and_partial_batches(setup):
    model, images, feats = setup
    plan = plan_attack("IFGSM", feats, PIDS)
    adv, adv_feats = attack_batch(model, images[10:18], plan, slice(10, 18), max_iter=3)
    assert torch.equal(adv[-3:], images[15:18]) and torch.equal(adv_feats[-3:], feats[15:18])
    assert (adv - images[10:18]).abs().max() <= EPS / 255 + 1e-6
    # a batch with nothing to attack costs nothing and changes nothing
    adv, adv_feats = attack_batch(model, images[15:], plan, [15, 16, 17])
    assert torch.equal(adv, images[15:]) and torch.equal(adv_feats, feats[15:])
    with pytest.raises(ValueError):
        attack_batch(model, images[:4], plan, [0, 1, 2])


def test_large_eps_and_step_stay_in_bounds(setup):
    model, images, feats = setup
    for name in ("FGSM", "MIFGSM", "SMA"):
        plan = plan_attack(name, feats, PIDS)
        adv, _ = attack_batch(model, images, plan, range(len(PIDS)), eps=255, step=40,
                              max_iter=2)
        assert adv.min() >= 0 and adv.max() <= 1


def test_odfa_moves_features_towards_the_opposite(setup):
    model, images, feats = setup
    rows = torch.nonzero(PIDS > 0).squeeze(1)
    plan = plan_attack("ODFA", feats, PIDS)
    _, adv_feats = attack_batch(model, images[rows], plan, rows, eps=EPS, max_iter=10)
    before = (feats[rows] - (-feats[rows])).norm(dim=1)
    after = (adv_feats - (-feats[rows])).norm(dim=1)
    assert torch.all(after < before)


def test_sma_random_start_gives_a_gradient_where_the_clean_start_does_not(setup):
    model, images, feats = setup
    rows = torch.nonzero(PIDS > 0).squeeze(1)
    x = images[rows]
    packed = plan_attack("SMA", feats, PIDS).packed(rows)
    loss = GuidedLoss()

    def grad_at(z):
        z = z.clone().requires_grad_()
        return torch.autograd.grad(loss(model(z), packed), z)[0]

    assert torch.all(grad_at(x) == 0)      # own feature as guide, clean image: no gradient
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS / 255
    assert torch.all(grad_at((x + noise).clamp(0, 1)).flatten(1).abs().amax(1) > 0)
    # hence IFGSM from the clean image never moves, SMA (random start) does
    still = perturb(model, x, packed, optimiser="pgd", eps=EPS, max_iter=3, rand_start=False)
    moved = perturb(model, x, packed, optimiser="pgd", eps=EPS, max_iter=3, rand_start=True)
    assert torch.equal(still, x)
    assert torch.all((moved - x).flatten(1).abs().amax(1) > 0)


def test_same_seed_same_images(setup):
    model, images, feats = setup
    idx = torch.arange(len(PIDS))

    def run(name, seed, single=False):
        plan = plan_attack(name, feats, PIDS, single=single,
                           generator=torch.Generator().manual_seed(seed))
        return attack_batch(model, images, plan, idx, max_iter=3,
                            generator=torch.Generator().manual_seed(seed))[0]

    for name, single in [("SMA", False), ("FNA_rand", False), ("IFGSM", True)]:
        assert torch.equal(run(name, 7, single), run(name, 7, single))
    assert not torch.equal(run("SMA", 7), run("SMA", 8))
    # the global seed works too when no generator is given
    plan = plan_attack("SMA", feats, PIDS)
    torch.manual_seed(3)
    a = attack_batch(model, images, plan, idx, max_iter=2)[0]
    torch.manual_seed(3)
    b = attack_batch(model, images, plan, idx, max_iter=2)[0]
    assert torch.equal(a, b)


def test_model_state_is_restored(setup):
    model, images, feats = setup
    for p in model.parameters():
        p.grad = None
    model.train()
    model[0].weight.requires_grad_(True)
    model[1].bias.requires_grad_(False)
    try:
        plan = plan_attack("FNA", feats, PIDS)
        attack_batch(model, images, plan, range(len(PIDS)), max_iter=2)
        assert model.training and model[1].training
        assert model[0].weight.requires_grad and not model[1].bias.requires_grad
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
        model[1].bias.requires_grad_(True)


def test_registry_and_advertorch_reexport():
    assert ATTACK_NAMES == ("FGSM", "IFGSM", "MIFGSM", "SMA", "ODFA", "FNA", "FNA_pull",
                            "FNA_rand")
    assert {n for n, s in ATTACKS.items() if s.single} == {"FGSM", "IFGSM", "MIFGSM", "APGD_IFGSM"}
    # the table beyond the papers: APGD on every PGD row's guides, the ranking loss, Square
    assert {n for n in ATTACKS if n not in ATTACK_NAMES} == {
        "APGD_IFGSM", "APGD_SMA", "APGD_ODFA", "APGD_FNA", "APGD_FNA_pull", "APGD_FNA_rand", "RANK", "APGD_RANK",
        "SQUARE_SMA", "SQUARE_FNA", "SQUARE_RANK", "BANDITS_SMA", "BANDITS_FNA", "BANDITS_RANK", "RGF_SMA", "RGF_FNA",
        "RGF_RANK", "QA+", "QA-", "SPQA+", "CA+", "CA-", "TMA", "LTM", "GTM", "GTT"}
    assert resolve_attack_names(["ers"]) == ["CA+", "CA-", "QA+", "QA-", "TMA", "SMA", "LTM", "GTM", "GTT"]
    assert resolve_attack_names(["standard", "FNA"]) == ["APGD_SMA", "APGD_FNA", "APGD_RANK", "SQUARE_RANK", "FNA"]
    assert ATTACKS["FGSM"].iterations(15) == 1 and ATTACKS["FNA"].iterations(15) == 15
    assert resolve_attack_names(["fna", "all"])[:2] == ["FNA", "FGSM"]
    assert len(resolve_attack_names("all")) == len(ATTACK_NAMES)
    assert resolve_attack_names(["SMA,fgsm", "SMA"]) == ["SMA", "FGSM"]
    assert check_attack_args(["IFGSM", "FGSM"], single=True) == ["IFGSM", "FGSM"]
    import advertorch.attacks
    assert LinfPGDAttack is advertorch.attacks.LinfPGDAttack


# ----------------------------------------------------------------------------- L2 threat model

L2_EPS = 0.5  # a radius in [0, 1] pixel units of the whole 3 x 16 x 8 image


def l2_moves(adv, images):
    return (adv.double() - images.double()).flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_l2_attack_stays_in_its_radius_and_in_the_image(setup, name):
    model, images, feats = setup
    plan = plan_attack(name, feats, PIDS, generator=torch.Generator().manual_seed(0))
    adv, adv_feats = attack_batch(model, images, plan, torch.arange(len(PIDS)), eps=L2_EPS, max_iter=5,
                                  generator=torch.Generator().manual_seed(0), norm="l2")
    assert adv.min() >= 0 and adv.max() <= 1
    moves = l2_moves(adv, images)
    keep = PIDS <= 0
    assert torch.all(moves <= L2_EPS) and torch.all(moves[~keep] > 0) and torch.all(moves[keep] == 0)
    with torch.no_grad():
        assert torch.allclose(adv_feats, model(adv), atol=1e-5)
    loss, rows = GuidedLoss(), torch.nonzero(~keep).squeeze(1)
    with torch.no_grad():
        assert loss(adv_feats[rows], plan.packed(rows)) > loss(model(images[rows]), plan.packed(rows))


def test_l2_radius_holds_exactly_at_the_image_diameter_and_on_saturated_images(setup):
    model, images, feats = setup
    diameter = image_diameter(images.shape[-2:])
    assert diameter == pytest.approx((3 * 16 * 8) ** 0.5)
    saturated = (images > 0.5).float()  # every value at 0 or 1: the clip to [0, 1] binds everywhere
    for x in (images, saturated):
        for name, eps, step in (("SMA", diameter, 3.0), ("MIFGSM", 0.05, 0.5), ("FGSM", 2.0, None)):
            plan = plan_attack(name, feats, PIDS, generator=torch.Generator().manual_seed(0))
            adv, _ = attack_batch(model, x, plan, range(len(PIDS)), eps=eps, step=step, max_iter=3,
                                  generator=torch.Generator().manual_seed(0), norm="l2")
            assert adv.min() >= 0 and adv.max() <= 1 and torch.all(l2_moves(adv, x) <= eps), name


def test_l2_pgd_from_the_clean_image_is_advertorchs_l2_pgd(setup):
    model, images, feats = setup
    rows = torch.nonzero(torch.isin(PIDS, torch.tensor([1, 2, 3]))).squeeze(1)  # no fallback rows
    packed = plan_attack("IFGSM", feats, PIDS).packed(rows)
    x = images[rows]
    ours = perturb(model, x, packed, optimiser="pgd", eps=L2_EPS, step=0.2, max_iter=4, norm="l2")
    theirs = L2PGDAttack(model, GuidedLoss(), eps=L2_EPS, nb_iter=4, eps_iter=0.2, rand_init=False,
                         clip_min=0.0, clip_max=1.0, targeted=False).perturb(x, packed)
    assert torch.allclose(ours, theirs, atol=1e-5)


def brute_mifgsm_l2(model, x, packed, eps, step, iters):
    """MI-FGSM in L2, one image at a time, in float64 (Dong et al. 2018, with the clip to [0, 1])."""
    out = []
    loss = GuidedLoss()
    for b in range(len(x)):
        x0 = x[b:b + 1].double()
        delta, g = torch.zeros_like(x0), torch.zeros_like(x0)
        for _ in range(iters):
            d = delta.clone().requires_grad_(True)
            grad, = torch.autograd.grad(loss(model((x0 + d).float()), packed[b:b + 1]), d)
            g = g + grad / max(grad.abs().sum().item(), 1e-6)
            delta = delta + step * g / max(g.norm().item(), 1e-6)
            delta = delta * min(1.0, eps / max(delta.norm().item(), 1e-300))
            delta = (x0 + delta).clamp(0, 1) - x0
        out.append((x0 + delta).float())
    return torch.cat(out)


def test_l2_momentum_matches_a_per_image_loop_and_has_no_nan_where_the_gradient_is_zero(setup):
    model, images, feats = setup
    rows = torch.nonzero(torch.isin(PIDS, torch.tensor([1, 2, 3]))).squeeze(1)
    packed = plan_attack("MIFGSM", feats, PIDS).packed(rows)
    x = images[rows]
    ours = perturb(model, x, packed, optimiser="momentum", eps=L2_EPS, step=0.2, max_iter=4, norm="l2")
    assert torch.allclose(ours, brute_mifgsm_l2(model, x, packed, L2_EPS, 0.2, 4), atol=1e-4)

    class Cropped(torch.nn.Module):  # never looks at the bottom half: zero gradient there
        def forward(self, z):
            return model(torch.cat([z[:, :, :8], torch.zeros_like(z[:, :, 8:])], 2))

    adv = perturb(Cropped(), x, packed, optimiser="momentum", eps=L2_EPS, step=0.2, max_iter=3, norm="l2")
    assert torch.isfinite(adv).all() and torch.equal(adv[:, :, 8:], x[:, :, 8:])
    broken = MomentumIterativeAttack(Cropped(), GuidedLoss(), eps=L2_EPS, nb_iter=3, eps_iter=0.2, ord=2)
    assert torch.isnan(broken.perturb(x, packed)).any()  # why the L2 momentum loop is ours


def test_budget_rules_per_norm():
    assert check_budget(8, "auto", 10) == pytest.approx((8 / 255, 2 / 255, 10))  # 2.5 eps / iterations
    assert check_budget(None, None, 15) == pytest.approx((5 / 255, 1 / 255, 15))  # L-inf defaults
    assert check_budget(None, None, 10, norm="l2") == pytest.approx((0.5, 0.125, 10))  # L2 defaults
    assert check_budget(1.0, 0.3, 5, norm="l2", input_size=(64, 32)) == pytest.approx((1.0, 0.3, 5))
    assert auto_step(4, 16) == 0.625
    top = image_diameter((64, 32))
    check_budget(top, None, 5, norm="l2", input_size=(64, 32))  # the diameter itself is allowed
    for kwargs, needle in (({"eps": top * 1.01, "norm": "l2", "input_size": (64, 32)}, "diameter of a 64x32"),
                           ({"eps": -1, "norm": "l2"}, "--eps -1"), ({"eps": 2, "norm": "l3"}, "--norm l3"),
                           ({"eps": 2, "step": "fast"}, "auto"), ({"eps": 2, "step": -1, "norm": "l2"}, "--step -1")):
        with pytest.raises(ReidError, match=needle) as err:
            check_budget(**{"max_iter": 5, **kwargs})
        assert "\n" not in str(err.value)
    with pytest.raises(ReidError, match="universal"):
        check_attack_args(["SMA", "UAP"], eps=[1.0, 2.0], norm="l2")


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises_reid_error(setup):
    model, images, feats = setup
    with pytest.raises(ReidError) as err:
        plan_attack("PGD", feats, PIDS)
    assert all(n in str(err.value) for n in ATTACK_NAMES) and "\n" not in str(err.value)
    for name in ("SMA", "ODFA", "FNA", "FNA_pull", "FNA_rand"):
        with pytest.raises(ReidError, match="single"):
            plan_attack(name, feats, PIDS, single=True)
    with pytest.raises(ReidError, match="single"):
        check_attack_args(["IFGSM", "SMA"], single=True)
    plan = plan_attack("IFGSM", feats, PIDS)
    for kwargs in ({"eps": 0}, {"eps": -1}, {"eps": 300}, {"max_iter": 0}, {"step": 0},
                   {"max_iter": 1.5}, {"max_iter": "x"}, {"eps": "x"}):
        with pytest.raises(ReidError):
            attack_batch(model, images, plan, range(len(PIDS)), **kwargs)
        with pytest.raises(ReidError):
            check_attack_args(["IFGSM"], **kwargs)
    attack_batch(model, images[:2], plan, [0, 1], eps=255, max_iter=1)   # the limits are fine


def test_unknown_name_in_list():
    for names in (["FNA", "nope"], [], "bogus"):
        with pytest.raises(ReidError, match="valid attacks"):
            resolve_attack_names(names)
    assert list(itertools.chain(resolve_attack_names("Fna_Pull"))) == ["FNA_pull"]


def test_which_runs_draw_at_random():
    """A plan says whether its run draws anything at random (what makes -n runs differ)."""
    feats, pids = torch.randn(5, 8), torch.tensor([1, 1, 2, 2, 3])   # identity 3: one image
    expected = {"FGSM": False, "IFGSM": False, "MIFGSM": False, "SMA": True, "ODFA": False, "FNA": False,
                "FNA_pull": False, "FNA_rand": True}
    assert {name: plan_attack(name, feats[:4], pids[:4]).random for name in expected} == expected
    assert plan_attack("IFGSM", feats[:4], pids[:4], single=True).random   # a random one of the guides
    assert plan_attack("IFGSM", feats, pids).random                        # identity 3 starts at random
