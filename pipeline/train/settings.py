"""The train stage's settings (``train.*``): each knob once, with its type, default, help and range.

A knob that is TRL's (``ORPOConfig``) or PEFT's (``LoraConfig``) has that library's own name and reaches it
as is (``passes_to``); the others are the suite's.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError
from pipeline.settings import PAIR, knob, section
from pipeline.train.hub import check_repo_id

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def check_scheduler(key: str, value: str) -> None:
    """One of transformers' own schedule names (its ``SchedulerType``), which the trainer would refuse later."""
    from transformers.trainer_utils import SchedulerType

    names = [s.value for s in SchedulerType]
    if value not in names:
        raise ConfigError(f"{key}={value}: not one of {', '.join(names)}")


@dataclass(frozen=True)
class Lora:
    """The PEFT LoRA adapter ORPO trains (the base model stays frozen)."""

    r: int = knob(16, "The adapter's rank.", minimum=1, passes_to="peft")
    lora_alpha: int = knob(32, "The adapter's scale (alpha / r multiplies its update).", minimum=1, passes_to="peft")
    lora_dropout: float = knob(0.05, "Dropout on the adapter's input.", minimum=0.0, below=1.0, passes_to="peft")
    target_modules: tuple[str, ...] = knob(ALL_PROJECTIONS, "The layers LoRA adapts, e.g. [q_proj, v_proj].",
                                           nonempty=True, passes_to="peft")


@dataclass(frozen=True)
class TrainSettings:
    """ORPO (TRL) on a PEFT LoRA adapter, one job per model of the pair, one process per GPU (DeepSpeed ZeRO
    when ``deepspeed`` is set). The adapter lands in ``results/<run_id>/train/<model>/`` and is a model for the
    eval and debate stages: ``models.a=<run_id>/train/<model>``."""

    models: tuple[str, ...] = knob(list(PAIR), "the models of the pair", choices=PAIR, nonempty=True)
    dataset: str = knob("gsm8k", "gsm8k: preference pairs built from the GSM8K training split (offline); or a local "
                                 ".jsonl/.json file, or a hub dataset name (e.g. mlabonne/orpo-dpo-mix-40k), with "
                                 "prompt/chosen/rejected in its format.", nonempty=True)
    dataset_split: str = knob("train", "The dataset's split: gsm8k's file <data.path>/<split>.jsonl (never data.split, "
                                       "which the eval and debate score), a hub dataset's split; a local file is train.")
    mine_from: str | None = knob(None, "A debate run id: its wrong turns become the rejected answers of the same "
                                       "training questions.")
    max_samples: int | None = knob(2000, "Pairs used (the first ones of GSM8K train, or a seeded shuffle of another "
                                         "dataset); null: all.", minimum=1)
    num_train_epochs: float = knob(1.0, "Passes over the pairs.", minimum=0.0, strict=True, passes_to="trl")
    max_steps: int | None = knob(None, "Stop after this many optimizer steps (null: the epochs decide).", minimum=1)
    beta: float = knob(0.1, "ORPO's lambda: weight of the odds-ratio term against the NLL of the chosen answer.",
                       minimum=0.0, strict=True, passes_to="trl")
    learning_rate: float = knob(8.0e-6, "The optimizer's peak learning rate.", minimum=0.0, strict=True, passes_to="trl")
    lr_scheduler_type: str = knob("linear", "The learning-rate schedule after warm-up.", passes_to="trl",
                                  check=check_scheduler)
    warmup_steps: float = knob(0.1, "Linear warm-up: a fraction of the steps (< 1) or a number of steps.", minimum=0.0,
                               passes_to="trl")
    per_device_train_batch_size: int = knob(2, "Pairs per process per forward pass.", minimum=1, passes_to="trl")
    gradient_accumulation_steps: int = knob(4, "Forward passes per optimizer step.", minimum=1, passes_to="trl")
    max_length: int = knob(1024, "Prompt + answer tokens per sequence (longer ones are truncated).", minimum=16,
                           passes_to="trl")
    lora: Lora = section(Lora, "The LoRA adapter.")
    load_in_4bit: bool = knob(False, "QLoRA: the frozen base in 4-bit NF4 through bitsandbytes (the 8B model on 16 GB V100s).")
    precision: str = knob("auto", "auto: bf16 on GPUs that have it, fp16 on V100 (no bf16), fp32 on a CPU.",
                          choices=PRECISIONS)
    deepspeed: str | None = knob(None, "null: plain data parallel (one process per GPU); zero2 / zero3: "
                                       "configs/deepspeed/<name>.json, or a path.")
    gradient_checkpointing: bool = knob(True, "Recompute activations in the backward pass (less memory, more time).",
                                        passes_to="trl")
    save_steps: int = knob(50, "A checkpoint every save_steps optimizer steps: a requeued job resumes from the last one.",
                           minimum=1, passes_to="trl")
    save_total_limit: int = knob(2, "Checkpoints kept.", minimum=1, passes_to="trl")
    logging_steps: int = knob(1, "Optimizer steps between metrics lines.", minimum=1, passes_to="trl")
    push_to_hub: str | None = knob(None, "A hub repo id (owner/name) to push the finished adapter folder to (model card, "
                                         "adapter, tokenizer, metrics), with the token from HF_TOKEN only; with two models "
                                         "each goes to <repo id>-<model>. A failed push is one warning line and the adapter "
                                         "stays in the run folder. null: no push.", check=check_repo_id)
