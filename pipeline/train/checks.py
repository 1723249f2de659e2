"""The train stage's own keys, checked before anything is submitted (the stage table runs it); what needs
the dataset, the DeepSpeed file or the GPUs is checked by the submitter after these."""

from __future__ import annotations

import os
import re

from omegaconf import DictConfig

from pipeline.config import ConfigError, require_choice, require_int, require_number


PRECISIONS = ("auto", "fp16", "bf16", "fp32")
HUB_REPO = re.compile(r"[\w.-]+/[\w.-]+")


def check_train(cfg: DictConfig) -> None:
    """The train stage's keys (``train.*``): the models, the dataset, every count and rate, LoRA, precision, the hub repo."""
    models = list(cfg.train.models)
    if not models or any(m not in ("a", "b") for m in models) or len(set(models)) != len(models):
        raise ConfigError(f"train.models={models}: list a and/or b (the models of the pair), each once")
    if not str(cfg.train.dataset or "").strip():
        raise ConfigError("train.dataset is empty: use gsm8k, a .jsonl/.json file, or a hub dataset name")
    for key in ("per_device_batch_size", "gradient_accumulation_steps", "save_steps", "save_total_limit", "logging_steps"):
        require_int(cfg, f"train.{key}", 1)
    require_int(cfg, "train.max_length", 16)
    require_int(cfg, "train.max_samples", 1, nullable=True)
    require_int(cfg, "train.max_steps", 1, nullable=True)
    require_int(cfg, "train.lora.r", 1)
    require_int(cfg, "train.lora.alpha", 1)
    for key in ("epochs", "beta", "learning_rate"):
        require_number(cfg, f"train.{key}", 0.0, strict=True)
    require_number(cfg, "train.lora.dropout", 0.0, high=1.0)
    require_number(cfg, "train.warmup", 0.0)
    if not list(cfg.train.lora.target_modules):
        raise ConfigError("train.lora.target_modules is empty: name the layers LoRA adapts, e.g. [q_proj, v_proj]")
    require_choice(cfg, "train.precision", PRECISIONS)
    push = cfg.train.push_to_hub
    if push is not None:
        if not isinstance(push, str) or not HUB_REPO.fullmatch(push):
            raise ConfigError(f"train.push_to_hub={push}: give a hub repo id, owner/name (letters, digits, '-', '_', '.'), or null")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(f"train.push_to_hub={push}: HF_HUB_OFFLINE=1 (the suite's default) blocks the push; "
                              "submit with HF_HUB_OFFLINE=0 and the token in HF_TOKEN")
