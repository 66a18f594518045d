"""The one training loop, its objectives, losses and log. Defences plug into it (`reid.defences`).
"""

from reid.training.log import append_jsonl, check_log, keep_log_epochs, resume_point
from reid.training.loop import train_epoch
from reid.training.losses import batch_hard_triplet_loss
from reid.training.objectives import Objective, lr_schedule

__all__ = ["Objective", "append_jsonl", "batch_hard_triplet_loss", "check_log", "keep_log_epochs", "lr_schedule",
           "resume_point", "train_epoch"]
