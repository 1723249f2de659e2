"""The typed settings: each stage knob is one field (type, default, help, range) and every other place reads it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from pipeline.config import CONFIG_DIR, ConfigError
from pipeline.settings import build, defaults, describe, passed_to
from pipeline.stages import SECTIONS, STAGES, checked_config
from pipeline.train.settings import TrainSettings

SETTINGS = {name: stage.settings for name, stage in STAGES.items()}


def test_every_stage_has_typed_settings_with_help() -> None:
    for name, cls in SETTINGS.items():
        described = list(describe(cls, name))
        assert described, name
        for key, _, text in described:
            assert text.strip(), f"{key} has no help"


def test_no_yaml_repeats_a_stage_section() -> None:
    """The sections' defaults live only in their dataclasses: no file under configs/ sets a stage key."""
    for path in CONFIG_DIR.rglob("*.yaml"):
        if "lm_eval_tasks" in path.parts:
            continue
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        assert not set(loaded or {}) & set(SECTIONS), f"{path} sets {set(loaded) & set(SECTIONS)}"


def test_composed_defaults_pass_their_checks_and_build_the_default_object() -> None:
    cfg = checked_config(["stage=all"])
    for name, cls in SETTINGS.items():
        assert build(cls, cfg[name]) == cls(), name
        assert OmegaConf.to_container(cfg[name]) == defaults(cls)


def test_an_override_reaches_the_typed_object() -> None:
    cfg = checked_config(["stage=train", "train.num_train_epochs=2", "train.lora.r=4", "train.models=[b]"])
    train = build(TrainSettings, cfg.train)
    assert (train.num_train_epochs, train.lora.r, train.models) == (2.0, 4, ("b",))
    assert isinstance(train.num_train_epochs, float)


@pytest.mark.parametrize("override, message", [
    ("debate.max_rounds=0", "debate.max_rounds=0: must be a whole number >= 1"),
    ("train.lora.lora_dropout=1.5", "train.lora.lora_dropout=1.5: must be a number below 1"),
    ("train.precision=fp8", "train.precision=fp8: not one of auto, fp16, bf16, fp32"),
    ("train.epochs=2", "unknown key 'train.epochs'"),
])
def test_a_range_or_name_violation_is_one_line(override: str, message: str) -> None:
    stage = override.split(".")[0]
    with pytest.raises(ConfigError) as err:
        checked_config([f"stage={stage}", override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_trl_and_peft_settings_keep_their_libraries_names() -> None:
    """A field marked as TRL's or PEFT's is a field of ORPOConfig / LoraConfig under the same name."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from peft import LoraConfig
    from trl.experimental.orpo import ORPOConfig

    trl = {f.name for f in dataclasses.fields(ORPOConfig)}
    peft = {f.name for f in dataclasses.fields(LoraConfig)}
    train = TrainSettings()
    assert set(passed_to(train, "trl")) <= trl and len(passed_to(train, "trl")) >= 10
    assert set(passed_to(train.lora, "peft")) <= peft and set(passed_to(train.lora, "peft")) == {"r", "lora_alpha", "lora_dropout", "target_modules"}


def test_section_help_lists_every_key() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "submit.py"), "--help", "debate"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    for key, _, _ in describe(SETTINGS["debate"], "debate"):
        assert f"  {key}=" in done.stdout
    assert "one of auto, static, generate" in done.stdout
    wrong = subprocess.run([sys.executable, str(ROOT / "jobs" / "submit.py"), "--help", "nope"], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.strip() == "error: no section 'nope'; sections: run, debate, eval, train, local, debug, slurm"
