"""One eval array task: lm-eval (hf backend) on one model, one task, one slice of the test set.

The model is loaded once, by the suite's own loader (registry, GGUF cache, 4-bit, PEFT adapter), and
handed to lm-eval's ``HFLM``. The slice's unfinished questions go to ``lm_eval.simple_evaluate`` in chunks
(``samples=`` selects them by index); after each chunk, one record per question is appended to the shard
and lm-eval's own results JSON is written beside it. A rerun sends only the questions not yet recorded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.config import project_path
from pipeline.harness.tasks import run_options, task_config
from pipeline.harness.units import eval_schema, questions
from pipeline.files import write_atomic
from pipeline.shards import ShardWriter
from pipeline.tasks import ShardTask

log = logging.getLogger(__name__)


def _records(output: dict[str, Any], task: str, model: str, golds: dict[int, str], seconds: float) -> list[dict[str, Any]]:
    """lm-eval logs one sample per question per filter; the suite keeps one record per question."""
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in output["samples"][task]:
        index = int(sample["doc_id"])
        record = by_doc.setdefault(index, {
            "index": index,
            "task": task,
            "model": model,
            "prompt": sample["arguments"][0][0],
            "response": sample["resps"][0][0],
            "target": sample["target"],
            "gold": golds[index],
            "extracted": {},
            "correct": {},
            "seconds": round(seconds, 4),
        })
        record["extracted"][sample["filter"]] = sample["filtered_resps"][0]
        record["correct"][sample["filter"]] = bool(sample["exact_match"])
    return [by_doc[i] for i in sorted(by_doc)]


def run_eval_shard(task: ShardTask) -> dict[str, Any]:
    """Resumable: evaluates the slice's questions that are not yet in the shard file."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from pipeline.harness.model import harness_model

    config = task.config
    key, name = task.unit.part.split("/")
    data_dir = project_path(config["data"]["path"])
    golds = {p.index: p.gold for p in questions(config)}
    options = run_options(name, {k: config["eval"][k] for k in ("apply_chat_template", "fewshot_as_multiturn")})
    gen_kwargs = {"max_gen_toks": int(config["eval"]["max_gen_toks"])} if config["eval"]["max_gen_toks"] else None
    started = time.perf_counter()
    with ShardWriter(task.path, eval_schema(config, task.unit)) as writer:
        todo = [i for i in task.unit.indices if i not in writer.done_indices()]
        log.info("%s: %d questions, %d already done, %d to do", task.label, len(task.unit.indices), len(task.unit.indices) - len(todo), len(todo))
        reporter = progress.current()
        reporter.set_work(len(writer.records), len(task.unit.indices), "samples")
        if todo:
            reporter.set_state("running", "loading the model")
            lm = harness_model(config, key, task.threads)
            reporter.set_state("running")
            manager = TaskManager(include_defaults=False)
            chunk = int(config["eval"]["chunk_size"])
            with reporter.phase(f"lm-eval {task.unit.part}", len(todo), "samples") as phase:
                lm.watch(phase)
                for start in range(0, len(todo), chunk):
                    docs = todo[start : start + chunk]
                    t0 = time.perf_counter()
                    output = lm_eval.simple_evaluate(
                        model=lm,
                        tasks=[task_config(name, data_dir, config["data"]["split"])],
                        task_manager=manager,
                        samples={name: docs},
                        gen_kwargs=gen_kwargs,
                        log_samples=True,
                        random_seed=int(config["seed"]),
                        **options,
                    )
                    seconds = (time.perf_counter() - t0) / len(docs)
                    _save_results(task.path, docs, output)
                    for record in _records(output, name, config["models"][key], golds, seconds):
                        writer.append(record)
                    lm.finished(len(writer.records) - (len(task.unit.indices) - len(todo)))
                    reporter.set_work(len(writer.records), len(task.unit.indices), "samples")
                    log.info("%s: %d/%d questions done", task.label, len(writer.records), len(task.unit.indices))
        done = len(writer.records)
    seconds = time.perf_counter() - started
    log.info("%s: complete, %d questions, %.1f s", task.label, done, seconds)
    return {"shard": task.unit.label, "questions": done, "ran": len(todo), "seconds": round(seconds, 2)}


def _save_results(shard_path: Path, docs: list[int], output: dict[str, Any]) -> None:
    """lm-eval's own results JSON for one chunk, beside the shard: ``<shard>.lm_eval/results-<first>-<last>.json``."""
    kept = {k: v for k, v in output.items() if k != "samples"}
    folder = shard_path.with_suffix(".lm_eval")
    write_atomic(folder / f"results-{docs[0]:05d}-{docs[-1]:05d}.json", json.dumps(kept, indent=2, default=str) + "\n")
