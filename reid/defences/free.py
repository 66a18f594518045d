"""Free adversarial training (Shafahi et al., NeurIPS 2019): ``train.py --free M``.

Each batch is replayed M times. A perturbation delta, one per batch slot, starts at 0 and is
kept from replay to replay and from batch to batch; every replay trains on
clamp(images + delta, 0, 1), and the one backward pass of its training step gives both the
model's gradient and delta's: after the step, delta <- clip(delta + eps sign(grad), -eps, eps),
the step being the budget (``--adv-eps``, default 5/255), as in the paper. The adversary
ascends the loss the model descends (cross-entropy or batch-hard triplet): free adversarial training is the Madry-style
defence at about one clean step per replay. Train ``-n N / M`` epochs for the cost of N.

It is an objective of the one training loop (``replays`` tells the loop how often to step on
a batch); delta's update from a backward pass is applied when the next replay starts.
The adversaries of GOAT, EST, ACT and HM are not the training loss's ascent (guides, a
collapse, a hardness target), so one backward pass cannot serve them: ``--free`` with a
``--defence`` is refused, as with ``--uap-adv`` (which changes the batch) and under torchrun
(delta is one process's state).
"""

import torch

from reid.runtime import ReidError, check_number


class FreeObjective:
    """An objective of the training loop: ``base`` on the batch plus the carried perturbation."""

    def __init__(self, base, replays, eps):
        self.base, self.replays, self.eps = base, int(replays), float(eps)
        self.kind = base.kind
        self.delta = None

    def settings(self):
        return {"replays": self.replays, "eps": self.eps}

    def state(self):
        """The settings and delta with the last backward's step applied (what the next replay uses)."""
        delta = self._stepped()
        return {**self.settings(), "delta": None if delta is None else delta.detach().cpu().clone()}

    def load_state(self, state):
        self.delta = None if state.get("delta") is None else state["delta"].clone()

    def _stepped(self):
        bound = self.eps / 255
        delta = self.delta
        if delta is not None and delta.grad is not None:
            delta = (delta.detach() + bound * delta.grad.sign()).clamp(-bound, bound)
        return delta

    def _advance(self, images):
        """delta for this replay: the last backward's step applied (zeros at the first batch;
        batches are full-size, and -b cannot change on --resume)."""
        delta = self._stepped()
        if delta is None or delta.shape != images.shape:
            delta = torch.zeros_like(images)
        self.delta = delta.detach().to(images.device).requires_grad_(True)
        return self.delta

    def __call__(self, model, images, labels):
        delta = self._advance(images)
        return self.base(model, (images + delta).clamp(0, 1), labels)


def check_free(replays, eps=None, defence=None, uap_adv=None, norm="linf", step=None):
    """``--free M``'s flags (its budget is ``--adv-eps``, L-inf): a one-line ReidError when they clash."""
    if replays is None:
        return
    check_number("--free", replays, 1)
    if eps is not None:
        check_number("--adv-eps", eps, 0, 255, strict=True)
    if norm != "linf" or step is not None:
        raise ReidError(f"--free with {'--adv-norm ' + norm if norm != 'linf' else '--adv-step'}: free adversarial "
                        "training steps by the L-inf budget itself (--adv-eps)")
    if defence is not None:
        raise ReidError(f"--free with --defence {defence}: its adversary is not the ascent of the training loss, so "
                        "one backward pass cannot give both steps; --free alone is free adversarial training")
    if uap_adv is not None:
        raise ReidError("--free with --uap-adv: choose one defence")
