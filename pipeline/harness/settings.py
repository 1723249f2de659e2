"""The eval stage's settings (``eval.*``): each knob once, with its type, default, help and range.

lm-evaluation-harness (hf backend) runs on each model of the pair for each task of ``tasks``; the array is
models x tasks x shards, and each array task runs lm-eval on its slice of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import ConfigError
from pipeline.engine import ENGINES
from pipeline.settings import PAIR, knob

# eval.gen_kwargs: lm-eval's own key, the length keys eval.max_gen_toks owns, and the sampling settings
# transformers checks in the warper it builds for them (class name, and the value that builds none).
LM_EVAL_KEYS = ("until",)
LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_length")
WARPERS = {"temperature": ("TemperatureLogitsWarper", (0, 1)), "top_k": ("TopKLogitsWarper", (0,)),
           "top_p": ("TopPLogitsWarper", (1,)), "min_p": ("MinPLogitsWarper", ()),
           "typical_p": ("TypicalLogitsWarper", (1,)), "epsilon_cutoff": ("EpsilonLogitsWarper", (0,)),
           "eta_cutoff": ("EtaLogitsWarper", (0,)), "repetition_penalty": ("RepetitionPenaltyLogitsProcessor", (1,)),
           "no_repeat_ngram_size": ("NoRepeatNGramLogitsProcessor", (0,))}


def check_gen_kwargs(key: str, value: Any) -> None:
    """``eval.gen_kwargs``: a mapping of lm-eval's generation keys (``until``) and transformers'
    ``GenerationConfig`` fields, which lm-eval hands to ``generate()``; a mistyped key or a value generate
    refuses would fail in every shard, a length key would silently override ``eval.max_gen_toks``, and an
    empty stop text would stop every response at once."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value}: must be a mapping, e.g. {key}={{temperature:0.7,do_sample:true}}, or null")
    from transformers import GenerationConfig
    from transformers.generation import logits_process

    fields = vars(GenerationConfig())
    for name, item in value.items():
        where = f"{key}.{name}"
        if name in LENGTH_KEYS:
            raise ConfigError(f"{where}: the generation length is eval.max_gen_toks; set that instead")
        if name == "until":
            texts = [item] if isinstance(item, str) else item
            if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
                raise ConfigError(f"{where}={item}: must be a text or a list of texts (the stop sequences)")
            if not all(texts):
                raise ConfigError(f"{where}={item!r}: an empty stop sequence ends every response before it starts; drop it")
        elif name not in fields:
            raise ConfigError(f"{where}: neither lm-eval's (until) nor a transformers GenerationConfig field")
        elif isinstance(item, (dict, list)):
            raise ConfigError(f"{where}={item}: must be a single value")
        elif name == "do_sample" and not isinstance(item, bool):
            raise ConfigError(f"{where}={item}: must be true or false")
        elif name in WARPERS and item not in WARPERS[name][1]:
            try:
                getattr(logits_process, WARPERS[name][0])(item)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{where}={item}: transformers refuses it ({str(err).splitlines()[0]})") from None


@dataclass(frozen=True)
class EvalSettings:
    """lm-eval's knobs as the eval stage runs it."""

    models: tuple[str, ...] = knob(list(PAIR), "the models of the pair", choices=PAIR, nonempty=True)
    batch_size: int | str = knob("auto", "lm-eval's batch size: a number, auto (the largest that fits, found by "
                                         "lm-eval), or auto:N (re-found N times as prompts get shorter). With "
                                         "eval.engine=static, auto is max_batch_size: the decoder fits its rows to "
                                         "free memory itself, and lm-eval's probe (full forward passes at the "
                                         "model's whole context, 32,768 tokens for Qwen2.5) found 1 on an H100. No eval runs "
                                         "batch-invariant: on a GPU another batch may change a response, so the batch and "
                                         "chunk sizes are in the records' fingerprint and a resume keeps them.",
                             only_when_changed=True)
    max_batch_size: int = knob(64, "Upper bound for auto; what auto is under eval.engine=static.", minimum=1,
                               only_when_changed=True)
    cpu_batch_size: int = knob(8, "What auto means on a CPU: lm-eval's probe runs full-length forward passes from "
                                  "max_batch_size down until one fits, which takes minutes there and finds nothing.",
                               minimum=1, only_when_changed=True)
    chunk_size: int = knob(128, "Questions per lm-eval call. Records are appended after each call, so this bounds the "
                                "work a killed job loses; keep it a few times the batch size.", minimum=1,
                           only_when_changed=True)
    max_gen_toks: int | None = knob(None, "Tokens a model may generate per question; null: the task's own (gsm8k 256, "
                                          "gsm8k_cot_llama 1024).", minimum=1)
    gen_kwargs: dict[str, Any] | None = knob(None, "lm-eval's --gen_kwargs: generation settings laid over each task's "
                                                   "generation_kwargs, e.g. eval.gen_kwargs={temperature:0.7,do_sample:true,"
                                                   "top_p:0.95,until:['Question:']}: any key of lm-eval's (until, do_sample, "
                                                   "temperature) or of transformers' GenerationConfig; the generation length "
                                                   "is eval.max_gen_toks. null: the task's own.", check=check_gen_kwargs,
                                          only_when_changed=True)
    num_fewshot: int | None = knob(None, "lm-eval's --num_fewshot: few-shot examples per question (0: zero-shot); null: "
                                         "the task's own (gsm8k 5, gsm8k_cot_llama 8). As in lm-eval, a task whose own "
                                         "count is 0 stays zero-shot.", minimum=0, only_when_changed=True)
    system_instruction: str | None = knob(None, "lm-eval's --system_instruction: a system message put before every "
                                                "prompt; null: none.", only_when_changed=True)
    apply_chat_template: bool | None = knob(None, "lm-eval's --apply_chat_template; null: the task's own (the vendored "
                                                  "tasks: configs/lm_eval_tasks/<task>.yaml, metadata.run; other tasks: "
                                                  "lm-eval's default, no chat).")
    fewshot_as_multiturn: bool | None = knob(None, "lm-eval's --fewshot_as_multiturn; null: the task's own (other tasks: "
                                                   "few-shot examples as turns whenever the chat template is applied).")
    engine: str = knob("generate", "How lm-eval's generate_until decodes: generate (HFLM's own, transformers' generate: "
                                   "the reference, lm-eval's numbers), static (the suite's static decoder: preallocated KV "
                                   "cache, CUDA-graph steps, rows leaving at their stop string; greedy requests on Llama- "
                                   "and Qwen2-style models only, anything else an error), or auto (static where it can "
                                   "run the model and the request, generate elsewhere). Identical responses in float32; "
                                   "in half precision on a GPU other kernels may change a response (docs/performance.md).",
                         choices=ENGINES, only_when_changed=True)
    include_path: str | None = knob(None, "lm-eval's --include_path: a folder of task YAMLs whose tasks `tasks=` may "
                                          "name; null: none.", only_when_changed=True)
