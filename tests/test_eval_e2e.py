"""The eval stage end to end: real lm-evaluation-harness on the tiny pair, sharded, resumable, reduced; either
engine (transformers' generate, HFLM's own, or the suite's static decoder) giving the same responses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.monitor import format_status, run_status
from pipeline.runs import Run
from pipeline.shards import read_shard
from pipeline.submit import main, submit
from tests.conftest import ROOT, layered

TASKS = "tasks=[gsm8k,gsm8k_cot_llama]"


def eval_overrides(results: Path, *extra: str) -> list[str]:
    """A quick eval on the tiny pair: 6 questions, short generations, a fixed batch."""
    return layered([
        "stage=eval",
        "models=tiny",
        f"results_dir={results}",
        "limit=6",
        "eval.max_gen_toks=48",
        "eval.batch_size=4",
        "eval.chunk_size=2",
        "cluster.cpus_per_task=1",
        *extra,
    ])


def _rows(run_dir: Path) -> list[dict]:
    """The merged table without the wall-time column: what must not depend on sharding."""
    rows = json.loads((run_dir / "eval_accuracy.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _records(run_dir: Path, part: str) -> list[dict]:
    """A part's records without their wall time and settings fingerprint (the engine is in it, unless generate)."""
    found = [r for f in sorted((run_dir / "eval" / part).glob("shard-*.jsonl")) for r in read_shard(f)]
    return [{k: v for k, v in r.items() if k not in ("seconds", "settings")} for r in sorted(found, key=lambda r: r["index"])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same evaluation as 1 shard (local executor, both models, transformers' generate) and 3 shards
    (debug executor, the static decoder)."""
    results = tmp_path_factory.mktemp("eval") / "results"
    one = submit(eval_overrides(results, TASKS, "shards=1", "cluster=local", "wait=true", "run_id=one"))
    three = submit(eval_overrides(results, TASKS, "shards=3", "cluster=debug", "run_id=three", "eval.engine=static"))
    return {"results": results, "one": one, "three": three}


def test_one_and_three_shards_and_either_engine_give_the_identical_table(runs: dict) -> None:
    """Both tasks (5-shot plain text; 8-shot as chat turns), both models: lm-eval's responses through the
    static decoder are those of transformers' generate, record for record, in float32 on the CPU."""
    one, three = runs["results"] / "one", runs["results"] / "three"
    assert runs["one"]["result"]["complete"] and runs["three"]["result"]["complete"]
    assert _rows(one) == _rows(three)
    for part in ("a/gsm8k", "a/gsm8k_cot_llama", "b/gsm8k", "b/gsm8k_cot_llama"):
        assert _records(one, part) == _records(three, part), part
    fingerprints = [{r["settings"] for f in (run / "eval" / "a" / "gsm8k").glob("shard-*.jsonl") for r in read_shard(f)} for run in (one, three)]
    assert fingerprints[0] != fingerprints[1], "the engine is in the records' settings fingerprint"
    log = "\n".join(f.read_text() for f in (three / "logs").rglob("*.log"))
    assert "tiny-qwen2: lm-eval decodes through the static decoder" in log


def test_the_engine_is_part_of_the_records_settings(runs: dict, capsys: pytest.CaptureFixture) -> None:
    """In half precision on a GPU the engines' kernels may give other responses: a run keeps its engine."""
    assert main(["run_id=three", f"results_dir={runs['results']}", "eval.engine=generate"]) == 2
    assert "run three was made with eval.engine=static (this submission: generate)" in capsys.readouterr().err


def test_the_cut_share_script_counts_responses_at_the_token_limit(runs: dict) -> None:
    """benchmarks/eval_cut_share.py re-tokenizes each response: at the run's limit (48) some tiny-model
    responses run to it, none is longer, and none reaches a limit far above what was generated."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_cut_share", ROOT / "benchmarks" / "eval_cut_share.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.cut_share(runs["results"] / "one", None, 2)
    assert {(r["model"], r["task"]) for r in rows} == {(f"{m} ({k})", t) for k, m in (("a", "tiny-llama"), ("b", "tiny-qwen2"))
                                                      for t in ("gsm8k", "gsm8k_cot_llama")}
    assert all(r["responses"] == 6 and r["limit"] == 48 and r["mean_tokens"] <= 50 for r in rows)
    assert sum(r["cut"] for r in rows) > 0
    assert sum(r["cut"] for r in script.cut_share(runs["results"] / "one", 1000, 2)) == 0


def test_every_model_task_and_filter_is_in_the_table(runs: dict) -> None:
    rows = _rows(runs["results"] / "one")
    assert [(r["model"], r["task"], r["filter"]) for r in rows] == [
        (model, task, f)
        for model in ("tiny-llama", "tiny-qwen2")
        for task in ("gsm8k", "gsm8k_cot_llama")
        for f in ("strict-match", "flexible-extract")
    ]
    assert all(r["n"] == 6 and 0 <= r["accuracy"] <= 1 for r in rows)
    table = (runs["results"] / "one" / "eval_accuracy.md").read_text()
    assert "| tiny-llama (a) | gsm8k | strict-match |" in table and "flexible-extract" in table
    assert (runs["results"] / "one" / "eval_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (runs["results"] / "one" / "eval_accuracy.csv").read_text().startswith("model,key,task,filter,accuracy,stderr")


def test_records_hold_prompt_response_answers_and_gold(runs: dict) -> None:
    cot = _records(runs["results"] / "three", "b/gsm8k_cot_llama")
    assert [r["index"] for r in cot] == list(range(6))
    for r in cot:
        assert set(r["extracted"]) == set(r["correct"]) == {"strict-match", "flexible-extract"}
        assert r["prompt"].count("<|im_start|>user") == 9, "8 few-shot turns + the question, as a chat"
        assert r["gold"] == r["target"] and r["model"] == "tiny-qwen2"
    plain = _records(runs["results"] / "three", "a/gsm8k")
    assert all(r["prompt"].startswith("Question: ") and r["prompt"].count("Question: ") == 6 for r in plain), "5-shot, no chat"
    results_json = sorted((runs["results"] / "three" / "eval" / "a" / "gsm8k").glob("shard-*.lm_eval/results-*.json"))
    assert len(results_json) == 3, "lm-eval's own results beside every shard (chunks of 2 questions)"
    assert "exact_match,strict-match" in json.loads(results_json[0].read_text())["results"]["gsm8k"]


def test_a_rerun_skips_finished_shards_and_resumes_a_partial_one(runs: dict) -> None:
    run_dir = runs["results"] / "three"
    again = submit(eval_overrides(runs["results"], TASKS, "shards=3", "cluster=debug", "run_id=three"))
    assert again["resumed"] and again["submitted"] == []
    before = _records(run_dir, "b/gsm8k")
    shard = run_dir / "eval" / "b" / "gsm8k" / "shard-00001-of-00003.jsonl"
    first_line = shard.read_bytes().split(b"\n")[0] + b"\n"
    shard.write_bytes(first_line + b'{"index": 3, "task": "gsm8k", "torn')
    resumed = submit(["run_id=three", f"results_dir={runs['results']}", "cluster=debug"])
    assert resumed["submitted"] == ["b-gsm8k-shard-00001-of-00003"]
    assert _records(run_dir, "b/gsm8k") == before
    assert resumed["result"]["complete"] and _rows(run_dir) == _rows(runs["results"] / "one")


def test_status_shows_every_array_task(runs: dict) -> None:
    status = run_status(Run(runs["results"] / "three"))
    assert status["state"] == "complete" and status["done"] == status["steps"][0]["total"] == 24
    assert len(status["shards"]) == 12
    assert "a-gsm8k_cot_llama-shard-00002-of-00003" in format_status(status)


def test_an_adapter_folder_is_a_model(tmp_path: Path, results: Path) -> None:
    """``models.a=<adapter dir>``: a PEFT LoRA adapter on the tiny Llama, loaded on its registered base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(ROOT / "pipeline/assets/tiny/tiny-llama")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = tmp_path / "tiny-llama-lora"
    get_peft_model(base, config).save_pretrained(adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": "tiny-llama"}))
    info = submit(eval_overrides(results, "tasks=[gsm8k]", "eval.models=[a]", f"models.a={adapter}", "limit=2", "cluster=debug"))
    assert info["result"]["complete"]
    rows = info["result"]["rows"]
    assert {r["model"] for r in rows} == {f"tiny-llama + adapter ({adapter})"} and all(r["n"] == 2 for r in rows)


def test_a_missing_adapter_is_refused_before_anything_is_submitted(results: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(eval_overrides(results, "models.a=/nowhere/adapter"))
    assert code == 2
    assert capsys.readouterr().err.startswith("error: models.a=/nowhere/adapter: no such model folder")
    assert list(results.iterdir()) == []


def test_lm_eval_settings_and_a_task_folder(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture) -> None:
    """lm-eval's CLI settings reach lm-eval and its saved results; a task folder's task (a copy of the vendored
    gsm8k under another name) runs sharded beside it, gives the same records, and a resume with other
    settings is refused."""
    import yaml

    task = yaml.safe_load((ROOT / "configs/lm_eval_tasks/gsm8k.yaml").read_text())
    data = ROOT / "pipeline/assets/gsm8k"
    task.update(task="gsm8k_copy", dataset_kwargs={"data_files": {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")}})
    del task["metadata"]["run"]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "copy.yaml").write_text(yaml.safe_dump(task))
    settings = ["eval.num_fewshot=0", "eval.gen_kwargs={temperature:0,do_sample:false,until:['Question:']}",
                "eval.system_instruction='Answer with #### and the number.'", "eval.apply_chat_template=true",
                "eval.fewshot_as_multiturn=true"]
    args = eval_overrides(results, "tasks=[gsm8k,gsm8k_copy]", f"eval.include_path={tmp_path / 'tasks'}", "eval.models=[b]",
                          "limit=3", "shards=2", "cluster=debug", "run_id=settings", *settings)
    info = submit(args)
    assert info["result"]["complete"]
    run_dir = results / "settings"
    vendored, copied = _records(run_dir, "b/gsm8k"), _records(run_dir, "b/gsm8k_copy")
    assert [r["index"] for r in copied] == [0, 1, 2]
    assert [(r["prompt"], r["response"], r["correct"]) for r in vendored] == [(r["prompt"], r["response"], r["correct"]) for r in copied]
    for r in copied:
        assert r["prompt"].startswith("<|im_start|>system\nAnswer with #### and the number.")
        assert r["prompt"].count("Question: ") == 1, "zero-shot"
    saved = json.loads(sorted((run_dir / "eval" / "b" / "gsm8k_copy").glob("shard-*.lm_eval/results-*.json"))[0].read_text())
    assert saved["n-shot"] == {"gsm8k_copy": 0}
    assert saved["config"]["gen_kwargs"] == {"temperature": 0, "do_sample": False, "until": ["Question:"], "max_gen_toks": 48}
    assert saved["config"]["model_args"] == {"pretrained": "tiny-qwen2", "dtype": "float32"}
    assert saved["system_instruction"] == "Answer with #### and the number." and saved["system_instruction_sha"]
    assert saved["fewshot_as_multiturn"] is True and "<|im_start|>" in saved["chat_template"] and saved["chat_template_sha"]
    assert saved["task_hashes"]["gsm8k_copy"]
    capsys.readouterr()
    assert main(["run_id=settings", f"results_dir={results}", "eval.num_fewshot=1"]) == 2
    assert "run settings was made with eval.num_fewshot=0 (this submission: 1)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_qwen2():
    import torch

    from pipeline.models.loading import load_chat_model
    from pipeline.models.registry import load_registry

    torch.set_num_threads(1)
    return load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cpu"))


class _Tokens:
    """A progress phase that keeps the tokens the model class counts (non-padding generated tokens)."""

    tokens = 0

    def update(self, rows: int, tokens: int) -> None:
        self.tokens = tokens


def _generate_until(lm, until: list[str], **gen_kwargs) -> tuple[list[str], int]:
    """lm-eval's generate_until on 12 GSM8K questions, as a 0-shot plain-text task asks; the responses and
    the tokens the model generated for them."""
    from lm_eval.api.instance import Instance

    from pipeline.data import load_problems

    problems = load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", 12)
    requests = [Instance("generate_until", {}, (f"Question: {p.question}\nAnswer:", {"until": until, "max_gen_toks": 64, **gen_kwargs}), i)
                for i, p in enumerate(problems)]
    phase = _Tokens()
    lm.watch(phase)
    return lm.generate_until(requests, disable_tqdm=True), phase.tokens


def test_the_static_engine_honours_stop_strings_and_leaves_early(tiny_qwen2) -> None:
    """lm-eval's per-request stop strings: the static decoder's responses are cut where generate's are, and
    rows that wrote one leave the batch (generate runs every row on until all of a batch have one)."""
    from pipeline.harness.model import StaticHFLM, WatchedHFLM

    options = {"pretrained": tiny_qwen2.model, "tokenizer": tiny_qwen2.tokenizer, "batch_size": 4}
    reference, static = WatchedHFLM(**options), StaticHFLM(**options, fallback=False)
    plain, _ = _generate_until(reference, ["Question:"], do_sample=False)
    # Stop strings the model does write, a few characters into some responses: they cut most rows short.
    stops = sorted({r[5:9] for r in plain if len(r) > 20})[:3]
    expected, generated = _generate_until(reference, stops, do_sample=False)
    responses, decoded = _generate_until(static, stops, do_sample=False)
    assert responses == expected
    assert sum(len(r) < len(p) for r, p in zip(expected, plain)) >= 4, "the stop strings cut responses"
    assert decoded < generated, "rows left the batch at their stop string"
    assert _generate_until(static, ["Question:"], temperature=0.0)[0] == plain, "temperature 0 is greedy"


def test_lm_evals_own_model_attends_on_the_backends_that_repeat(tiny_qwen2, attention_backends: list) -> None:
    """eval.engine=generate: HFLM's generate (and its scoring calls) within the engine's attention backends, never
    cuDNN's, whose greedy tokens did not repeat on an H100 (228 of 256 rows, docs/performance.md)."""
    import torch

    from pipeline.harness.model import WatchedHFLM

    lm = WatchedHFLM(pretrained=tiny_qwen2.model, tokenizer=tiny_qwen2.tokenizer, batch_size=4)
    _generate_until(lm, ["Question:"], do_sample=False)
    generated = len(attention_backends)
    lm._model_call(torch.tensor([[5, 6, 7, 8]]))
    assert generated > 0 and len(attention_backends) > generated
    assert {backends[:3] for backends in attention_backends} == {(False, True, True)}
    assert torch.backends.cuda.cudnn_sdp_enabled(), "the backends are restored after each call"


def test_requests_beyond_greedy_go_to_generate_under_auto_and_are_refused_under_static(tiny_qwen2) -> None:
    from pipeline.harness.model import StaticHFLM, WatchedHFLM

    options = {"pretrained": tiny_qwen2.model, "tokenizer": tiny_qwen2.tokenizer, "batch_size": 4}
    penalised = {"do_sample": False, "repetition_penalty": 1.3}
    expected, _ = _generate_until(WatchedHFLM(**options), ["Question:"], **penalised)
    assert _generate_until(StaticHFLM(**options, fallback=True), ["Question:"], **penalised)[0] == expected
    with pytest.raises(ValueError, match=r"eval.engine=static cannot decode this request: generation settings beyond greedy decoding \(repetition_penalty\)"):
        _generate_until(StaticHFLM(**options, fallback=False), ["Question:"], **penalised)
