"""One train job: ORPO on a LoRA adapter for one model, one process per GPU (DeepSpeed ZeRO if set).

The same callable runs in every task of the job; submitit (local or SLURM) starts one task per GPU and
the distributed environment comes from it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).
Checkpoints every ``train.save_steps`` steps: a requeued or resubmitted job resumes from the last one.
The finished adapter (and tokenizer) is saved in ``train/<model>/`` with its model card (``README.md``),
pushed to the hub when ``train.push_to_hub`` names a repo, and ``training.json`` is written last: its
presence is what makes the job complete.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pipeline.config import project_path
from pipeline.models.device import cuda_usable, describe_rank
from pipeline.models.registry import display_name
from pipeline.files import write_atomic
from pipeline.settings import passed_to
from pipeline.jobs import ShardTask
from pipeline.train.callbacks import MetricsJSONL, StepProgress
from pipeline.train.card import write_card
from pipeline.train.deepspeed import deepspeed_config
from pipeline.train.checkpoints import checkpoint_step, keep_global_batch, latest_checkpoint, resume_settings
from pipeline.train.hub import hub_repo, push_adapter
from pipeline.train.metrics import read_metrics, rewind_metrics
from pipeline.train.settings import Lora, TrainSettings
from pipeline.train.units import DONE_FILE
from pipeline.wandb_run import train_environment

log = logging.getLogger(__name__)

def pick_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the GPU has it, fp16 on older GPUs (V100), fp32 on a CPU. TRL's ORPOConfig turns
    bf16 on by default, which fails on a V100, so the choice is always explicit."""
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16; use fp16 or auto")
        return name
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _distributed(deepspeed: str | None) -> tuple[int, int, int]:
    """Rank, world size and local rank of this task; exports the torch.distributed environment when the
    job has several tasks, or DeepSpeed is on (it always initialises a process group)."""
    import submitit

    try:
        env = submitit.JobEnvironment()
        rank, world, local = env.global_rank, env.num_tasks, env.local_rank
    except (RuntimeError, KeyError, ValueError):
        rank, world, local = 0, 1, 0
    if world > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    elif deepspeed:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", str(_free_port()))})
    return rank, world, local


def _free_port() -> int:
    """A port no process on this node listens on now: two single-process DeepSpeed jobs that share a node
    (two array tasks, or a test beside a job) must not both bind one, which a port derived from the process
    id could not promise."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _device(local_rank: int, world: int) -> torch.device:
    """The ``local_rank``-th GPU of those SLURM gave the job (torch numbers only those), or the CPU."""
    if not cuda_usable():
        return torch.device("cpu")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world > 1 else 1
    if torch.cuda.device_count() < local_world:
        raise RuntimeError(f"{local_world} processes on this node but only {torch.cuda.device_count()} GPU(s) visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def pin_attention_backend(device: torch.device) -> None:
    """Gradient checkpointing recomputes each layer's forward in the backward pass and checks that it saved
    the same tensors. On an H200 (torch 2.11) SDPA picked FlashAttention for the forward and cuDNN's attention
    for the recompute, whose saved tensors differ ("CheckpointError: Recomputed values ... have different
    metadata"); without cuDNN's kernel both passes take the same one. V100s have no cuDNN attention anyway."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def _load(spec: Any, cache: Path, precision: str, device: torch.device, load_in_4bit: bool) -> tuple[Any, Any]:
    """The base model (placed by the trainer, or on ``device`` in 4-bit) and its tokenizer."""
    from pipeline.models.loading import load_tokenizer, load_weights, prepare

    location = prepare(spec, cache)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    return load_weights(location, spec, dtype, device, load_in_4bit), load_tokenizer(location, spec)


def orpo_config(train: TrainSettings, output_dir: str, run_name: str, precision: str, deepspeed: str | dict[str, Any] | None,
                device: torch.device, seed: int, report_to: list[str], world: int = 1) -> Any:
    """TRL's ORPOConfig: the settings that are TRL's as they are, and what the job decides (the benchmark
    builds its trainer through here too)."""
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(
        **passed_to(train, "trl"),
        output_dir=output_dir,
        run_name=run_name,
        max_steps=train.max_steps or -1,
        save_strategy="steps",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        deepspeed=deepspeed,
        # DeepSpeed wraps torch's AdamW. The fused one needs each parameter's step count on the GPU, and a
        # universal checkpoint (a resume on another GPU count) restores it on the CPU ("state_steps is on
        # cpu" in _fused_adamw_); the foreach one takes either. A LoRA adapter's step costs little either way.
        optim="adamw_torch" if deepspeed else "adamw_torch_fused",
        use_cpu=device.type == "cpu",
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if world > 1 else None,
        # The task's own progress (file, log lines, the waiting submitter) replaces the trainer's bar.
        disable_tqdm=True,
    )


def lora_config(lora: Lora) -> Any:
    """The PEFT LoRA adapter ORPO trains (the base model stays frozen)."""
    from peft import LoraConfig

    return LoraConfig(**passed_to(lora, "peft"), task_type="CAUSAL_LM")


def run_train(task: ShardTask) -> dict[str, Any]:
    """Trains (or resumes, or skips when done) the adapter of the model ``task.unit.part``."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOTrainer

    from pipeline.models.registry import load_registry, resolve_model
    from pipeline.train.pairs import load_pairs

    config = task.config
    train = config.train
    name = task.unit.part
    key = next(k for k in train.models if display_name(getattr(config.models, k)) == name)
    folder = task.run.stage_dir("train") / name
    if (folder / DONE_FILE).exists():
        log.info("%s: already trained (%s)", name, folder / DONE_FILE)
        return json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
    torch.set_num_threads(task.threads)
    deepspeed = deepspeed_config(train.deepspeed)
    rank, world, local_rank = _distributed(deepspeed)
    device = _device(local_rank, world)
    log.info("%s: %s", name, describe_rank(rank, world, local_rank, device))
    precision = pick_precision(train.precision, device)
    pin_attention_backend(device)
    spec = resolve_model(f"models.{key}", getattr(config.models, key), load_registry(), config.results_dir)
    model, tokenizer = _load(spec, project_path(config.paths.model_cache), precision, device, train.load_in_4bit)
    dataset, info = load_pairs(config)
    checkpoints = folder / "checkpoints"
    last = latest_checkpoint(checkpoints)
    if rank == 0:
        rewind_metrics(folder / "metrics.jsonl", checkpoint_step(last))
    batch, accumulation = keep_global_batch(folder, train.per_device_train_batch_size, train.gradient_accumulation_steps,
                                            world, resuming=last is not None, write=rank == 0)
    train = replace(train, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    log.info("%s: %d pairs (%d with a mined rejected reply, %d with a mined chosen one), %s, %d process(es), deepspeed %s, resume from %s",
             name, info["pairs"], info["mined_rejected"], info["mined_chosen"], precision, world, train.deepspeed, last.name if last else "step 0")
    with train_environment(config, task.run.run_id, folder) as report_to:
        args = orpo_config(train, str(checkpoints), f"{task.run.run_id}-{name}", precision, resume_settings(last, deepspeed, world),
                           device, config.seed, report_to=report_to, world=world)
        trainer = ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config(train.lora),
                              callbacks=[MetricsJSONL(folder / "metrics.jsonl"), StepProgress(f"ORPO {name}")])
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    trainer.save_model(str(folder))
    summary = {
        "model": name,
        "key": key,
        "base": getattr(config.models, key),
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint_step(last),
        "pairs": info["pairs"],
        "mined_rejected": info["mined_rejected"],
        "mined_chosen": info["mined_chosen"],
        "precision": precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": world,
        "global_batch": batch * accumulation * world,
        "per_device_batch_size": batch,
        "gradient_accumulation_steps": accumulation,
        "deepspeed": train.deepspeed,
        "load_in_4bit": train.load_in_4bit,
        "train_loss": round(float(result.training_loss), 4),
        "peak_memory_gib": peak_memory_gib(device),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if trainer.is_world_process_zero():
        _point_adapter_at_base(folder, getattr(config.models, key))
        write_card(folder, task.run.run_id, config, summary, read_metrics(folder / "metrics.jsonl"), spec.hub_id)
        if train.push_to_hub:
            summary["hub"] = push_adapter(folder, hub_repo(train.push_to_hub, name, list(train.models)), task.run.run_id)
        write_atomic(folder / DONE_FILE, json.dumps(summary, indent=2) + "\n")
    log.info("%s: trained %d steps in %.1f s, adapter in %s", name, summary["steps"], summary["seconds"], folder)
    return summary


def peak_memory_gib(device: torch.device) -> list[float] | None:
    """Each process's peak GPU memory in GiB (rank order; None on a CPU), the number that decides whether a
    ZeRO stage fits a card. Every rank must call it: it gathers over the process group when there is one."""
    if device.type != "cuda":
        return None
    mine = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [mine]
    every: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, mine)
    return every


def _point_adapter_at_base(folder: Path, base: str) -> None:
    """The adapter names its base as the config did (a registry name or a folder), so that
    ``models.a=<run_id>/train/<model>`` loads the base the same way the training did."""
    path = folder / "adapter_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["base_model_name_or_path"] = base
    write_atomic(path, json.dumps(settings, indent=2) + "\n")
