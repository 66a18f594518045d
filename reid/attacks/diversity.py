"""Transfer techniques of the gradient attacks, as one model wrapper the optimisers call
(``TransferModel``), so that every iterative attack of the table gains them unchanged:

  input diversity (``--input-diversity P``; Xie et al., CVPR 2019): at every forward pass of
      the optimisation each image is, with probability P, resized by a random factor in
      [DI_SMALLEST, 1] and pasted at a random place of a zero image of the input size
      (``resize_pad``, the same transformation as the ``resize-pad`` input defence);
  translation invariance (``--translation-invariance K``; Dong et al., CVPR 2019): the
      gradient with respect to the image is smoothed by a K x K Gaussian kernel (standard
      deviation (K - 1) / 6 pixels, the kernel of the paper's code: +-3 standard deviations
      over its width), per channel, before the optimiser's step: ``SmoothGradient``, the
      identity forward.

Momentum, the third technique of DI-TIM, is MIFGSM. The adversarial features that are scored
come from the plain model: the techniques shape the optimisation only.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

DI_SMALLEST = 0.9  # the smallest resize factor of input diversity


def resize_pad(x, smallest, p=1.0):
    """Each image of x (B, C, H, W), with probability ``p``, resized by a random factor in
    [smallest, 1] and pasted at a random place of a zero image of the same size; the others
    as they are. Draws from the global RNG; differentiable in x."""
    height, width = x.shape[-2:]
    out = x.clone() if p < 1 else torch.zeros_like(x)
    chosen = torch.rand(len(x)) < p if p < 1 else torch.ones(len(x), dtype=torch.bool)
    scales = smallest + (1.0 - smallest) * torch.rand(len(x))
    for i in chosen.nonzero().squeeze(1).tolist():
        h, w = max(1, round(height * float(scales[i]))), max(1, round(width * float(scales[i])))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        canvas = torch.zeros_like(x[i])
        canvas[:, top:top + h, left:left + w] = F.interpolate(x[i:i + 1], size=(h, w), mode="bilinear",
                                                              align_corners=False)[0]
        out[i] = canvas
    return out


def gaussian_kernel(k, channels=3):
    """The (channels, 1, k, k) depthwise Gaussian kernel of translation invariance, summing to 1
    per channel: over +-3 standard deviations of its width."""
    if k < 3 or k % 2 == 0:
        raise ValueError(f"gaussian_kernel: k must be odd and >= 3, got {k}")
    axis = torch.linspace(-3.0, 3.0, k, dtype=torch.float64)
    one = torch.exp(-axis ** 2 / 2)
    kernel = torch.outer(one, one)
    kernel = (kernel / kernel.sum()).float()
    return kernel.expand(channels, 1, k, k).contiguous()


class SmoothGradient(torch.autograd.Function):
    """The identity forward; backward: the incoming gradient convolved with ``kernel``
    (depthwise, zero padding, same size)."""

    @staticmethod
    def forward(ctx, x, kernel):
        ctx.save_for_backward(kernel)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (kernel,) = ctx.saved_tensors
        kernel = kernel.to(grad.dtype)
        return F.conv2d(grad, kernel, padding=kernel.shape[-1] // 2, groups=grad.shape[1]), None


class TransferModel(nn.Module):
    """``model`` seen through the transfer techniques (module docstring): ``diversity`` P in
    [0, 1], ``smoothing`` K (0: off, else odd >= 3)."""

    def __init__(self, model, diversity=0.0, smoothing=0):
        super().__init__()
        self.model, self.diversity, self.smoothing = model, float(diversity), int(smoothing)
        self.register_buffer("kernel", gaussian_kernel(self.smoothing) if self.smoothing else torch.zeros(0))

    def forward(self, x):
        if self.smoothing:
            x = SmoothGradient.apply(x, self.kernel.to(x.device))
        if self.diversity > 0:
            x = resize_pad(x, DI_SMALLEST, self.diversity)
        return self.model(x)
