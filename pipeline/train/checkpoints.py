"""Train checkpoints: finding the last complete one, and resuming it on another number of GPUs.

Plain data parallel checkpoints hold the whole optimizer state, so they resume on any number of
processes. DeepSpeed ZeRO checkpoints hold one optimizer partition per data-parallel rank, and DeepSpeed
refuses to load them on another count ("Automatic adjustment of ZeRO's optimizer state partitioning with a
new world size is not currently supported"). A job resubmitted on fewer or more GPUs (a smaller partition,
a requeue onto another node type) must not lose its run for that, so such a checkpoint is converted once
into DeepSpeed's universal format (``deepspeed.checkpoint.ds_to_universal``), which loads on any count.
"""

from __future__ import annotations

import json
import logging
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Any

from filelock import FileLock

from pipeline.files import write_atomic

log = logging.getLogger(__name__)

UNIVERSAL_SUFFIX = "_universal"


def latest_checkpoint(folder: Path) -> Path | None:
    """The highest ``checkpoint-<step>`` whose trainer state was written (the trainer writes it last)."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint was saved at (0: no checkpoint, a fresh start)."""
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


def zero_world_size(checkpoint: Path) -> int | None:
    """Data-parallel ranks that wrote a DeepSpeed ZeRO checkpoint (one optimizer file each), or None when the
    checkpoint is not a DeepSpeed one."""
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag_dir = checkpoint / latest.read_text(encoding="utf-8").strip()
    return len(list(tag_dir.glob("*_optim_states.pt"))) or None


def resume_settings(checkpoint: Path | None, deepspeed: str | None, world: int) -> str | dict[str, Any] | None:
    """The DeepSpeed settings to resume ``checkpoint`` with ``world`` processes: the config as given, or,
    when the checkpoint was written by another number of ranks, the config with universal loading on, after
    converting the checkpoint (once, whichever rank gets there first)."""
    if not deepspeed or checkpoint is None:
        return deepspeed
    saved = zero_world_size(checkpoint)
    if saved is None or saved == world:
        return deepspeed
    log.info("%s was written by %d rank(s), this job has %d: resuming through a universal checkpoint", checkpoint, saved, world)
    to_universal(checkpoint)
    settings = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
    settings.setdefault("checkpoint", {})["load_universal"] = True
    return settings


def to_universal(checkpoint: Path) -> Path:
    """Converts ``checkpoint``'s ZeRO state into ``<tag>_universal`` beside it and points ``latest_universal``
    at it. Idempotent and safe when several ranks call it: a file lock serialises them, the conversion runs
    in a temporary folder that is renamed when complete, and ``latest_universal`` is written last."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    tag = (checkpoint / "latest").read_text(encoding="utf-8").strip()
    final = checkpoint / f"{tag}{UNIVERSAL_SUFFIX}"
    pointer = checkpoint / "latest_universal"
    with FileLock(str(checkpoint / "universal.lock")):
        if pointer.is_file() and pointer.read_text(encoding="utf-8").strip() == final.name and final.is_dir():
            return final
        scratch = checkpoint / f"{final.name}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        ds_to_universal(Namespace(input_folder=str(checkpoint / tag), output_folder=str(scratch), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True))
        scratch.rename(final)
        write_atomic(pointer, final.name)
    return final


def keep_global_batch(folder: Path, per_device: int, accumulation: int, world: int, resuming: bool,
                      write: bool) -> tuple[int, int]:
    """The per-device batch and gradient accumulation that keep a resumed run's global batch (per-device batch
    x accumulation x processes) what its checkpoints were trained with, whatever the new process count. The
    trainer skips ``steps x accumulation`` batches on resume: only with the same global batch does that land
    on the first pair not yet seen, and the learning-rate schedule and the metrics keep meaning the same.
    The per-device batch never grows past the configured one (memory); accumulation makes up the rest.
    ``batch.json`` in the model folder holds the global batch of the first start."""
    path = folder / "batch.json"
    if resuming and path.is_file():
        wanted = int(json.loads(path.read_text(encoding="utf-8"))["global_batch"])
        if wanted % world:
            raise RuntimeError(f"the checkpoints in {folder} were trained with a global batch of {wanted} pairs, which "
                               f"{world} processes cannot share evenly: resume on a process count that divides {wanted}")
        per_process = wanted // world
        batch = max(b for b in range(1, min(per_device, per_process) + 1) if per_process % b == 0)
        if (batch, per_process // batch) != (per_device, accumulation):
            log.info("keeping the global batch of %d on %d process(es): per-device batch %d x accumulation %d",
                     wanted, world, batch, per_process // batch)
        return batch, per_process // batch
    if write:
        write_atomic(path, json.dumps({"global_batch": per_device * accumulation * world, "processes": world,
                                       "per_device_batch_size": per_device, "gradient_accumulation_steps": accumulation}) + "\n")
    return per_device, accumulation
