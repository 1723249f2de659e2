"""The eval stage's settings (``eval.*``): each knob once, with its type, default, help and range.

lm-evaluation-harness (hf backend) runs on each model of the pair for each task of ``tasks``; the array is
models x tasks x shards, and each array task runs lm-eval on its slice of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import knob

PAIR = ("a", "b")


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
    apply_chat_template: bool | None = knob(None, "lm-eval's run option; null: the task's own "
                                                  "(configs/lm_eval_tasks/<task>.yaml, metadata.run).")
    fewshot_as_multiturn: bool | None = knob(None, "lm-eval's run option; null: the task's own.")
