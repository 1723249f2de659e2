"""Device and dtype choice, and the V100 check that saves a job from crashing mid-run."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device() -> torch.device:
    """The first visible GPU if there is one (SLURM sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if torch.cuda.is_available():
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
