"""Every bad input is one line naming the bad value (and the valid choices), exit code 2, nothing submitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.submit import main
from tests.conftest import run_submit

CASES = [
    (["stage=debat"], "unknown stage 'debat'; valid choices: all, debate, eval, train"),
    (["models=huge"], "unknown models 'huge'; valid choices: mini, small, tiny, v100"),
    (["cluster=k8s"], "unknown cluster 'k8s'; valid choices: debug, local, slurm"),
    (["shard=2"], "unknown key 'shard'; valid keys here: cluster, data, debate, "),
    (["debate.rounds=2"], "unknown key 'debate.rounds'; valid keys here: baselines, batch_invariant, batch_size, "),
    (["+extra=1"], "unknown key 'extra'"),
    (["shards=0"], "shards=0: must be a whole number >= 1"),
    (["shards=-3"], "shards=-3: must be a whole number >= 1"),
    (["shards=two"], "shards=two: must be a whole number"),
    (["limit=0"], "limit=0: must be a whole number >= 1 or null"),
    (["limit=4", "shards=5"], "shards=5: more shards than problems (4); use shards=1..4"),
    (["wait=sometimes"], "wait=sometimes: must be a boolean"),
    (["debate.max_rounds=0"], "debate.max_rounds=0: must be a whole number >= 1"),
    (["debate.temperature=-1"], "debate.temperature=-1: must be a number >= 0"),
    (["debate.final_answer=c"], "debate.final_answer=c: not one of last, a, b"),
    (["debate.prompts.solve=Solve it."], "debate.prompts.solve must contain the placeholder {question}"),
    (["debate.prompts.review=Check it."], "debate.prompts.review must contain the placeholder {other}"),
    (["debate.engine=vllm"], "debate.engine=vllm: not one of auto, static, generate"),
    (["debate.prefill_tokens=0"], "debate.prefill_tokens=0: must be a whole number >= 1"),
    (["debate.devices=both"], "debate.devices=both: not one of auto, shared, split"),
    (["debate.cuda_graphs=maybe"], "debate.cuda_graphs=maybe: must be a boolean"),
    (["debate.batch_invariant=true", "debate.engine=generate"],
     "debate.batch_invariant=true needs the static engine (debate.engine=auto or static): transformers' generate picks its kernels by the batch's shape"),
    (["debate.baselines.vote_models=[a,c]"], "debate.baselines.vote_models has 'c'; valid entries: a, b"),
    (["models.dtype=fp8"], "models.dtype=fp8: not one of auto, float32, float16, bfloat16"),
    (["models.a=no-such-model"], "models.a=no-such-model: no such model folder and not a registered model; registered: "),
    (["models.b=README.md"], "models.b=README.md: is a file; give a model folder"),
    (["models.a=pipeline"], "models.a=pipeline: the folder has neither config.json nor adapter_config.json"),
    (["run_id=../escape"], "run_id=../escape: use letters, digits"),
    (["run_id=a;rm"], "cannot parse the override 'run_id=a;rm'"),
    (["run_id='a;rm -rf x'"], "run_id=a;rm -rf x: use letters, digits"),
    (["shards=[1"], "cannot parse the override 'shards=[1'"),
    (["data.split=validation"], "data.split=validation: no file "),
    (["shards"], "'shards' is not a key=value override"),
    (["cluster=slurm", "cluster.additional.exclude=n1"], "add it with a leading '+', as +cluster.additional.exclude=..."),
    (["stage=eval", "tasks=[gsm8k,no_such_task]"],
     "unknown task 'no_such_task': not a vendored task (gsm8k, gsm8k_cot_llama), nor one of lm-eval's"),
    (["stage=eval", "tasks=[gsm8k_cot_zeroshot]"], "task gsm8k_cot_zeroshot: cannot be loaded offline (HF_DATASETS_OFFLINE=1; "
     "is its dataset in the Hugging Face cache?): ConnectionError: Couldn't reach 'openai/gsm8k' on the Hub"),
    (["stage=eval", "tasks=[mmlu]"], "task mmlu: an lm-eval group of tasks; name its tasks one by one in tasks="),
    (["stage=eval", "tasks=[]"], "tasks=[]: give at least one task; vendored tasks: gsm8k, gsm8k_cot_llama"),
    (["stage=eval", "tasks=[gsm8k,gsm8k]"], "tasks=['gsm8k', 'gsm8k']: a task is listed twice"),
    (["stage=eval", "eval.models=[a,c]"], "eval.models=['a', 'c']: list a and/or b (the models of the pair), each once"),
    (["stage=eval", "eval.batch_size=0"], "eval.batch_size=0: must be a whole number >= 1, auto, or auto:N"),
    (["stage=eval", "eval.batch_size=big"], "eval.batch_size=big: must be a whole number >= 1, auto, or auto:N"),
    (["stage=eval", "eval.chunk_size=0"], "eval.chunk_size=0: must be a whole number >= 1"),
    (["stage=eval", "eval.num_fewshot=-1"], "eval.num_fewshot=-1: must be a whole number >= 0 or null"),
    (["stage=eval", "eval.gen_kwargs={max_gen_toks:64}"], "eval.gen_kwargs.max_gen_toks: the generation length is eval.max_gen_toks"),
    (["stage=eval", "eval.gen_kwargs={temprature:0}"], "eval.gen_kwargs.temprature: neither lm-eval's (until) nor a transformers GenerationConfig field"),
    (["stage=eval", "eval.gen_kwargs=greedy"], "eval.gen_kwargs=greedy: must be a mapping"),
    (["stage=eval", "eval.include_path=/nowhere"], "eval.include_path=/nowhere: no such folder"),
    (["stage=eval", "eval.engine=vllm"], "eval.engine=vllm: not one of auto, static, generate"),
    (["stage=eval", "eval.engine=static", "eval.gen_kwargs={do_sample:true,temperature:0.7}"],
     "eval.engine=static decodes greedily only, not sampling (do_sample, temperature > 0); use eval.engine=generate (or auto)"),
    (["stage=eval", "eval.engine=static", "eval.gen_kwargs={repetition_penalty:1.1}"],
     "eval.engine=static decodes greedily only, not eval.gen_kwargs.repetition_penalty; use eval.engine=generate (or auto)"),
    (["stage=eval", "eval.apply_chat_template=yes"], "eval.apply_chat_template=yes: must be true, false or null"),
    (["stage=eval", "eval.apply_chat_template=false", "tasks=[gsm8k_cot_llama]"],
     "task gsm8k_cot_llama: fewshot_as_multiturn needs apply_chat_template"),
    (["stage=eval", "models.b=no-such-model"], "models.b=no-such-model: no such model folder and not a registered model"),
    (["stage=eval", "models.a=results/no-run/train/tiny-llama"], "models.a=results/no-run/train/tiny-llama: no such model folder"),
    # values that pass a range check but cannot run or mean nothing
    (["debate.temperature=nan"], "debate.temperature=nan: must be a finite number >= 0"),
    (["debate.baselines.vote_temperature=inf"], "debate.baselines.vote_temperature=inf: must be a finite number >= 0"),
    (["stage=train", "train.learning_rate=nan"], "train.learning_rate=nan: must be a finite number > 0"),
    (["stage=train", "train.lora.lora_dropout=1.0"], "train.lora.lora_dropout=1.0: must be a number below 1"),
    (["stage=train", "train.push_to_hub=no-owner"], "train.push_to_hub=no-owner: give a hub repo id, owner/name"),
    (["stage=train", "train.push_to_hub=me/tiny"], "train.push_to_hub=me/tiny: HF_HUB_OFFLINE=1 (the suite's default is 1) blocks the push"),
    (["wandb.mode=cloud"], "wandb.mode=cloud: not one of auto, offline, online, disabled"),
    (["seed=4294967296"], "seed=4294967296: must be a whole number from 0 to 4294967295"),
    (["debate.batch_size=3000000000"], "debate.batch_size=3000000000: must be a whole number from 1 to 2147483647"),
    (["debate.max_new_tokens=5000"], "debate.max_new_tokens=5000: models.a (tiny-llama) holds at most 4096 tokens (max_position_embeddings); use 1..4095"),
    (["stage=eval", "eval.max_gen_toks=4096"], "eval.max_gen_toks=4096: models.a (tiny-llama) holds at most 4096 tokens"),
    # syntax the suite does not support, and weak messages made precise
    (["~debate.temperature"], "'~debate.temperature': deleting a key is not supported; set it to null (key=null) or leave it out"),
    (["shards=2", "shards=3"], "shards is given twice (shards=2 and shards=3); give it once"),
    (["shards=null"], "shards=null: must be a whole number >= 1"),
    (["data.path=/nonexistent"], "data.path=/nonexistent: no such folder"),
    (["run_id=abc\n"], "cannot parse the override 'run_id=abc\\n'"),
    (["run_id='abc\n'"], "run_id=abc\\n: use letters, digits, '.', '_' and '-' only (no '/', no '..', no control characters"),
    (["run_id=transcripts.log"], "run_id=transcripts.log: the name of one of the suite's own files"),
    (["run_id=README.md"], "run_id=README.md: the name of one of the suite's own files"),
    (["run_id=nosuchrun"], "run_id=nosuchrun: no such run (no runs in "),
    # Hardening II (issue 30): settings that passed the check and then failed every job, or quietly did another thing
    (["debate.prompts.solve='Q {question} {foo}'"],
     "debate.prompts.solve has the placeholder {foo}; the only ones it may hold: {question} (a literal brace is written {{ or }})"),
    (["debate.prompts.solve='Q {question} {0}'"], "debate.prompts.solve has the placeholder {0}; the only ones it may hold: {question}"),
    (["debate.prompts.solve='Q {question} {'"], "debate.prompts.solve: Single '{' encountered in format string (a literal brace is written {{ or }}"),
    (["debate.prompts.solve='Q {question} }'"], "debate.prompts.solve: Single '}' encountered in format string"),
    (["debate.prompts.review='R {other} {foo}'"], "debate.prompts.review has the placeholder {foo}; the only ones it may hold: {other}, {question}"),
    (["debate.system_prompt=123"], "debate.system_prompt=123: must be a text (quote it: debate.system_prompt='...') or null"),
    (["debate.system_prompt=[a]"], "debate.system_prompt=['a']: must be a text (quote it: debate.system_prompt='...') or null"),
    (["debate.system_prompt={a:1}"], "debate.system_prompt={'a': 1}: must be a text"),
    (["debate.baselines.vote_models=[a,a]"], "debate.baselines.vote_models=['a', 'a']: a is listed twice (its work would be done twice); list each once"),
    (["stage=eval", "eval.gen_kwargs={temperature:hot}"],
     "eval.gen_kwargs.temperature=hot: transformers refuses it (`temperature` (=hot) has to be a strictly positive float"),
    (["stage=eval", "eval.gen_kwargs={top_k:2.5}"], "eval.gen_kwargs.top_k=2.5: transformers refuses it (`top_k` has to be a strictly positive integer"),
    (["stage=eval", "eval.gen_kwargs={do_sample:maybe}"], "eval.gen_kwargs.do_sample=maybe: must be true or false"),
    (["stage=eval", "eval.gen_kwargs={until:''}"], "eval.gen_kwargs.until='': an empty stop sequence ends every response before it starts; drop it"),
    (["stage=eval", "eval.gen_kwargs={until:['Q:','']}"], "eval.gen_kwargs.until=['Q:', '']: an empty stop sequence"),
    (["stage=eval", "eval.gen_kwargs={max_new_tokens:3}"], "eval.gen_kwargs.max_new_tokens: the generation length is eval.max_gen_toks; set that instead"),
    (["stage=eval", "eval.gen_kwargs={to_dict:1}"], "eval.gen_kwargs.to_dict: neither lm-eval's (until) nor a transformers GenerationConfig field"),
    (["stage=train", "train.deepspeed=123"], "train.deepspeed=123: must be a text (quote it: train.deepspeed='...') or null"),
    (["stage=train", "train.deepspeed=[zero2]"], "train.deepspeed=['zero2']: must be a text"),
    (["stage=train", "train.lr_scheduler_type=bogus"], "train.lr_scheduler_type=bogus: not one of linear, cosine, "),
    (["stage=train", "train.lora.target_modules=[nonexistent]"],
     "train.lora.target_modules has 'nonexistent': models.a (tiny-llama) has no such layer; its linear layers: down_proj, gate_proj, k_proj"),
    (["stage=train", "train.lora.target_modules=['']"], "train.lora.target_modules=['']: '' is not a name"),
    (["stage=train", "train.lora.target_modules=[q_proj,q_proj]"], "train.lora.target_modules=['q_proj', 'q_proj']: 'q_proj' is listed twice"),
    (["stage=train", "train.dataset=/etc/passwd"], "train.dataset=/etc/passwd: not a .jsonl/.json file of preference rows (prompt, chosen, rejected)"),
    (["stage=train", "train.dataset=someone/some-data"],
     "train.dataset=someone/some-data: a hub dataset not in the local cache while offline (HF_HUB_OFFLINE=1: "),
    (["stage=train", "train.dataset=../no-such-preference-set"], "train.dataset=../no-such-preference-set: no such file, and not a hub dataset name (owner/name)"),
    (["stage=train", "train.dataset_split=nonexistent"], "train.dataset_split=nonexistent: no file "),
    (["stage=train", "train.dataset_split=test"],
     "train.dataset_split=test: the split the eval and debate score (data.split=test); training on it would score the models on their own training questions; use train"),
    (["stage=train", "train.push_to_hub=../.."], "train.push_to_hub=../..: not a hub repo id (Repo id must use alphanumeric chars"),
    (["stage=train", "train.push_to_hub=-/-"], "train.push_to_hub=-/-: not a hub repo id"),
    (["stage=train", "train.push_to_hub=a--b/c"], "train.push_to_hub=a--b/c: not a hub repo id (Cannot have -- or .. in repo_id"),
    (["stage=train", f"train.push_to_hub=me/{'x' * 97}"], f"train.push_to_hub=me/{'x' * 97}: not a hub repo id"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(args: list[str], message: str, results: Path, capsys: pytest.CaptureFixture) -> None:
    given = {a.split("=", 1)[0] for a in args}
    code = main([d for d in ("models=tiny", f"results_dir={results}") if d.split("=", 1)[0] not in given] + args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1, "one line"
    assert list(results.iterdir()) == [], "nothing submitted"


def test_gold_answer_that_does_not_parse_names_file_and_line(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "broken", "answer": "no marker here"}]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["models=tiny", f"results_dir={results}", f"data.path={data}"]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'test.jsonl'}:2:" in err and "####" in err


def test_the_command_line_prints_no_traceback(results: Path) -> None:
    done = run_submit("stage=debate", "shards=0", f"results_dir={results}", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: shards=0: must be a whole number >= 1"
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("flag", ["true", "1", "YES", "on"])
def test_the_hub_offline_flag_is_read_as_huggingface_hub_reads_it(flag: str, results: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", flag)
    assert main(["models=tiny", f"results_dir={results}", "stage=train", "train.push_to_hub=me/tiny"]) == 2
    assert capsys.readouterr().err == (f"error: train.push_to_hub=me/tiny: HF_HUB_OFFLINE={flag} (the suite's default is 1) blocks "
                                       "the push; submit with HF_HUB_OFFLINE=0 and the token in HF_TOKEN\n")


def test_a_repo_name_that_two_models_make_too_long_is_refused(results: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two models push to <repo>-<model>: a name within the hub's 96 characters alone may pass them with the suffix."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    repo = f"me/{'x' * 90}"
    assert main(["models=tiny", f"results_dir={results}", "stage=train", f"train.push_to_hub={repo}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: train.push_to_hub={repo}: model a's repo={repo}-tiny-llama: not a hub repo id") and err.count("\n") == 1
    assert list(results.iterdir()) == []


def test_a_system_prompt_past_the_models_context_is_refused(results: Path, capsys: pytest.CaptureFixture) -> None:
    """The tiny models hold 4096 tokens: a system prompt of 3,600 words does not fit beside a question and a turn."""
    assert main(["models=tiny", f"results_dir={results}", f"debate.system_prompt='{'word ' * 3600}'"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: debate.system_prompt: the first prompt (system prompt, solve prompt, longest question) is ")
    assert "tokens of models.a (tiny-llama), which with debate.max_new_tokens=256 passes the 4096 it holds" in err and err.count("\n") == 1
    assert list(results.iterdir()) == []
