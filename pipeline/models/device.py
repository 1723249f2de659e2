"""Device and dtype choice, and the V100 check that saves a job from crashing mid-run."""

from __future__ import annotations

import os

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What a scheduler exports of a job's GPUs: SLURM sets all three from the job's gres (CUDA_VISIBLE_DEVICES
# numbers them as the process sees them, SLURM_JOB_GPUS / SLURM_STEP_GPUS as the node does); the local
# executor sets CUDA_VISIBLE_DEVICES.
ALLOCATION_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


def allocation() -> str:
    """The GPUs this job was given, as the scheduler exported them, for the task's log: which card a task
    ran on is otherwise lost once the job has ended."""
    given = [f"{name}={os.environ[name]}" for name in ALLOCATION_VARIABLES if name in os.environ]
    if given:
        return " ".join(given)
    if "SLURM_JOB_ID" in os.environ:
        return "no GPU given (none of " + ", ".join(ALLOCATION_VARIABLES) + " set)"
    return "CUDA_VISIBLE_DEVICES unset: every GPU of this machine is visible"


def gpus_given() -> bool:
    """False in a SLURM job given no GPU. SLURM then unsets CUDA_VISIBLE_DEVICES (measured: even one the
    submitter had set), and on a node without a device cgroup the job would see, and use, every GPU of the
    node, including those SLURM gave other jobs. Outside SLURM, whatever the process sees is its own."""
    return "SLURM_JOB_ID" not in os.environ or any(name in os.environ for name in ALLOCATION_VARIABLES)


def cuda_usable() -> bool:
    """This job may use CUDA: it was given a GPU, and torch finds one (a node whose GPUs SLURM only
    declares, as the CPU test cluster does, has none)."""
    return gpus_given() and torch.cuda.is_available()


def pick_device() -> torch.device:
    """The first GPU the job was given (SLURM sets CUDA_VISIBLE_DEVICES, and torch numbers only those),
    else the CPU."""
    if cuda_usable():
        check_cuda_arch()
        return torch.device("cuda")
    return torch.device("cpu")


def pick_devices(mode: str) -> dict[str, torch.device]:
    """Where models a and b sit (``debate.devices``): both on the first visible GPU (``shared``), one GPU
    each (``split``), or split whenever the job sees two GPUs or more (``auto``)."""
    first = pick_device()
    gpus = torch.cuda.device_count() if first.type == "cuda" else 0
    if mode == "split" and gpus < 2:
        raise RuntimeError(f"debate.devices=split puts each model on its own GPU, but this job sees {gpus} GPU(s); "
                           "ask for two (cluster.gpus_per_node=2) or use debate.devices=auto")
    if mode == "shared" or gpus < 2:
        return {"a": first, "b": first}
    return {"a": torch.device("cuda", 0), "b": torch.device("cuda", 1)}


def describe_placement(devices: dict[str, torch.device]) -> str:
    """One log line: where each model sits and what the job was given, e.g.
    ``a on cuda:0, b on cuda:1; CUDA_VISIBLE_DEVICES=2,3 SLURM_JOB_GPUS=2,3``."""
    where = ", ".join(f"{key} on {device}" for key, device in devices.items())
    return f"{where}; {allocation()}{_no_cuda_note()}"


def describe_rank(rank: int, world: int, local_rank: int, device: torch.device) -> str:
    """One log line for a training process: its rank, the node's GPU it takes (the ``local_rank``-th of
    those SLURM gave the job, which is what ``cuda:<local_rank>`` is) and its device."""
    visible = [part for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part]
    gpu = f"GPU {visible[local_rank]}" if local_rank < len(visible) else "no GPU of its own"
    return f"rank {rank} of {world} (local rank {local_rank}) takes {gpu}, on {device}; {allocation()}{_no_cuda_note()}"


def _no_cuda_note() -> str:
    """Why a job that was given GPUs runs on the CPU: torch finds no CUDA (a node whose GPUs are declared
    to SLURM but absent, or a CPU build of torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") and not torch.cuda.is_available():
        return " (torch finds no CUDA here: on the CPU)"
    return ""


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16: there bf16 matmuls run several times faster than fp32 (measured 4.8x for
    Qwen2.5-0.5B generation on 2 cores); elsewhere bf16 on a CPU is slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, fp16 on those that do not (V100); on a CPU, bf16 where it has
    bf16 instructions, else float32. ``int8`` loads float32 weights (the loader then quantizes the linear
    layers): a CPU-only mode, since it runs through fbgemm's CPU kernels."""
    if name == "int8":
        if device.type != "cpu":
            raise ValueError(f"models.dtype=int8 runs on a CPU only (dynamic int8 matmuls); this job is on {device}: "
                             "use models.dtype=auto")
        return torch.float32
    if name != "auto":
        return _DTYPES[name]
    if device.type != "cuda":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def check_cuda_arch() -> None:
    """Stops at start with advice when this PyTorch build has no kernels for the GPU (e.g. a V100, sm_70,
    with a CUDA 12.8+ wheel), instead of failing later with 'no kernel image is available'."""
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    built = torch.cuda.get_arch_list()
    if built and arch not in built and f"compute_{major}{minor}" not in built:
        raise RuntimeError(
            f"this PyTorch ({torch.__version__}) has no kernels for {torch.cuda.get_device_name()} ({arch}); "
            f"it was built for {', '.join(built)}. On V100 (sm_70) install the CUDA 12.6 build: "
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
        )
