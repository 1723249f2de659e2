"""The train stage's own keys, checked before anything is submitted (the stage table runs it), each against
its field in :class:`TrainSettings`; what needs the dataset, the DeepSpeed file or the GPUs is checked by
the submitter after these."""

from __future__ import annotations

import os
import re

from omegaconf import DictConfig

from pipeline.config import ConfigError
from pipeline.settings import check
from pipeline.train.settings import TrainSettings

HUB_REPO = re.compile(r"[\w.-]+/[\w.-]+")


def check_train(cfg: DictConfig) -> None:
    """The train stage's keys (``train.*``): each against its field in :class:`TrainSettings`, then the hub
    repo's form and whether the environment lets a push out."""
    check(cfg, "train", TrainSettings)
    push = cfg.train.push_to_hub
    if push is not None:
        if not isinstance(push, str) or not HUB_REPO.fullmatch(push):
            raise ConfigError(f"train.push_to_hub={push}: give a hub repo id, owner/name (letters, digits, '-', '_', '.'), or null")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(f"train.push_to_hub={push}: HF_HUB_OFFLINE=1 (the suite's default) blocks the push; "
                              "submit with HF_HUB_OFFLINE=0 and the token in HF_TOKEN")
