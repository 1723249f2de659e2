"""Preference pairs for ORPO, in orpo-dpo-mix-40k's conversational format.

Every source becomes rows of ``prompt`` (user messages), ``chosen`` and ``rejected`` (assistant messages):
- ``gsm8k`` (the offline default): GSM8K training questions under the debate's own solve prompt. With
  ``train.mine_from=<run_id>`` (a debate step run on the training split, e.g. a vote of k samples), chosen is
  a right reply of the model's own and rejected a wrong one of the same question, mined from every reply the
  run's records keep (debate turns, model b alone, vote samples; only replies that ended on their own and
  state an answer). Where none is right, chosen is the gold solution; where none is wrong, rejected is
  a deterministic corruption of the gold (its final result moved). Only training-split questions are used,
  matched by text, so a debate on the test split never leaks in.
- a local ``.jsonl`` / ``.json`` file, or a hub dataset name (``mlabonne/orpo-dpo-mix-40k``) through
  ``datasets``: rows with ``chosen`` and ``rejected`` (and ``prompt``, or a prompt implicit in ``chosen``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.answers import normalize_number, read_answer, same_answer
from pipeline.config import ConfigError, project_path
from pipeline.run_config import RunConfig
from pipeline.data import load_problems
from pipeline.shards import read_shard

REQUIRED = ("chosen", "rejected")
_CALC = re.compile(r"<<[^>]*>>")


def clean_solution(answer: str) -> str:
    """A GSM8K solution as a model should write it: calculator annotations removed, ``#### N`` kept."""
    return _CALC.sub("", answer).strip()


def corrupt_solution(solution: str, index: int) -> str:
    """The gold solution with its final result moved by 1..9 (by the question's index) everywhere it is
    stated last: in ``#### N`` and in the line before it. Deterministic, and always wrong."""
    body, _, final = solution.rpartition("####")
    gold = normalize_number(final.strip()) or final.strip()
    wrong = str(int(float(gold)) + 1 + index % 9) if re.fullmatch(r"-?\d+(\.\d+)?", gold) else f"{gold}1"
    lines = body.rstrip().split("\n")
    if lines and final.strip() in lines[-1]:
        head, sep, tail = lines[-1].rpartition(final.strip())
        lines[-1] = head + wrong + tail
    return "\n".join(lines) + f"\n#### {wrong}"


def _replies(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every reply a debate record keeps: its turns, model b's solo reply, each vote sample."""
    solo = [entry for entry in record.get("solo", {}).values() if "text" in entry]
    votes = [r for vote in record.get("vote", {}).values() for r in vote.get("replies", [])]
    return [*record["turns"], *solo, *votes]


def mined_replies(run_dir: Path) -> dict[str, dict[str, str]]:
    """Question text -> its first ``right`` and first ``wrong`` reply in a debate run's shards (any model),
    counting only replies that ended on their own and state an answer."""
    mined: dict[str, dict[str, str]] = {}
    for path in sorted((run_dir / "debate").glob("shard-*.jsonl")):
        for record in read_shard(path):
            found = mined.setdefault(record["question"], {})
            for reply in _replies(record):
                if reply.get("stopped", True) and reply["answer"] is not None:
                    found.setdefault("right" if same_answer(reply["answer"], record["gold"]) else "wrong", reply["text"])
    return mined


def gsm8k_split(config: RunConfig) -> Path:
    """The GSM8K file the pairs come from: ``<data.path>/<train.dataset_split>.jsonl``."""
    return project_path(config.data.path) / f"{config.train.dataset_split}.jsonl"


def gsm8k_pairs(config: RunConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pairs from the GSM8K training split; also returns how many rejected answers were mined."""
    train = config.train
    path = gsm8k_split(config)
    problems = load_problems(path, train.max_samples)
    answers = [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines()[: len(problems)]]
    mined: dict[str, dict[str, str]] = {}
    if train.mine_from:
        run_dir = project_path(config.results_dir) / str(train.mine_from)
        if not (run_dir / "debate").is_dir():
            raise ConfigError(f"train.mine_from={train.mine_from}: no debate shards under {run_dir}")
        mined = mined_replies(run_dir)
    solve = config.debate.prompts.solve
    rows, used, own = [], 0, 0
    for problem, answer in zip(problems, answers):
        gold_solution = clean_solution(answer)
        found = mined.get(problem.question, {})
        chosen = found.get("right", gold_solution)
        rejected = found.get("wrong")
        used += rejected is not None
        own += "right" in found
        if rejected is None or read_answer(rejected).strict is None:
            rejected = corrupt_solution(gold_solution, problem.index)
        rows.append({
            "prompt": [{"role": "user", "content": solve.format(question=problem.question)}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    return rows, {"pairs": len(rows), "mined_rejected": used, "mined_chosen": own}


def check_columns(columns: list[str], where: str) -> None:
    """orpo-dpo-mix-40k's fields: ``chosen`` and ``rejected`` are required (``prompt`` may be implicit)."""
    for field in REQUIRED:
        if field not in columns:
            raise ConfigError(f"{where}: no '{field}' field; ORPO needs prompt, chosen and rejected (found: {', '.join(columns) or 'nothing'})")


def load_pairs(config: RunConfig) -> tuple[Any, dict[str, int]]:
    """The training set as a ``datasets.Dataset``, subset to ``train.max_samples`` (seeded shuffle)."""
    from datasets import Dataset, load_dataset

    train = config.train
    source = train.dataset
    if source == "gsm8k":
        rows, info = gsm8k_pairs(config)
        return Dataset.from_list(rows), info
    path = project_path(source)
    if path.is_file():
        dataset = load_dataset("json", data_files=str(path), split="train")
    else:
        dataset = load_dataset(source, split=train.dataset_split)
    check_columns(list(dataset.column_names), f"train.dataset={source}")
    dataset = dataset.shuffle(seed=config.seed)
    if train.max_samples:
        dataset = dataset.select(range(min(len(dataset), train.max_samples)))
    return dataset, {"pairs": len(dataset), "mined_rejected": 0, "mined_chosen": 0}


def check_dataset(config: RunConfig) -> None:
    """Submit-time check of what the job will train on: the GSM8K split (a file of data.path, never the split
    the eval and debate score), a local dataset file's fields (the first row), a hub dataset's name (and,
    offline, that it is in the cache), and the debate run that rejected answers are mined from."""
    train = config.train
    mine_from = train.mine_from
    if mine_from and not (project_path(config.results_dir) / str(mine_from) / "debate").is_dir():
        raise ConfigError(f"train.mine_from={mine_from}: no debate shards under {project_path(config.results_dir) / str(mine_from)}")
    source, split = str(train.dataset), str(train.dataset_split)
    if source == "gsm8k":
        _check_gsm8k_split(config, split)
        return
    path = project_path(source)
    if path.is_file() or path.suffix in (".json", ".jsonl"):
        _check_file(source, path, split)
    elif path.exists():
        raise ConfigError(f"train.dataset={source}: a folder; give a .jsonl/.json file of preference rows or a hub dataset name")
    else:
        _check_hub_dataset(source)


def _check_gsm8k_split(config: RunConfig, split: str) -> None:
    path = gsm8k_split(config)
    if split == config.data.split:
        raise ConfigError(f"train.dataset_split={split}: the split the eval and debate score (data.split={split}); training "
                          "on it would score the models on their own training questions; use train")
    if not path.is_file():
        found = ", ".join(sorted(p.stem for p in path.parent.glob("*.jsonl"))) or "none"
        raise ConfigError(f"train.dataset_split={split}: no file {path} (splits there: {found})")


def _check_file(source: str, path: Path, split: str) -> None:
    if path.suffix not in (".json", ".jsonl"):
        raise ConfigError(f"train.dataset={source}: not a .jsonl/.json file of preference rows (prompt, chosen, rejected)")
    if not path.is_file():
        raise ConfigError(f"train.dataset={source}: no such file")
    if split != "train":
        raise ConfigError(f"train.dataset_split={split}: a local file is one split, train; leave train.dataset_split out")
    try:
        first = path.read_text(encoding="utf-8").lstrip()
        row = json.loads(first.splitlines()[0]) if path.suffix == ".jsonl" else json.loads(first)[0]
    except (UnicodeDecodeError, json.JSONDecodeError, IndexError, KeyError, TypeError) as err:
        raise ConfigError(f"train.dataset={source}: not a JSON/JSONL file of preference rows ({err})") from None
    if not isinstance(row, dict):
        raise ConfigError(f"train.dataset={source}: rows must be objects with prompt, chosen and rejected")
    check_columns(list(row), f"train.dataset={source}")


def _check_hub_dataset(source: str) -> None:
    """A hub dataset: a valid repo id (huggingface_hub's check); offline (huggingface_hub's reading of
    HF_HUB_OFFLINE or HF_DATASETS_OFFLINE), one the datasets cache holds."""
    import os

    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ConfigError(f"train.dataset={source}: no such file, and not a hub dataset name (owner/name)") from None
    flags = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    offline = [f"{name}={value}" for name, value in flags.items() if constants._is_true(value)]
    if not offline:
        return
    from datasets import load_dataset_builder

    try:
        load_dataset_builder(source)
    except Exception as err:  # datasets' offline misses have no common base; each is one line here
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"train.dataset={source}: a hub dataset not in the local cache while offline ({offline[0]}: "
                          f"{detail[:160]}); download it once online, or give a local .jsonl file") from None
