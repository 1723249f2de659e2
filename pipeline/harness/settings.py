"""The eval stage's settings (``eval.*``): each knob once, with its type, default, help and range.

lm-evaluation-harness (hf backend) runs on each model of the pair for each task of ``tasks``; the array is
models x tasks x shards, and each array task runs lm-eval on its slice of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.engine import ENGINES
from pipeline.settings import PAIR, knob


@dataclass(frozen=True)
class EvalSettings:
    """lm-eval's knobs as the eval stage runs it."""

    models: tuple[str, ...] = knob(list(PAIR), "the models of the pair", choices=PAIR, nonempty=True)
    batch_size: int | str = knob("auto", "lm-eval's batch size: a number, auto (the largest that fits, found by "
                                         "lm-eval), or auto:N (re-found N times as prompts get shorter).")
    max_batch_size: int = knob(64, "Upper bound for auto.", minimum=1)
    cpu_batch_size: int = knob(8, "What auto means on a CPU: lm-eval's probe runs full-length forward passes from "
                                  "max_batch_size down until one fits, which takes minutes there and finds nothing.",
                               minimum=1)
    chunk_size: int = knob(128, "Questions per lm-eval call. Records are appended after each call, so this bounds the "
                                "work a killed job loses; keep it a few times the batch size.", minimum=1)
    max_gen_toks: int | None = knob(None, "Tokens a model may generate per question; null: the task's own (gsm8k 256, "
                                          "gsm8k_cot_llama 1024).", minimum=1)
    gen_kwargs: dict[str, Any] | None = knob(None, "lm-eval's --gen_kwargs: generation settings laid over each task's "
                                                   "generation_kwargs, e.g. eval.gen_kwargs={temperature:0.7,do_sample:true,"
                                                   "top_p:0.95,until:['Question:']}: any key of lm-eval's (until, do_sample, "
                                                   "temperature) or of transformers' GenerationConfig; the generation length "
                                                   "is eval.max_gen_toks. null: the task's own.")
    num_fewshot: int | None = knob(None, "lm-eval's --num_fewshot: few-shot examples per question (0: zero-shot); null: "
                                         "the task's own (gsm8k 5, gsm8k_cot_llama 8). As in lm-eval, a task whose own "
                                         "count is 0 stays zero-shot.", minimum=0)
    system_instruction: str | None = knob(None, "lm-eval's --system_instruction: a system message put before every "
                                                "prompt; null: none.")
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
                         choices=ENGINES)
    include_path: str | None = knob(None, "lm-eval's --include_path: a folder of task YAMLs whose tasks `tasks=` may "
                                          "name; null: none.")
