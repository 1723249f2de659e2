"""Benchmark: ORPO + LoRA training throughput (tokens/s, MFU, HFU) through the train stage's own trainer setup.

The trainer is built exactly as the train job builds it (``pipeline.train.job.orpo_config`` / ``lora_config`` /
``deepspeed_config`` on the train stage's default settings), only the model is a random-weight one of Llama-3.1-8B's shapes
(speed depends on shapes, not values) and the data are synthetic pairs of an exact token length, so that every
step processes the same, known number of tokens and no padding. One process per GPU: run it plainly for one
GPU, or under ``torchrun --nproc-per-node N`` for N (data parallel, or ZeRO with ``--deepspeed zero2|zero3``:
the trainer takes the distributed environment torchrun sets, as the train job takes the one submitit sets).

    # GPU: the real shapes (fp16 / bf16, plain or ZeRO-2)
    python benchmarks/bench_train.py --precision bf16 --deepspeed none --batch 4 --prompt-len 256 \\
        --completion-len 256 --steps 10 --warmup 3 --out benchmarks/results/train-bf16.json
    # two GPUs of one host, ZeRO-3 (NCCL; per-device batch 4, so a global batch of 8 pairs)
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_train.py --precision bf16 --deepspeed zero3 --batch 4 \
        --out benchmarks/results/train-2gpu-bf16-zero3.json
    # CPU: a tiny model, to check the script end to end
    python benchmarks/bench_train.py --shape tiny --precision fp32 --batch 2 --prompt-len 32 --completion-len 32 \\
        --steps 3 --warmup 1 --out /tmp/train-tiny.json

Counting (per token of a sequence of length s; N = weights of the base's matrix products, lm_head included,
embeddings excluded; N_lora = the adapter's weights; L layers, d = the hidden size, heads x head_dim):

* model FLOPs = 4 N (forward 2 N, backward 2 N for the input gradients only: the base is frozen, so it has no
  weight gradients) + 6 N_lora (forward, input and weight gradients) + 12 L s d for attention (forward: QK^T and
  AV, 2 x 2 L s d, counted without halving for the causal mask as PaLM does; backward twice the forward);
* hardware FLOPs = model FLOPs + what gradient checkpointing recomputes: one more forward of the decoder layers
  (2 N_layers + 2 N_lora + 4 L s d; lm_head is not recomputed).

MFU and HFU are those rates per GPU over the GPU's dense fp16/bf16 peak (989.4 TFLOP/s for an H100/H200 SXM, 756 for an
H100 PCIe; ``--peak-tflops`` for another). tokens/s = timed steps x batch x 2 (chosen and rejected) x s x processes, over
rank 0's wall time from the first timed step's start to the last one's end (logging and data loading between steps
included). An 8192^3 matrix product in the same dtype is timed first, as the ceiling this GPU reaches here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import PROJECT_ROOT  # noqa: E402
from pipeline.engine.roofline import peak_flops  # noqa: E402
from pipeline.train.deepspeed import deepspeed_config  # noqa: E402
from pipeline.train.job import lora_config, orpo_config, peak_memory_gib, pin_attention_backend  # noqa: E402
from pipeline.train.settings import TrainSettings  # noqa: E402
from random_weights import build_on_device  # noqa: E402  (benchmarks/, the script's own folder)

# Llama-3.1-8B's config.json; "tiny" is for a CPU check of the script, not for numbers.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192,
                         tie_word_embeddings=False),
    "tiny": dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False),
}
TOKENIZER = PROJECT_ROOT / "pipeline/assets/tiny/tiny-llama"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def synthetic_pairs(tokenizer: Any, prompt_len: int, completion_len: int, rows: int, seed: int) -> list[dict[str, str]]:
    """Plain-string prompt/chosen/rejected rows whose tokenized lengths are exact: words that are one token
    each with their leading space, so that prompt + answer tokenizes to the sum of its parts. ORPO adds a BOS
    to the prompt and an EOS to each answer, so the texts hold one token fewer than asked."""
    words = sorted({tokenizer.convert_tokens_to_string([t]) for t in tokenizer.get_vocab()})
    words = [w for w in words if w.startswith(" ") and w[1:].isalpha() and len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]
    if len(words) < 16:
        raise RuntimeError(f"{TOKENIZER}: only {len(words)} single-token words, too few for synthetic pairs")
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(rng.choice(words) for _ in range(n))

    pairs = [{"prompt": text(prompt_len - 1), "chosen": text(completion_len - 1), "rejected": text(completion_len - 1)}
             for _ in range(rows)]
    for pair in pairs:
        for key, want in (("prompt", prompt_len - 1), ("chosen", completion_len - 1), ("rejected", completion_len - 1)):
            got = len(tokenizer(pair[key], add_special_tokens=False)["input_ids"])
            if got != want:
                raise RuntimeError(f"synthetic {key} tokenizes to {got} tokens, not {want}")
    return pairs


def random_llama(shape: str, tokenizer: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """A random-weight LlamaForCausalLM of the named shape, created directly on ``device`` in ``dtype``, with the
    tokenizer's special tokens (its ids must fit in the shape's vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = dict(SHAPES[shape])
    if len(tokenizer) > spec["vocab_size"]:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} ids but shape {shape} only {spec['vocab_size']}")
    config = LlamaConfig(**spec, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, attn_implementation="sdpa")
    return build_on_device(LlamaForCausalLM, config, dtype, device)


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """Weights of all the base's matrix products, and of those inside the decoder layers (lm_head excluded)."""
    total = layers = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel()
            layers += module.weight.numel() if ".layers." in f".{name}" else 0
    return total, layers


def flops_per_token(n_matmul: int, n_layers: int, n_lora: int, layers: int, attn_dim: int, seq: int,
                    checkpointing: bool) -> dict[str, float]:
    """Model and hardware FLOPs per token (the module docstring gives the formula)."""
    attention_forward = 4.0 * layers * seq * attn_dim
    model = 4.0 * n_matmul + 6.0 * n_lora + 3.0 * attention_forward
    recompute = 2.0 * n_layers + 2.0 * n_lora + attention_forward if checkpointing else 0.0
    return {"model": model, "hardware": model + recompute, "attention_forward": attention_forward, "recompute": recompute}


def peak_tflops(gpu: str, override: float | None) -> float | None:
    """``override``, else the card's data-sheet dense fp16/bf16 peak (``pipeline.engine.roofline``), TFLOP/s."""
    if override:
        return override
    peak = peak_flops(gpu)
    return peak / 1e12 if peak else None


def matmul_ceiling(dtype: torch.dtype, size: int = 8192, warmup: int = 3, repeat: int = 10) -> float:
    """TFLOP/s of a size^3 matrix product on random data, timed with CUDA events (mean of ``repeat``)."""
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    for _ in range(warmup):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeat
    del a, b
    torch.cuda.empty_cache()
    return 2.0 * size**3 / seconds / 1e12


def step_timer(sync: Callable[[], None]) -> Any:
    """A TrainerCallback that records each optimizer step's start and end (after a device sync) and each
    logged loss; peak memory is counted from the start of training (model creation excluded)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begins: list[float] = []
            self.ends: list[float] = []
            self.losses: dict[int, float] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.begins.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses[state.global_step] = float(logs["loss"])

    return StepTimer()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """The train stage's default settings with the benchmark's overrides: fixed steps, no gradient
    accumulation, no warm-up of the learning rate, no checkpoint, a loss logged every step."""
    train = replace(TrainSettings(), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
                    gradient_accumulation_steps=1, max_length=args.prompt_len + args.completion_len, save_steps=10**9,
                    logging_steps=1, warmup_steps=0.0)
    if args.gradient_checkpointing != "config":
        train = replace(train, gradient_checkpointing=args.gradient_checkpointing == "on")
    return train


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, ProgressCallback
    from trl.experimental.orpo import ORPOTrainer

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    pin_attention_backend(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision == "fp16" and device.type == "cpu":
        raise SystemExit("fp16 training needs a GPU; use --precision fp32 or bf16 on a CPU")
    dtype = DTYPES[args.precision]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    ceiling = matmul_ceiling(dtype) if device.type == "cuda" else None
    train = train_settings(args)
    deepspeed = deepspeed_config(args.deepspeed) if args.deepspeed != "none" else None
    if deepspeed and world == 1:  # one process: DeepSpeed needs the torch.distributed environment, else it looks for MPI
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", "29533")

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    seq = args.prompt_len + args.completion_len
    rows = synthetic_pairs(tokenizer, args.prompt_len, args.completion_len, args.batch * world * (args.warmup + args.steps), args.seed)
    torch.manual_seed(args.seed)  # the same random weights in every run and on every rank (loss parity)
    model = random_llama(args.shape, tokenizer, dtype, device)
    n_matmul, n_layers = matmul_params(model)
    n_total = sum(p.numel() for p in model.parameters())

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = step_timer(sync)
    with tempfile.TemporaryDirectory(prefix="bench_train-") as scratch:
        config = orpo_config(train, scratch, "bench-train", args.precision, deepspeed, device, args.seed, report_to=[],
                             world=world)
        trainer = ORPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                              peft_config=lora_config(train.lora), callbacks=[timer])
        for callback in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(callback)
        lengths = {len(ids) for key in ("chosen_input_ids", "rejected_input_ids") for ids in trainer.train_dataset[key]}
        if lengths != {seq}:
            raise RuntimeError(f"tokenized sequences have lengths {sorted(lengths)}, not {seq}")
        n_lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
    peaks = peak_memory_gib(device)  # every rank's, gathered over the trainer's (or DeepSpeed's) process group
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

    timed_begins, timed_ends = timer.begins[args.warmup:], timer.ends[args.warmup:]
    if len(timed_ends) != args.steps:
        raise RuntimeError(f"{len(timer.ends)} steps ran, expected {args.warmup + args.steps}")
    step_seconds = [end - begin for begin, end in zip(timed_begins, timed_ends)]
    seconds = timed_ends[-1] - timed_begins[0]
    tokens = args.steps * args.batch * 2 * seq * world
    tokens_per_s = tokens / seconds
    checkpointing = train.gradient_checkpointing
    spec = SHAPES[args.shape]
    flops = flops_per_token(n_matmul, n_layers, n_lora, spec["num_hidden_layers"], spec["hidden_size"], seq, checkpointing)
    tflops = flops["model"] * tokens_per_s / world / 1e12  # per GPU
    hw_tflops = flops["hardware"] * tokens_per_s / world / 1e12
    peak = peak_tflops(gpu, args.peak_tflops) if device.type == "cuda" and args.precision != "fp32" else args.peak_tflops
    losses = [timer.losses[step] for step in sorted(timer.losses)]
    return {
        "command": shlex.join([*(["torchrun", "--standalone", f"--nproc-per-node={world}"] if world > 1 else ["python"]), *sys.argv]),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "gpu": gpu,
        "processes": world,
        "rank": rank,
        "versions": versions(),
        "shape": {"name": args.shape, **spec},
        "deepspeed_config": str(Path(deepspeed).relative_to(PROJECT_ROOT)) if deepspeed else None,
        "gradient_checkpointing": checkpointing,
        "lora": asdict(train.lora),
        "params": {"total": n_total, "matmul": n_matmul, "matmul_in_layers": n_layers, "lora": n_lora},
        "flops_per_token": flops,
        "sequence_tokens": seq,
        "tokens_per_step": args.batch * 2 * seq * world,
        "global_batch_pairs": args.batch * world,
        "timed_steps": args.steps,
        "timed_seconds": seconds,
        "step_seconds": step_seconds,
        "step_seconds_median": statistics.median(step_seconds),
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / world,
        "model_tflops": tflops,
        "hardware_tflops": hw_tflops,
        "peak_tflops": peak,
        "mfu": tflops / peak if peak else None,
        "hfu": hw_tflops / peak if peak else None,
        "matmul_ceiling_tflops": ceiling,
        "peak_memory_gib": max(peaks) if peaks else None,
        "peak_memory_gib_per_process": peaks,
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--deepspeed", default="none", help="none, or a config name (zero2, zero3) or path, as train.deepspeed")
    parser.add_argument("--gradient-checkpointing", choices=["config", "on", "off"], default="config",
                        help="config: the train stage's default train.gradient_checkpointing")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (pairs); each pair is 2 sequences")
    parser.add_argument("--prompt-len", type=int, default=256, help="prompt tokens per sequence, BOS included")
    parser.add_argument("--completion-len", type=int, default=256, help="answer tokens per sequence, EOS included")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense peak, if not an H100/H200")
    parser.add_argument("--out", type=Path, help="write every number here as JSON")
    args = parser.parse_args()
    if min(args.prompt_len, args.completion_len) < 2 or args.steps < 1 or args.warmup < 0:
        parser.error("--prompt-len and --completion-len must be >= 2, --steps >= 1, --warmup >= 0")
    result = run(args)
    if result["rank"] != 0:  # every rank measured the same run; rank 0 reports it
        return
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    hfu = f"{result['hfu']:.1%}" if result["hfu"] is not None else "n/a"
    peak = "/".join(f"{x:.1f}" for x in result["peak_memory_gib_per_process"]) if result["peak_memory_gib_per_process"] else "n/a"
    print(f"{result['gpu']} x {result['processes']} | {args.shape} {args.precision} deepspeed={args.deepspeed} "
          f"checkpointing={result['gradient_checkpointing']} batch={args.batch} seq={result['sequence_tokens']}")
    print(f"tokens/s {result['tokens_per_s']:.0f} | model {result['model_tflops']:.1f} TFLOP/s MFU {mfu} | "
          f"hardware {result['hardware_tflops']:.1f} TFLOP/s HFU {hfu} | {result['step_seconds_median']:.3f} s/step | "
          f"peak {peak} GiB per GPU | loss {result['first_loss']} -> {result['last_loss']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not result["losses_finite"]:
        raise SystemExit(f"a logged loss is not finite: {result['losses']}")


if __name__ == "__main__":
    main()
