"""Mixed precision (``--amp``): the model's forward passes in bfloat16 autocast, on CUDA only.

``wrap(model, True, device)`` returns a module whose forward runs ``model`` under
``torch.autocast("cuda", dtype=torch.bfloat16)`` and returns float32 features. Everything
around the model stays float32: images, the attacks' perturbations and their gradients
(autograd returns a float32 input's gradient in float32), the guided loss, the training losses
of the returned features (the classifier ``fc`` of a classification model is called outside
the wrapper, in float32) and the optimiser's master weights. What changes is the precision of
the network's matrix products and convolutions (bfloat16 keeps 8 bits of mantissa), hence of
features, distances and input gradients: metrics move by about the run-to-run noise of a
training, and the attacks' sign steps barely notice. On the CPU it is refused with a one-line
error (CPU autocast exists but is slower than float32 on most CPUs).
"""

import torch

from reid.runtime.errors import ReidError


def check(amp, device):
    """ReidError unless ``--amp`` can run on ``device`` (a CUDA GPU with bfloat16)."""
    if not amp:
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise ReidError(f"--amp: bfloat16 autocast is for CUDA GPUs; this run is on {device.type} (drop --amp)")
    if not torch.cuda.is_bf16_supported():
        raise ReidError(f"--amp: {torch.cuda.get_device_name(device)} has no bfloat16 support")


class Autocast(torch.nn.Module):
    """``module``'s forward under bfloat16 autocast, float32 outputs; its other attributes
    (``fc``, ``config``, ...) are the module's own."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return out.float()

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model, amp, device):
    """``model`` under bfloat16 autocast when ``amp`` (checked against ``device``), else itself."""
    check(amp, device)
    return Autocast(model) if amp else model
