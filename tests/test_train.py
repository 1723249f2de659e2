"""The train stage on CPU: real TRL ORPO + PEFT LoRA on the tiny models, resume, QLoRA, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.shards import ShardWriter
from pipeline.submit import main, submit
from pipeline.train.metrics import CURVES, read_metrics
from pipeline.train.pairs import corrupt_solution, gsm8k_pairs
from tests.conftest import ROOT, layered


def train_overrides(results: Path, *extra: str) -> list[str]:
    """A few quick ORPO steps on the tiny Llama: short sequences, no gradient accumulation."""
    return layered([
        "stage=train",
        "models=tiny",
        "train.models=[a]",
        f"results_dir={results}",
        "train.max_samples=16",
        "train.max_steps=4",
        "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.max_length=256",
        "train.learning_rate=1e-3",
        "wandb.mode=disabled",
        "cluster.cpus_per_task=1",
        *extra,
    ])


def test_a_few_lora_steps_give_finite_losses_an_adapter_and_curves(results: Path) -> None:
    info = submit(train_overrides(results, "cluster=debug", "run_id=few", "wandb.mode=offline"))
    assert info["result"]["complete"]
    folder = results / "few" / "train" / "tiny-llama"
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert set(CURVES) <= set(row) and all(math.isfinite(row[k]) for k in CURVES)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-llama" and adapter["peft_type"] == "LORA"
    assert (folder / "adapter_model.safetensors").exists() and (folder / "tokenizer.json").exists()
    done = json.loads((folder / "training.json").read_text())
    assert done["steps"] == 4 and done["precision"] == "fp32" and done["resumed_from"] == 0
    assert (results / "few" / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny-llama (a) | few/train/tiny-llama | 4 |" in (results / "few" / "train_summary.md").read_text()
    assert list((folder / "wandb").glob("offline-run-*")), "wandb wrote an offline run, no network"


def test_the_margin_rises_on_a_trivially_learnable_pair_set(results: Path, tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Say yes, {i}."}],
             "chosen": [{"role": "assistant", "content": "yes yes yes"}],
             "rejected": [{"role": "assistant", "content": "no no no"}]} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    submit(train_overrides(results, "cluster=debug", "run_id=learn", f"train.dataset={data}", "train.max_steps=12",
                           "train.learning_rate=5e-3", "train.warmup_steps=0", "train.beta=0.5"))
    margins = [r["rewards/margins"] for r in read_metrics(results / "learn" / "train" / "tiny-llama" / "metrics.jsonl")]
    assert len(margins) == 12
    assert sum(margins[-3:]) / 3 > sum(margins[:3]) / 3 + 0.05, margins


def test_a_run_killed_after_step_k_resumes_at_k(results: Path) -> None:
    args = train_overrides(results, "cluster=debug", "run_id=killed", "train.max_steps=10", "train.save_steps=1",
                           "train.per_device_train_batch_size=8", "train.max_length=512", "train.max_samples=80")
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "submit.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = results / "killed" / "train" / "tiny-llama" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints / "checkpoint-3" / "trainer_state.json").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert 3 <= saved < 10, saved
    info = submit([f"results_dir={results}", "run_id=killed", "cluster=debug"])
    folder = results / "killed" / "train" / "tiny-llama"
    done = json.loads((folder / "training.json").read_text())
    assert done["resumed_from"] == saved and done["steps"] == 10
    assert [r["step"] for r in read_metrics(folder / "metrics.jsonl")] == list(range(1, 11)), "every step once"
    assert info["result"]["complete"]


def test_qlora_trains_the_adapter_on_a_4bit_base(results: Path) -> None:
    info = submit(train_overrides(results, "cluster=debug", "run_id=qlora", "train.load_in_4bit=true", "train.max_steps=2"))
    done = info["result"]["rows"][0]
    assert done["load_in_4bit"] is True and done["steps"] == 2 and math.isfinite(done["train_loss"])


def test_stage_all_chains_eval_train_eval_debate_on_the_local_executor(results: Path) -> None:
    info = submit(["stage=all", "models=tiny", f"results_dir={results}", "run_id=chain", "limit=4", "shards=2",
                   "eval.batch_size=4", "eval.max_gen_toks=32", "train.max_samples=8", "train.max_steps=2",
                   "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1", "train.max_length=256",
                   "wandb.mode=disabled", "debate.max_new_tokens=48", "debate.max_rounds=2", "debate.baselines.vote_k=2",
                   "cluster=local", "cluster.cpus_per_task=1", "wait=true"])
    run = results / "chain"
    assert [s["where"] for s in info["steps"]] == ["eval", "train", "eval_finetuned", "debate"]
    assert info["result"]["complete"], info["result"]["missing"]
    readme = (run / "README.md").read_text()
    for title in ("1. Base models", "2. ORPO fine-tuning", "3. Fine-tuned models", "4. Debate of the fine-tuned models"):
        assert title in readme
    for png in ("eval_accuracy.png", "train_curves.png", "eval_finetuned_accuracy.png", "debate_accuracy_per_round.png"):
        assert f"]({png})" in readme and (run / png).exists()
    tuned = json.loads((run / "eval_finetuned_accuracy.json").read_text())["rows"]
    assert {r["model"] for r in tuned} == {"tiny-llama + adapter (chain/train/tiny-llama)", "tiny-qwen2 + adapter (chain/train/tiny-qwen2)"}
    assert "| tiny-llama + adapter (chain/train/tiny-llama) (a) |" in (run / "eval_finetuned_accuracy.md").read_text()
    logs = "".join(p.read_text() for p in (run / "logs").glob("eval_finetuned-*.log"))
    assert f"loaded tiny-llama + adapter ({run / 'train' / 'tiny-llama'})" in logs, "a fine-tuned model is never logged as its base"
    assert "Models: a = tiny-llama + adapter (chain/train/tiny-llama)" in (run / "debate_accuracy.md").read_text()
    card = (run / "train" / "tiny-llama" / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "| tiny-llama + adapter (chain/train/tiny-llama) (a) |" in card.split("## Evaluation")[1]
    debate_models = (run / "debate" / "stage.yaml").read_text()
    assert str(run / "train" / "tiny-llama") in debate_models, "the debate takes the fine-tuned adapters"


def test_mined_pairs_come_from_a_debate_on_training_questions(results: Path) -> None:
    """Question 0: a wrong turn and a right vote sample of the model's own are the pair; question 1: nothing
    mined (the gold and its corruption); question 2: only a right reply (rejected: the corruption), and a
    wrong reply cut at the token limit is not taken."""
    lines = (ROOT / "pipeline/assets/gsm8k/train.jsonl").read_text().splitlines()
    first, third = (json.loads(lines[i]) for i in (0, 2))
    wrong, right = "She sold 70 clips.\n#### 70", "48 + 24 = 72 clips in all.\n\\boxed{72}"
    with ShardWriter(results / "mine" / "debate" / "shard-00000-of-00001.jsonl") as writer:
        writer.append({"index": 0, "question": first["question"], "gold": "72",
                       "turns": [{"model": "a", "answer": "70", "stopped": True, "text": wrong}],
                       "vote": {"a": {"replies": [{"answer": "72", "stopped": True, "text": right}]}}})
        writer.append({"index": 2, "question": third["question"], "gold": "5",
                       "turns": [{"model": "a", "answer": "4", "stopped": False, "text": "It is 4"},
                                 {"model": "b", "answer": "5", "stopped": True, "text": "#### 5"}]})
    from pipeline.stages import build_config, load_config

    config = build_config(load_config([f"results_dir={results}", "train.mine_from=mine", "train.max_samples=3"]))
    rows, info = gsm8k_pairs(config)
    assert info == {"pairs": 3, "mined_rejected": 1, "mined_chosen": 2}
    assert (rows[0]["chosen"][0]["content"], rows[0]["rejected"][0]["content"]) == (right, wrong)
    assert rows[1]["rejected"][0]["content"] == corrupt_solution(rows[1]["chosen"][0]["content"], 1)
    assert rows[1]["chosen"][0]["content"].endswith("#### 10") and "<<" not in rows[1]["chosen"][0]["content"]
    assert rows[2]["chosen"][0]["content"] == "#### 5" and rows[2]["rejected"][0]["content"].endswith("#### 8")


BAD = [
    (["train.dataset={bad}"], "no 'rejected' field; ORPO needs prompt, chosen and rejected (found: prompt, chosen)"),
    (["train.deepspeed={ds}"], "does not parse as JSON"),
    (["train.deepspeed=zero4"], "train.deepspeed=zero4: no such file; use zero2, zero3, or a path to a DeepSpeed JSON config"),
    (["cluster=local", "cluster.gpus_per_node=2"], "cluster.gpus_per_node=2: this machine has 0 GPU(s)"),
    (["cluster=slurm", "cluster.gpus_per_node=2", "cluster.tasks_per_node=1"],
     "cluster.tasks_per_node=1 with 2 GPU(s) per node: training runs one process per GPU; leave cluster.tasks_per_node unset or set it to 2"),
    (["train.deepspeed=zero3", "train.load_in_4bit=true"], "4-bit weights cannot be partitioned"),
    (["train.models=[c]"], "train.models=['c']: list a and/or b"),
    (["train.precision=fp8"], "train.precision=fp8: not one of auto, fp16, bf16, fp32"),
    (["train.beta=0"], "train.beta=0: must be a number > 0"),
    (["train.lora.r=0"], "train.lora.r=0: must be a whole number >= 1"),
    (["train.mine_from=nothing-here"], "train.mine_from=nothing-here: no debate shards under"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_training_input_is_one_line_before_anything_is_submitted(args: list[str], message: str, results: Path,
                                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2,}')
    code = main(train_overrides(results, *(a.format(bad=bad, ds=ds) for a in args)))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert list(results.iterdir()) == []
