"""The train stage's own keys, checked before anything is submitted (the stage table runs it), each against
its field in :class:`TrainSettings`; what needs the dataset, the prepared models or the DeepSpeed file is
checked once the models are prepared (:func:`check_training`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import ConfigError

from pipeline.models.registry import display_name
from pipeline.run_config import RunConfig
from pipeline.settings import check
from pipeline.train.hub import check_repo_id, hub_repo
from pipeline.train.settings import TrainSettings


def check_train(cfg: DictConfig) -> None:
    """The train stage's keys (``train.*``): each against its field in :class:`TrainSettings` (the hub repo's
    form there), then the repo each model's adapter goes to (``<repo>-<model>`` with two models)."""
    check(cfg, "train", TrainSettings)
    push = cfg.train.push_to_hub
    if push is not None:
        models = list(cfg.train.models)
        for key in models:
            repo = hub_repo(push, display_name(str(cfg.models[key])), models)
            if repo != push:
                check_repo_id(f"train.push_to_hub={push}: model {key}'s repo", repo)


def check_lora_targets(key: str, name: str, folder: Path, targets: list[str]) -> None:
    """Every ``train.lora.target_modules`` entry names a layer of the model, as PEFT matches it (the module's
    name, or its last dotted parts): the model is built from its config.json on the meta device (no
    weights, no memory), so a name PEFT would refuse after the job started is refused here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        return  # a PEFT adapter folder: its base's layers were checked when it was trained
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    modules = [n for n, _ in model.named_modules() if n]
    for target in targets:
        if not any(n == target or n.endswith(f".{target}") for n in modules):
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ConfigError(f"train.lora.target_modules has '{target}': {key} ({name}) has no such layer; its linear layers: "
                              f"{', '.join(linear)}")


def check_training(config: RunConfig, folders: dict[str, Path]) -> None:
    """The training set, the layers LoRA adapts, the DeepSpeed config and the adapters' folders: what would
    otherwise fail inside the job (the backend checks the processes and GPUs of a per-GPU stage)."""
    from pipeline.train.deepspeed import deepspeed_config
    from pipeline.train.pairs import check_dataset

    check_dataset(config)
    for key in config.train.models:
        if key in folders:
            check_lora_targets(f"models.{key}", getattr(config.models, key), folders[key], list(config.train.lora.target_modules))
    deepspeed = deepspeed_config(config.train.deepspeed)
    if deepspeed and config.train.load_in_4bit and "zero3" in Path(deepspeed).stem:
        raise ConfigError("train.load_in_4bit=true with ZeRO-3: 4-bit weights cannot be partitioned; use train.deepspeed=zero2 or null")
    names = [display_name(getattr(config.models, k)) for k in config.train.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"train.models: both models are {names[0]}; their adapters would share train/{names[0]}/")
