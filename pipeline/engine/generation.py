"""Batched chat generation: many conversations, few calls, each row stopping on its own.

This is the engine the debate spends its time in. Rows are rendered with the model's own chat template,
sorted by length (less padding), cut into batches that fit (``max_batch``, and the GPU's free memory for
the static decoder), left-padded and decoded together; each row stops on any of the model's end-of-turn
ids. Two engines give the same tokens (tested): ``static`` (``pipeline.engine.decode``: a preallocated KV cache
and CUDA-graph decode steps, the fast one) and transformers' ``generate`` (any model); ``auto`` takes
the static decoder wherever it supports the model. Sampling is seeded per row (``pipeline.engine.sampling``),
so a question's sampled answer does not depend on which other questions share its batch, on the engine,
or on a resume.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteria, StoppingCriteriaList

from pipeline.engine import ENGINES
from pipeline.engine.decode import CHECK_EVERY, StaticDecoder, StepReport
from pipeline.engine.forward import unsupported
from pipeline.models.loading import ChatModel
from pipeline.engine.sampling import SeededGumbelSampler

log = logging.getLogger(__name__)

Message = dict[str, str]
# A call's progress: (rows finished, tokens generated so far, fraction of the call's work done).
Report = Callable[[int, int, float], None]
# Bytes per row and vocabulary entry that decoding needs beside the cache (fp32 logits, sampling noise).
_VOCAB_BYTES = 48

_DECODERS: "weakref.WeakKeyDictionary[PreTrainedModel, StaticDecoder]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Completion:
    """One row's reply: its text, the tokens it generated (stop token included), and its share of the wall time."""

    text: str
    tokens: int
    seconds: float
    stopped: bool


def pick_engine(chat: ChatModel, engine: str) -> str:
    """``static`` or ``generate`` for this model; ``static`` on a model it cannot run is an error."""
    if engine not in ENGINES:
        raise ValueError(f"unknown generation engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "generate":
        return engine
    reason = unsupported(chat.model)
    if reason is None:
        return "static"
    if engine == "static":
        raise ValueError(f"engine=static cannot run {chat.name}: {reason}; use engine=generate (or auto)")
    log.info("%s: %s, so generation uses transformers' generate", chat.name, reason)
    return "generate"


def _decoder(chat: ChatModel, cuda_graphs: bool, kernels: str, reuse_kv: bool, invariant: bool) -> StaticDecoder:
    decoder = _DECODERS.get(chat.model)
    if decoder is None or decoder.settings != (cuda_graphs, kernels, reuse_kv, invariant):
        decoder = _DECODERS[chat.model] = StaticDecoder(chat.model, cuda_graphs=cuda_graphs, kernels=kernels, reuse_kv=reuse_kv,
                                                        invariant=invariant)
    return decoder


def _count_tokens(row: torch.Tensor, stop_ids: torch.Tensor, pad_id: int) -> tuple[int, bool]:
    hits = torch.isin(row, stop_ids).nonzero()
    if len(hits):
        return int(hits[0]) + 1, True
    return int((row != pad_id).sum()), False


def generate_chat(
    chat: ChatModel,
    conversations: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
    max_batch: int | None = None,
    engine: str = "auto",
    cuda_graphs: bool = True,
    kernels: str = "auto",
    reuse_kv: bool = True,
    prefill_tokens: int = 16384,
    batch_invariant: bool = True,
    report: Report | None = None,
) -> list[Completion]:
    """Replies to every conversation, in input order. ``max_batch`` caps the rows of one batch. ``report``
    hears how far the call is, every few decode steps (progress for the people watching a shard).
    ``batch_invariant``: the static decoder's rows independent of their batch (``generate`` never is)."""
    if not conversations:
        return []
    if temperature > 0 and seeds is None:
        raise ValueError("sampling (temperature > 0) needs one seed per row")
    tokenizer = chat.tokenizer
    texts = [tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    chosen = pick_engine(chat, engine)
    decoder = _decoder(chat, cuda_graphs, kernels, reuse_kv, batch_invariant) if chosen == "static" else None
    stop = torch.tensor(chat.stop_ids)
    results: dict[int, Completion] = {}
    tokens_done = 0  # tokens of the finished batches, for the progress report
    start = 0
    while start < len(order):
        rows = min(max_batch or len(order), len(order) - start)
        if decoder is not None:  # the cache of the batch's longest prompt must fit in free memory
            longest = lengths[order[start + rows - 1]] + max_new_tokens
            rows = decoder.max_rows(longest, _VOCAB_BYTES * len(tokenizer), rows)
        chunk = order[start : start + rows]
        start += rows
        batch = tokenizer([texts[i] for i in chunk], add_special_tokens=False, padding=True, return_tensors="pt").to(chat.device)
        chunk_seeds = [seeds[i] for i in chunk] if seeds is not None else None
        on_step = _chunk_report(report, len(results), tokens_done, len(chunk), len(order), max_new_tokens)
        started = time.perf_counter()
        if decoder is not None:
            new_tokens = decoder.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens, stop_ids=chat.stop_ids,
                                          pad_id=tokenizer.pad_token_id, temperature=temperature, seeds=chunk_seeds, prefill_tokens=prefill_tokens,
                                          on_step=on_step)
        else:
            new_tokens = _generate(chat, batch, max_new_tokens, temperature, chunk_seeds, on_step)
        seconds = (time.perf_counter() - started) / len(chunk)
        for i, row in zip(chunk, new_tokens):
            results[i] = _completion(chat, row, stop, seconds)
            tokens_done += results[i].tokens
        if report is not None:
            report(len(results), tokens_done, len(results) / len(order))
    return [results[i] for i in range(len(conversations))]


def _chunk_report(report: Report | None, rows_before: int, tokens_before: int, rows: int, total: int, max_new_tokens: int) -> StepReport | None:
    """One batch's decode steps as the whole call's progress: its rows count once finished, and its share of
    the work by steps taken out of at most ``max_new_tokens``."""
    if report is None:
        return None

    def on_step(step: int, open_rows: int, tokens: int) -> None:
        report(rows_before + rows - open_rows, tokens_before + tokens, (rows_before + rows * min(1.0, step / max_new_tokens)) / total)

    return on_step


class _Watch(StoppingCriteria):
    """Never stops anything: reports ``generate``'s progress every ``CHECK_EVERY`` steps, as the static
    decoder does (rows count as finished once they have written a stop token)."""

    def __init__(self, on_step: StepReport, prompt: int, stop_ids: list[int]) -> None:
        self.on_step, self.prompt, self.stop = on_step, prompt, torch.tensor(stop_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt
        if (step - 1) % CHECK_EVERY == 0:
            hits = torch.isin(input_ids[:, self.prompt :], self.stop.to(input_ids.device))
            finished = hits.any(dim=1)
            first = torch.where(finished, hits.int().argmax(dim=1) + 1, step)
            self.on_step(step, int((~finished).sum()), int(first.sum()))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _completion(chat: ChatModel, row: torch.Tensor, stop: torch.Tensor, seconds: float) -> Completion:
    count, stopped = _count_tokens(row, stop, chat.tokenizer.pad_token_id)
    text = chat.tokenizer.decode(row[:count], skip_special_tokens=True).strip()
    return Completion(text=text, tokens=count, seconds=seconds, stopped=stopped)


@torch.inference_mode()
def _generate(chat: ChatModel, batch: dict[str, torch.Tensor], max_new_tokens: int, temperature: float, seeds: list[int] | None,
              on_step: StepReport | None = None) -> torch.Tensor:
    """transformers' ``generate`` on one padded batch: the new tokens, on the CPU."""
    processors = LogitsProcessorList()
    if temperature > 0:
        processors.append(SeededGumbelSampler(seeds, temperature))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=chat.stop_ids,
        pad_token_id=chat.tokenizer.pad_token_id,
    )
    watch = StoppingCriteriaList([_Watch(on_step, batch["input_ids"].shape[1], chat.stop_ids)] if on_step else [])
    output = chat.model.generate(**batch, generation_config=config, logits_processor=processors, stopping_criteria=watch)
    return output[:, batch["input_ids"].shape[1] :].cpu()
