"""The one training loop: an epoch of any objective, with a defence's `prepare_batch`."""

import math

from reid.runtime import ReidError, distributed, progress


def train_epoch(model, loader, optimizer, objective, device, epoch, prepare_batch=None):
    """One epoch; `prepare_batch(model, images, labels, *companions)` may replace the batch
    (GOAT), where `companions` are the loader's extra per-sample images, if any: it returns
    the new images, or (images, labels) when the batch changes size (``reid.defences.universal``).
    Under torchrun ``model`` is the DistributedDataParallel one and the loader yields this
    process's part of each batch; ``prepare_batch`` gets the module inside, so GOAT's attack
    runs on this process's images without synchronising anything."""
    model.train()
    total_loss, total_acc, n = 0.0, 0.0, 0
    bar = progress(loader, f"epoch {epoch}")
    for images, labels, _, _, *companions in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if prepare_batch is not None:
            companions = [c.to(device, non_blocking=True) for c in companions]
            images = prepare_batch(distributed.unwrap(model), images, labels, *companions)
            if isinstance(images, tuple):
                images, labels = images
        for _ in range(getattr(objective, "replays", 1)):  # free adversarial training steps M times a batch
            loss, acc = objective(model, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += 1
            value = loss.item()
            if not math.isfinite(value):
                raise ReidError(f"epoch {epoch}, step {n}: the training loss is {value} (not finite); nothing was "
                                "saved from this epoch (lower --lr, or check the data)")
            total_loss += value
            total_acc += acc.item() if acc is not None else 0.0
        bar.set_postfix(loss=f"{total_loss / n:.3f}")
    stats = {"loss": total_loss / max(n, 1)}
    if objective.kind == "classif":
        stats["accuracy"] = total_acc / max(n, 1)
    return stats
