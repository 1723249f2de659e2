"""The train stage's own keys, checked before anything is submitted (the stage table runs it), each against
its field in :class:`TrainSettings`; what needs the dataset, the DeepSpeed file or the GPUs is checked by
the submitter after these."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.settings import check
from pipeline.train.settings import TrainSettings


def check_train(cfg: DictConfig) -> None:
    """The train stage's keys (``train.*``): the models, the dataset, every count and rate, LoRA, precision, wandb."""
    check(cfg, "train", TrainSettings)
