"""`--device auto|cpu|cuda|cuda:N` (and the reference scripts' `--gpu N`) to a torch device."""

import torch

from reid.runtime.checks import check_number
from reid.runtime.errors import ReidError


def resolve_device(device="auto", gpu=None):
    """`--device auto|cpu|cuda|cuda:N`, with `--gpu N` as the reference alias."""
    if gpu is not None:
        check_number("--gpu", gpu, 0)
        device = f"cuda:{gpu}"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index is not None):
        raise ReidError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    shown = f"--gpu {gpu}" if gpu is not None else f"--device {device}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReidError(f"{shown}: no CUDA GPU is available (use --device cpu)")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.index is not None and dev.index >= count:
        raise ReidError(f"{shown}: there {'is' if count == 1 else 'are'} {count} CUDA GPU{'' if count == 1 else 's'} "
                        f"(cuda:0 to cuda:{count - 1})")
    return dev
