"""The Mis-Ranking generator (Wang et al., CVPR 2020, "Transferable, Controllable, and
Inconspicuous Adversarial Attacks on Person Re-identification With Deep Mis-Ranking"): a
network that maps a query to its perturbation in one forward pass, trained once against a
surrogate (``-a MisRank``; ``reid.evaluation.universal.obtain_generator``).

What is kept from the paper, and why:
  * the generator: a ResNet image-to-image network (Johnson et al.'s, as the paper's: a 7x7
    convolution, two stride-2 convolutions, residual blocks, two upsampling stages, a 7x7
    convolution), its output squashed by tanh and scaled to the L-inf budget eps, so every
    perturbation is inside the threat model by construction;
  * the learning-to-mis-rank loss: for each perturbed image a', its nearest true match (clean
    features of the batch's other images of its identity) is pushed behind its furthest
    non-match (the triplet loss reversed): [d(a', n_furthest) - d(a', p_nearest) + m]_+,
    minimised, on L2-normalised features, m = 0.3.
    The perturbed image is compared with clean images, as the attack meets a clean gallery;
  * a multi-stage discriminator: three stride-2 stages, each with its own patch classifier,
    so realism is judged at three scales; the generator is trained to fool it (the GAN term,
    weight 0.1 against the mis-ranking loss: the paper's code weights its re-ID loss 10 against
    it), the discriminator to tell clean images from perturbed ones.
What is left out: the paper's learned mask (its "controllable" part: how many pixels are
attacked), since the threat model here is the whole L-inf ball of every evaluation; its
label-smoothed cross-entropy term, which needs the surrogate's classifier (this works with
any feature model, ``--model-factory`` included); and its log of the loss (a log of a hinge
that reaches 0 is -inf).

Generator and discriminator are one module (``GeneratorPair``) trained by the one training loop
(``reid.training.train_epoch``) through ``MisRankObjective``; one Adam over both is exactly
the paper's two Adams of the same settings, because each loss reaches only its own network:
the discriminator's loss sees the perturbed images detached, and the generator's GAN term
goes through the discriminator's weights detached.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from reid.runtime import ReidError, atomic_path, load_torch_file

GENERATOR_FORMAT = "reid-generator-1"


@dataclass(frozen=True)
class GeneratorConfig:
    eps: float = 8.0        # /255
    epochs: int = 5
    lr: float = 2e-4        # the paper's Adam, betas (0.5, 0.999)
    width: int = 32         # channels of the generator's first stage
    blocks: int = 4         # residual blocks
    margin: float = 0.3
    gan_weight: float = 0.1  # the paper's code weights the re-ID loss 10 (2 for PCB) against the GAN term
    seed: int = 0


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class PerturbationGenerator(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> perturbations in [-eps, eps] (eps in /255), same size."""

    def __init__(self, eps, width=32, blocks=4):
        super().__init__()
        self.eps = float(eps)
        w = int(width)

        def stage(cin, cout, k, stride, pad):
            return [nn.Conv2d(cin, cout, k, stride, pad), nn.InstanceNorm2d(cout), nn.ReLU(True)]

        self.encode = nn.Sequential(nn.ReflectionPad2d(3), *stage(3, w, 7, 1, 0), *stage(w, 2 * w, 3, 2, 1),
                                    *stage(2 * w, 4 * w, 3, 2, 1), *[_Residual(4 * w) for _ in range(int(blocks))])
        self.decode = nn.Sequential(nn.Upsample(scale_factor=2), *stage(4 * w, 2 * w, 3, 1, 1),
                                    nn.Upsample(scale_factor=2), *stage(2 * w, w, 3, 1, 1),
                                    nn.ReflectionPad2d(3), nn.Conv2d(w, 3, 7))

    def forward(self, x):
        out = self.decode(self.encode(x))
        if out.shape[-2:] != x.shape[-2:]:  # sizes that are not multiples of 4
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(out) * (self.eps / 255.0)

    def perturb(self, x):
        return (x + self(x)).clamp(0.0, 1.0)


class MultiStageDiscriminator(nn.Module):
    """Three stride-2 stages, a patch classifier on each: a list of (B, 1, h, w) logits."""

    def __init__(self, width=32):
        super().__init__()
        w = int(width)
        chans = [3, w, 2 * w, 4 * w]
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2, True))
                                    for a, b in zip(chans, chans[1:]))
        self.heads = nn.ModuleList(nn.Conv2d(b, 1, 3, 1, 1) for b in chans[1:])

    def forward(self, x):
        out = []
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)
            out.append(head(x))
        return out


def gan_loss(logits, real):
    """The mean over stages of the binary cross-entropy of every patch against real / fake."""
    return sum(F.binary_cross_entropy_with_logits(z, torch.full_like(z, float(real))) for z in logits) / len(logits)


def misrank_loss(adv, clean, labels, margin):
    """The learning-to-mis-rank loss (module docstring) of perturbed features ``adv`` (B, D)
    against the clean features of the batch (B, D), on L2-normalised features; a mean over the
    images with at least one other image of their identity and one of another."""
    a, c = F.normalize(adv, dim=1), F.normalize(clean, dim=1)
    dist = torch.cdist(a, c)
    same = labels.view(-1, 1) == labels.view(1, -1)
    own = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~own, ~same
    nearest_pos = dist.masked_fill(~pos, math.inf).amin(1)
    furthest_neg = dist.masked_fill(~neg, -math.inf).amax(1)
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        raise ReidError("the Mis-Ranking generator needs batches with two images of an identity and another "
                        "identity (P x K batches)")
    return F.relu(furthest_neg - nearest_pos + margin)[valid].mean()


class GeneratorPair(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.generator = PerturbationGenerator(config.eps, config.width, config.blocks)
        self.discriminator = MultiStageDiscriminator(config.width)


class MisRankObjective:
    """An objective of the training loop: ``model`` is a ``GeneratorPair``, ``surrogate`` the
    frozen feature model it is trained against (kept in eval mode)."""

    kind = "generator"

    def __init__(self, surrogate, config):
        self.surrogate, self.config = surrogate.eval(), config
        for p in surrogate.parameters():
            p.requires_grad_(False)

    def __call__(self, model, images, labels):
        pair = getattr(model, "module", model)
        adv = pair.generator.perturb(images)
        with torch.no_grad():
            clean = self.surrogate(images)
        rank = misrank_loss(self.surrogate(adv), clean, labels, self.config.margin)
        frozen = {k: v.detach() for k, v in pair.discriminator.named_parameters()}
        fool = gan_loss(functional_call(pair.discriminator, frozen, (adv,)), real=True)
        judge = (gan_loss(pair.discriminator(images), real=True)
                 + gan_loss(pair.discriminator(adv.detach()), real=False)) / 2
        return rank + self.config.gan_weight * fool + judge, None


def save_generator(path, generator, config, input_size, **info):
    """Write ``generator.pt`` atomically: the generator's weights, its config and how it was learned."""
    record = {"format": GENERATOR_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in
                                                         generator.state_dict().items()},
              "config": asdict(config), "input_size": list(input_size), **info}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(record, f)


def load_generator(path):
    """Read a ``generator.pt``; returns (PerturbationGenerator in eval mode, record); every
    problem is a one-line ReidError."""
    record = load_torch_file(path, "generator file")
    if not isinstance(record, dict) or record.get("format") != GENERATOR_FORMAT:
        raise ReidError(f"--generator {path} is not a generator file (expected the {GENERATOR_FORMAT} dict "
                        "gen_adv.py -a MisRank writes)")
    try:
        config = GeneratorConfig(**record["config"])
        generator = PerturbationGenerator(config.eps, config.width, config.blocks)
        generator.load_state_dict(record["state_dict"], strict=True)
    except (TypeError, KeyError, RuntimeError) as err:
        raise ReidError(f"--generator {path}: {str(err).splitlines()[0]}") from None
    return generator.eval(), record
