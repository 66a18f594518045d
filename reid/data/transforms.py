"""Image transforms. No Normalize: the model normalises (pixel-space attacks)."""

import torchvision.transforms as T


def build_transforms(height=256, width=128, train=False):
    """Reference augmentation: resize, pad, random crop, horizontal flip.

    The reference pads 10 px at 256x128; the padding scales with the height so that
    small test inputs (64x32) get the same relative jitter.
    """
    resize = T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)
    if not train:
        return T.Compose([resize, T.ToTensor()])
    pad = max(1, round(10 * height / 256))
    return T.Compose([resize, T.Pad(pad), T.RandomCrop((height, width)),
                      T.RandomHorizontalFlip(), T.ToTensor()])
