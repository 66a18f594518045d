"""The reliable evaluation (issue 20): APGD, the ranking loss, Square, restarts, EOT, the input
defences with BPDA, the standard suite and the sanity checks."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import SMALL, run_cli, tiny_model
from reid.attacks import ATTACKS, SUITES, RankingLoss, apgd_checkpoints, attack_batch, plan_attack
from reid.attacks.blackbox import _square_side
from reid.attacks.optimisers import OPTIMISERS
from reid.cli.attack import parse_args
from reid.defences import InputDefence
from reid.evaluation.checks import file_checks, gradient_free_check, model_checks
from reid.runtime import ReidError


def _images(n=6, seed=0, size=(16, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, *size, generator=g)
    x[0, :, :2] = 0.0  # values at the bounds of [0, 1]
    x[1, :, :2] = 1.0
    return x


class LinearLoss(nn.Module):
    """loss = features . w per image (features = the flattened image)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def per_sample(self, features, y):
        return (features * self.w).sum(1)

    def forward(self, features, y):
        return self.per_sample(features, y).sum()


def test_apgd_checkpoints_follow_the_papers_fractions():
    # w = 0, .22, .41, .57, .70, .80, .87, .93, .99 (then 1.05 > 1): ceil(w * 100)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # 15 iterations: ceil(3.3, 6.15, 8.55, 10.5, 12, 13.05, 13.95) = 4 7 9 11 12 14 14; 14.85 -> 15 is the end
    assert apgd_checkpoints(15) == [4, 7, 9, 11, 12, 14]


def test_apgd_halves_where_the_loss_stalls_and_returns_the_best_point():
    """A linear loss on an identity model: the first step (2 eps, projected) reaches the corner
    x + eps sign(w) and every later step stays there, so 1 of the first 22 steps raised the loss and
    none after: fewer than 0.75 of the steps since the last checkpoint, so the step halves at every
    checkpoint; the returned image is that corner."""
    x = torch.full((2, 12), 0.5)
    w = torch.tensor([1.0, -1.0] * 6).repeat(2, 1)
    eps, trace = 4 / 255, []
    out = OPTIMISERS["apgd"].linf(nn.Identity(), LinearLoss(w), x, x.clone(), None, eps, None, 100, trace=trace)
    assert torch.allclose(out, x + eps * w.sign())
    etas = [float(t[0]) for t in trace]
    expected, eta = [], 2 * eps
    for k in range(1, 101):
        if k in (22, 41, 57, 70, 80, 87, 93, 99):
            eta /= 2
        expected.append(eta)
    assert etas == pytest.approx(expected)


class Counter(nn.Module):
    """A model whose loss rises at every call (the step never needs halving) but has no gradient."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1) * 0 + self.calls


def test_apgd_keeps_its_step_while_the_loss_keeps_rising():
    x = torch.rand(3, 6)
    trace = []
    OPTIMISERS["apgd"].linf(Counter(), LinearLoss(torch.ones(3, 6)), x, x.clone(), None, 8 / 255, None, 30,
                            trace=trace)
    assert all(torch.equal(t, torch.full((3,), 2 * 8 / 255)) for t in trace)


class Recorder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("norm,eps", [("linf", 6 / 255), ("l2", 0.3)])
def test_apgd_returns_each_images_best_iterate_inside_the_budget(norm, eps):
    model = tiny_model(dim=8)
    x = _images()
    with torch.no_grad():
        target = model(x)
    from reid.attacks import GuidedLoss, pack_guides
    packed = pack_guides(target.unsqueeze(1), torch.ones(len(x), 1))
    loss = GuidedLoss()
    start = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    recorder = Recorder(model)
    out = OPTIMISERS["apgd"].run(norm)(recorder, loss, x, start, packed, eps, None, 12)
    with torch.no_grad():
        losses = torch.stack([loss.per_sample(model(p), packed) for p in recorder.seen])  # (passes, B)
        assert torch.allclose(loss.per_sample(model(out), packed), losses.max(0).values)
    assert len(recorder.seen) == 12 + 1  # 12 gradient passes, the last point by a forward pass
    moved = (out - x).abs().flatten(1).amax(1) if norm == "linf" else (out - x).flatten(1).norm(dim=1)
    assert (moved <= eps + 1e-6).all() and out.min() >= 0 and out.max() <= 1


def _ranking_brute(feats, rows, gf, gp, gc, qp, qc, k):
    out = []
    for f, r in zip(feats, rows):
        d = [float(((f - g) ** 2).sum()) for g in gf]
        match = [d[j] for j in range(len(gf)) if gp[j] == qp[r] and gc[j] != qc[r]]
        other = sorted(d[j] for j in range(len(gf)) if gp[j] != qp[r] and gp[j] != -1)
        out.append(min(match) - other[k - 1] if match and len(other) >= k else 0.0)
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_ranking_loss_against_brute_force(k):
    g = torch.Generator().manual_seed(0)
    gf = torch.randn(14, 5, generator=g)
    gp = [1, 1, 2, 2, 3, 0, -1, 1, 2, 4, 4, 3, 0, 1]
    gc = [1, 2, 1, 2, 1, 1, 2, 1, 3, 1, 2, 2, 3, 3]
    qp, qc = [1, 2, 3, 5], [1, 2, 2, 1]   # pid 5 has no match in the gallery
    loss = RankingLoss(gf, gp, gc, qp, qc, k=k)
    feats, rows = torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    assert loss.per_sample(feats, rows).tolist() == pytest.approx(_ranking_brute(feats, rows, gf, gp, gc, qp, qc, k),
                                                                 abs=1e-5)
    assert loss.per_sample(feats, rows)[3] == 0  # no valid true match: 0 and no gradient


def test_ranking_loss_positive_exactly_when_rank_k_is_lost():
    gf = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    loss = RankingLoss(gf, [1, 2, 3, 4], [2, 1, 1, 1], [1], [1], k=2)
    # query at 1.6: the match (0) at distance 2.56; non-matches at .36, .16, 1.96: the 2nd nearest .36
    assert loss.per_sample(torch.tensor([[1.6]]), [0]).item() == pytest.approx(2.56 - 0.36)
    assert loss.per_sample(torch.tensor([[0.1]]), [0]).item() < 0  # the match is nearest: rank 1 holds


def test_square_stays_in_budget_counts_queries_and_never_accepts_a_worse_point():
    model = tiny_model(dim=8)
    x = _images()
    plan = plan_attack("SQUARE_FNA", model(x).detach(), torch.tensor([1, 1, 2, 2, 3, 3]))
    loss_fn, target = plan.objective(torch.arange(6))
    counted = Recorder(model)
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    out = OPTIMISERS["square"].linf(counted, loss_fn, x, x, target, 5 / 255, None, 40, generators=gens)
    assert sum(len(s) for s in counted.seen) == 40 * 6  # one forward pass of every image per query, stripes included
    with torch.no_grad():
        queried = torch.stack([loss_fn.per_sample(model(s), target) for s in counted.seen])  # (queries, B)
        final = loss_fn.per_sample(model(out), target)
    # only improving proposals are accepted: it ends on the best point it ever queried
    assert torch.allclose(final, queried.max(0).values) and (final > queried[0]).any()
    assert (out - x).abs().max() <= 5 / 255 + 1e-7 and out.min() >= 0 and out.max() <= 1
    # p is halved along the paper's schedule: side sqrt(0.8 * 16 * 8) = 10 -> capped at the width 8
    assert _square_side(0.8, 1, 1000, 16, 8) == 8 and _square_side(0.8, 999, 1000, 16, 8) == 1


def test_bit_depth_masks_pgd_and_square_and_bpda_break_it():
    """Bit-depth reduction: plain PGD gets a zero gradient and moves nothing; BPDA and Square do."""
    model = tiny_model(dim=8)
    x = (_images(8) * 15).round() / 15
    defended = InputDefence(model, "bitdepth:4")
    pids = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4])
    gen = torch.Generator().manual_seed(0)

    def damage(net, name, iters=20):  # a Square budget: queries
        with torch.no_grad():
            clean = net(x)
        plan = plan_attack(name, clean, pids)
        adv, feats = attack_batch(net, x, plan, range(8), eps=16, step=2, max_iter=iters, generator=gen)
        return float((feats - clean).norm(dim=1).mean())

    plain = damage(model, "FNA")  # the undefended model
    assert damage(defended, "FNA") == 0.0
    assert damage(defended, "APGD_FNA") == 0.0
    assert damage(InputDefence(model, "bitdepth:4", bpda=True), "FNA") > 0.5 * plain
    assert damage(defended, "SQUARE_FNA", iters=300) > 0.5 * plain
    assert not defended.training and not model.training
    found = model_checks(defended, x, eot=1, with_gradient=True)
    assert [w["check"] for w in found] == ["zero_gradient"] and found[0]["zero_gradient"] == 8
    assert model_checks(InputDefence(model, "bitdepth:4", bpda=True), x, eot=1, with_gradient=True) == []


def test_eot_on_a_random_model_is_reproducible_by_seed_and_flagged_without_it():
    model = InputDefence(tiny_model(dim=8), "resize-pad:0.8").eval()
    x = _images(4)
    with torch.no_grad():
        clean = model(x)
    plan = plan_attack("FNA", clean, torch.tensor([1, 1, 2, 2]))

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return attack_batch(model, x, plan, range(4), eps=8, max_iter=3, generator=gen, eot=3)[0]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    assert [w["check"] for w in model_checks(model, x, eot=1, with_gradient=False)] == ["random_model"]
    assert model_checks(model, x, eot=3, with_gradient=False) == []
    assert model_checks(tiny_model(dim=8), x, eot=1, with_gradient=True) == []  # healthy: silent


def test_restarts_keep_the_best_of_every_run_per_image():
    model = tiny_model(dim=8)
    x = _images(4)
    with torch.no_grad():
        clean = model(x)
    plan = plan_attack("APGD_SMA", clean, torch.tensor([1, 1, 2, 2]))
    loss_fn, target = plan.objective(torch.arange(4))

    def loss(restarts):
        adv = attack_batch(model, x, plan, range(4), eps=4, max_iter=5, generator=torch.Generator().manual_seed(0),
                           restarts=restarts)[0]
        with torch.no_grad():
            return loss_fn.per_sample(model(adv), target)

    assert (loss(3) >= loss(1) - 1e-7).all()


def _results(attacks, clean=0.5, transfer=None, norm="linf"):
    out = {"config": {"norm": norm}, "clean": {"mAP": clean}, "attacks": attacks}
    if transfer:
        out["transfer"] = transfer
    return out


def test_file_checks_fire_on_crafted_results_and_stay_silent_on_healthy_ones():
    sweep = lambda *m: {"by_eps": [{"eps": e, "mean": {"mAP": v}} for e, v in zip((2, 8, 32), m)]}  # noqa: E731
    assert file_checks(_results({"FNA": sweep(0.3, 0.1, 0.01)})) == []
    rising = file_checks(_results({"FNA": sweep(0.3, 0.35, 0.01)}))
    assert [w["check"] for w in rising] == ["eps_not_monotone"] and rising[0]["eps"] == [2, 8]
    far = file_checks(_results({"FNA": sweep(0.4, 0.3, 0.2)}))
    assert [w["check"] for w in far] == ["large_eps_far"] and far[0]["eps"] == 32
    one = {"FNA": {"eps": 5, "mean": {"mAP": 0.25}}}
    healthy = {"T": {"clean": {"mAP": 0.4}, "attacks": {"FNA": {"eps": 5, "mean": {"mAP": 0.38}}}}}
    assert file_checks(_results(one, transfer=healthy)) == []
    beats = {"T": {"clean": {"mAP": 0.4}, "attacks": {"FNA": {"eps": 5, "mean": {"mAP": 0.1}}}}}
    assert [w["check"] for w in file_checks(_results(one, transfer=beats))] == ["transfer_wins"]


def test_gradient_free_check():
    ap = lambda *v: {"ap": np.array(v)}  # noqa: E731
    healthy = [("APGD_FNA", 0, ap(0.1, 0.2, 0.0, np.nan)), ("SQUARE_RANK", 0, ap(0.3, 0.2, 0.1, np.nan))]
    assert gradient_free_check(healthy, {"SQUARE_RANK"}, 5, "5/255") == []
    masked = [("APGD_FNA", 0, ap(0.9, 0.8, 0.7, np.nan)), ("SQUARE_RANK", 0, ap(0.3, 0.8, 0.1, np.nan))]
    found = gradient_free_check(masked, {"SQUARE_RANK"}, 5, "5/255")
    assert [w["check"] for w in found] == ["gradient_free_wins"] and found[0]["share"] == pytest.approx(2 / 3)


def test_the_standard_suite_is_fixed():
    suite = SUITES["standard"]
    assert suite.members == ("APGD_SMA", "APGD_FNA", "APGD_RANK", "SQUARE_RANK")
    assert all(ATTACKS[m].optimiser in ("apgd", "square") for m in suite.members)
    assert (suite.max_iter, suite.queries, suite.restarts) == (100, 1000, 1)


@pytest.mark.parametrize("extra,message", [
    (["-a", "SQUARE_FNA", "--queries", "0"], "--queries 0"),
    (["-a", "RGF_FNA", "--queries", "10"], "--queries 10: -a RGF_FNA spends 11 queries a step; give at least 11"),
    (["-a", "BANDITS_RANK", "--norm", "l2"], "BANDITS_RANK has no l2 form"),
    (["-a", "FNA", "--eot", "0"], "--eot 0"),
    (["-a", "FNA", "--restarts", "0"], "--restarts 0"),
    (["-a", "FNA", "--input-defence", "blur:3"], "--input-defence blur:3: expected one of"),
    (["-a", "FNA", "--input-defence", "jpeg:101"], "jpeg takes a JPEG quality"),
    (["-a", "FNA", "--bpda"], "--bpda: only used with --input-defence"),
    (["-a", "FNA", "--input-defence", "resize-pad:0.9", "--bpda"], "--bpda: resize-pad is differentiable"),
    (["-a", "APGD_FGSM"], "unknown attack 'APGD_FGSM'"),
    (["-a", "FNA", "--queries", "50"], "--queries 50: no attack of -a uses it"),
    (["-a", "FGSM", "--restarts", "2"], "--restarts 2: no attack of -a uses it"),
    (["-a", "SQUARE_FNA", "--norm", "l2"], "SQUARE_FNA has no l2 form"),
    (["-a", "RANK", "--gallery"], "--gallery: RANK attacks the queries' ranking"),
    (["-a", "standard", "--max_iter", "20"], "--max_iter 20: -a standard runs at its fixed --max_iter 100"),
    (["-a", "UAP", "--eot", "2"], "--eot 2: no attack of -a uses it"),
])
def test_one_line_errors(tmp_path, tiny_market, extra, message):
    """Refused while parsing gen_adv.py's flags, before any work (cli_main prints a ReidError as one line)."""
    with pytest.raises(ReidError) as err:
        parse_args([str(tmp_path), tiny_market, "m.th", *extra])
    assert message in str(err.value) and "\n" not in str(err.value), err.value


def test_gen_adv_records_optimisers_queries_and_checks(trained_checkpoint, synthetic_dataset, tmp_path):
    out = tmp_path / "out"
    run_cli("gen_adv.py", trained_checkpoint, synthetic_dataset, "m.th", "-a", "FNA", "APGD_FNA", "APGD_RANK",
            "SQUARE_RANK", "BANDITS_FNA", "RGF_SMA", "--eps", "4", "--max_iter", "5", "--queries", "20", "--restarts",
            "2", "--workers", "0", "--device", "cpu", "--out", out, *SMALL)
    results = json.loads((out / "results.json").read_text())
    attacks = results["attacks"]
    assert attacks["FNA"]["optimiser"] == "pgd" and attacks["FNA"]["gradient_passes"] == 10
    assert attacks["APGD_FNA"]["optimiser"] == "apgd" and attacks["APGD_FNA"]["step"] is None
    assert attacks["APGD_RANK"]["uses_gallery"] and not attacks["APGD_FNA"]["uses_gallery"]
    assert attacks["SQUARE_RANK"]["gradient_free"] and attacks["SQUARE_RANK"]["queries"]["mean"] == 40
    # Bandits: 2 queries a step, 10 steps per restart; RGF: 11 a step, one step (the rest of 20 unspent)
    assert attacks["BANDITS_FNA"]["optimiser"] == "bandits" and attacks["BANDITS_FNA"]["queries"]["per_image"] == 40
    assert attacks["RGF_SMA"]["optimiser"] == "rgf" and attacks["RGF_SMA"]["queries"]["per_image"] == 22
    for name in ("BANDITS_FNA", "RGF_SMA"):  # they moved the images, within the budget (/255)
        assert 0 < attacks[name]["max_perturbation"] <= 4 + 1e-3
    assert attacks["BANDITS_FNA"]["mean"]["mAP"] <= results["clean"]["mAP"]
    assert results["checks"]["ran"] and isinstance(results["checks"]["warnings"], list)
    assert results["attacks"]["APGD_RANK"]["mean"]["mAP"] < results["clean"]["mAP"]


def test_the_report_prints_the_checks_of_an_old_results_file(tmp_path, capsys):
    """python -m reid.report runs the file checks on a results.json written before the checks
    existed (no "checks" entry), and prints the model checks a newer file stored."""
    from reid.evaluation import report

    def metrics(m):
        return {"mAP": m, "rank1": m, "rank5": m, "rank10": m, "mINP": m}

    old = {"config": {"norm": "linf", "eps": [2, 8]}, "clean": metrics(0.6),
           "attacks": {"FNA": {"by_eps": [{"eps": 2, "mean": metrics(0.2)}, {"eps": 8, "mean": metrics(0.4)}]}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    report.main([str(path)])
    out = capsys.readouterr().out
    assert "check eps_not_monotone: FNA: mAP rises from 20.00 at eps 2 to 40.00 at eps 8" in out
    stored = {**old, "attacks": {"FNA": {"eps": 2, "mean": metrics(0.2)}},
              "checks": {"ran": ["zero_gradient"],
                         "warnings": [{"check": "zero_gradient", "message": "3 of 8 images"}]}}
    path.write_text(json.dumps(stored))
    report.main([str(path)])
    out = capsys.readouterr().out
    assert "check zero_gradient: 3 of 8 images" in out and "eps_not_monotone" not in out
