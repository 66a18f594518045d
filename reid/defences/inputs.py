"""Input-transformation defences as model wrappers: the image is transformed before the model.

``--input-defence KIND:VALUE`` (gen_adv.py, ``evaluate_robustness(input_defence=...)``,
train.py's evaluation) wraps the evaluated model in an ``InputDefence``:

  ``bitdepth:B``     each value rounded to B bits (Xu et al., NDSS 2018), B in 1..8;
  ``jpeg:Q``         JPEG re-encoding at quality Q in 1..100 (torchvision's encoder; Guo et al.,
                     ICLR 2018);
  ``resize-pad:R``   random resize-and-pad (Xie et al., ICLR 2018): each image resized by a
                     random factor in [R, 1] and pasted at a random place of a zero image of
                     the input size, R in (0, 1); random at inference, so attack it with --eot.

Bit-depth reduction and JPEG have no useful gradient (rounding: zero almost everywhere; the
JPEG codec: none, given here as zero), which is what makes plain gradient attacks fail on them
and what the adaptive attacks get around: ``bpda=True`` (``--bpda``, Athalye et al., ICML 2018)
keeps the transformed forward pass but replaces the transformation's backward by the
identity (straight-through), and the gradient-free Square attack needs no gradient at all.
"""

import torch
import torch.nn as nn
from torchvision.io import decode_jpeg, encode_jpeg

from reid.attacks import resize_pad
from reid.runtime import ReidError

INPUT_DEFENCES = {
    "bitdepth": (int, 1, 8, "bits per value, an integer in 1..8"),
    "jpeg": (int, 1, 100, "a JPEG quality, an integer in 1..100"),
    "resize-pad": (float, 0.0, 1.0, "the smallest resize factor, a number in (0, 1)"),
}
RANDOM_DEFENCES = ("resize-pad",)


def parse_input_defence(text, flag="--input-defence"):
    """``KIND:VALUE`` -> (kind, value), or ReidError naming the flag and what was expected."""
    kinds = ", ".join(f"{k}:{'R' if k == 'resize-pad' else 'B' if k == 'bitdepth' else 'Q'}" for k in INPUT_DEFENCES)
    kind, _, value = str(text).partition(":")
    if kind not in INPUT_DEFENCES or not value:
        raise ReidError(f"{flag} {text}: expected one of {kinds}")
    cast, low, high, what = INPUT_DEFENCES[kind]
    try:
        number = cast(value)
    except ValueError:
        raise ReidError(f"{flag} {text}: {kind} takes {what}") from None
    inside = low < number < high if kind == "resize-pad" else low <= number <= high
    if not inside:
        raise ReidError(f"{flag} {text}: {kind} takes {what}")
    return kind, number


def check_bpda(kind, bpda):
    """BPDA replaces a non-differentiable step's backward; a random, differentiable one is refused."""
    if bpda and kind in RANDOM_DEFENCES:
        raise ReidError(f"--bpda: {kind} is differentiable (its backward is its own); attack its randomness "
                        "with --eot K instead")


def _bitdepth(x, bits):
    levels = 2 ** int(bits) - 1
    return torch.round(x * levels) / levels


def _jpeg(x, quality):
    with torch.no_grad():
        pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        decoded = [decode_jpeg(encode_jpeg(image, quality=int(quality))) for image in pixels]
        out = torch.stack(decoded).to(x.device, x.dtype) / 255.0
    return out + 0.0 * x  # no gradient through the codec: zero, not an error


_TRANSFORMS = {"bitdepth": _bitdepth, "jpeg": _jpeg, "resize-pad": resize_pad}


class InputDefence(nn.Module):
    """``model(T(x))`` for the transformation T of ``spec`` (``"jpeg:75"``, see the module
    docstring); ``bpda``: the same forward pass, the identity as T's backward."""

    def __init__(self, model, spec, bpda=False):
        super().__init__()
        self.model = model
        self.kind, self.value = parse_input_defence(spec)
        check_bpda(self.kind, bpda)
        self.bpda = bool(bpda)
        self.random = self.kind in RANDOM_DEFENCES
        self.train(model.training)  # the wrapped model's mode (a fresh Module would be in training mode)

    def transform(self, x):
        return _TRANSFORMS[self.kind](x, self.value)

    def forward(self, x):
        t = self.transform(x)
        if self.bpda:
            t = x + (t - x).detach()
        return self.model(t)

    def config(self):
        inner = getattr(self.model, "config", None)
        return {"input_defence": f"{self.kind}:{self.value:g}", "bpda": self.bpda,
                "model": inner() if callable(inner) else type(self.model).__name__}
