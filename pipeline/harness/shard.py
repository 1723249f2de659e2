"""One eval array task: lm-eval (hf backend) on one model, one task, one slice of the test set.

The model is loaded once, by the suite's own loader (registry, GGUF cache, 4-bit, PEFT adapter), and
handed to lm-eval's ``HFLM``. The slice's unfinished questions go to ``lm_eval.simple_evaluate`` in chunks
(``samples=`` selects them by index), with the settings lm-eval's CLI takes (``eval.num_fewshot``,
``eval.gen_kwargs``, ``eval.system_instruction``, the chat options); after each chunk, one record per question
is appended to the shard and lm-eval's own results JSON, with what the CLI records, is written beside it. A
rerun sends only the questions not yet recorded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.config import project_path
from pipeline.harness.tasks import RUN_OPTIONS, is_vendored, run_options, task_config
from pipeline.harness.units import eval_schema, questions
from pipeline.files import write_atomic
from pipeline.shards import ShardWriter
from pipeline.jobs import ShardTask

log = logging.getLogger(__name__)


def _records(output: dict[str, Any], task: str, model: str, golds: dict[int, str] | None, seconds: float) -> list[dict[str, Any]]:
    """lm-eval logs one sample per question per filter; the suite keeps one record per question. ``golds``:
    the vendored GSM8K's answers; a task of lm-eval's or of a task folder keeps its own target."""
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
            "gold": golds[index] if golds is not None else str(sample["target"]),
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
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from pipeline.harness.model import harness_model
    from pipeline.harness.other_tasks import task_manager

    config = task.config
    key, name = task.unit.part.split("/")
    data_dir = project_path(config.data.path)
    ev = config.eval
    golds = {p.index: p.gold for p in questions(config)} if is_vendored(name) else None
    options = run_options(name, {k: getattr(ev, k) for k in RUN_OPTIONS})
    gen_kwargs = {**(ev.gen_kwargs or {}), **({"max_gen_toks": ev.max_gen_toks} if ev.max_gen_toks else {})}
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
            if golds is not None:
                spec, manager = task_config(name, data_dir, config.data.split), TaskManager(include_defaults=False)
            else:
                spec, manager = name, task_manager(name, ev.include_path)
            model_args = {"pretrained": getattr(config.models, key), "dtype": config.models.dtype}
            chunk = ev.chunk_size
            with reporter.phase(f"lm-eval {task.unit.part}", len(todo), "samples") as phase:
                lm.watch(phase)
                for start in range(0, len(todo), chunk):
                    docs = todo[start : start + chunk]
                    t0 = time.perf_counter()
                    tracker = EvaluationTracker()
                    output = lm_eval.simple_evaluate(
                        model=lm,
                        model_args=model_args,
                        tasks=[spec],
                        task_manager=manager,
                        samples={name: docs},
                        num_fewshot=ev.num_fewshot,
                        batch_size=lm.batch_size,
                        max_batch_size=lm.max_batch_size,
                        device=str(lm.device),
                        gen_kwargs=gen_kwargs or None,
                        system_instruction=ev.system_instruction,
                        evaluation_tracker=tracker,
                        log_samples=True,
                        random_seed=config.seed,
                        **options,
                    )
                    seconds = (time.perf_counter() - t0) / len(docs)
                    _save_results(task.path, docs, output, tracker)
                    for record in _records(output, name, getattr(config.models, key), golds, seconds):
                        writer.append(record)
                    lm.finished(len(writer.records) - (len(task.unit.indices) - len(todo)))
                    reporter.set_work(len(writer.records), len(task.unit.indices), "samples")
                    log.info("%s: %d/%d questions done", task.label, len(writer.records), len(task.unit.indices))
        done = len(writer.records)
    seconds = time.perf_counter() - started
    log.info("%s: complete, %d questions, %.1f s", task.label, done, seconds)
    return {"shard": task.unit.label, "questions": done, "ran": len(todo), "seconds": round(seconds, 2)}


def _save_results(shard_path: Path, docs: list[int], output: dict[str, Any], tracker: Any) -> None:
    """lm-eval's own results JSON for one chunk, beside the shard: ``<shard>.lm_eval/results-<first>-<last>.json``,
    holding what the CLI's ``EvaluationTracker.save_results_aggregated`` adds (the task hashes, the chat template,
    fewshot_as_multiturn, the system instruction, with their hashes)."""
    from lm_eval.utils import hash_string

    tracker.general_config_tracker.log_end_time()
    hashes = {name: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples))
              for name, samples in output["samples"].items()}
    kept = {k: v for k, v in output.items() if k != "samples"} | {"task_hashes": hashes} | asdict(tracker.general_config_tracker)
    folder = shard_path.with_suffix(".lm_eval")
    write_atomic(folder / f"results-{docs[0]:05d}-{docs[-1]:05d}.json", json.dumps(kept, indent=2, default=str) + "\n")
