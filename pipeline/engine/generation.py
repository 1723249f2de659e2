"""Batched chat generation: many conversations, few calls, each row stopping on its own; and the static
decoder on prompts already rendered (lm-eval's), with text stops.

This is the engine the debate spends its time in. Rows are rendered with the model's own chat template,
sorted by length (less padding), cut into batches that fit (``max_batch``, and the GPU's free memory for
the static decoder), left-padded and decoded together; each row stops on any of the model's end-of-turn
ids. Two engines give the same tokens (tested): ``static`` (``pipeline.engine.decode``: a preallocated KV cache
and CUDA-graph decode steps, the fast one) and transformers' ``generate`` (any model); ``auto`` takes
the static decoder wherever it supports the model. Sampling is seeded per row (``pipeline.engine.sampling``),
so a question's sampled answer does not depend on which other questions share its batch, on the engine,
or on a resume.

``continue_prompts`` is the raw-prompt path: token ids a caller has rendered and padded itself (lm-eval
puts its few-shot examples and the chat template in the text), greedy, stopping on the ids ``generate``
stops on and leaving the batch once a row has written one of the caller's stop strings.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from transformers import (GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria,
                          StoppingCriteriaList)

from pipeline.engine import ENGINES, GREEDY_NEUTRAL, DecoderOptions
from pipeline.engine.decode import CHECK_EVERY, StepReport
from pipeline.engine.forward import repeatable_attention, unsupported
from pipeline.engine.memory import Decoders
from pipeline.engine.stop_strings import StopStrings
from pipeline.engine.roofline import Timings
from pipeline.models.loading import ChatModel
from pipeline.engine.sampling import SeededGumbelSampler

log = logging.getLogger(__name__)

Message = dict[str, str]


class Report(Protocol):
    """A call's progress: rows finished, tokens generated so far, the fraction of the call's work done, and
    (after each batch) ``detail``: the call's prefill and decode so far against their limits."""

    def __call__(self, done: int, tokens: int, fraction: float, detail: str | None = None) -> None: ...


# Bytes per row and vocabulary entry that decoding needs beside the cache (fp32 logits, sampling noise).
_VOCAB_BYTES = 48


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


def greedy_config(model: PreTrainedModel, generation_kwargs: dict[str, object]) -> tuple[GenerationConfig, str | None]:
    """The settings ``model.generate(**generation_kwargs)`` would decode with (the model's generation config
    updated by the call's), and why the static decoder cannot give its tokens (None: it can, plain greedy)."""
    config = copy.deepcopy(model.generation_config)
    config.update(**generation_kwargs)
    if config.do_sample:
        return config, "sampling (do_sample)"
    other = sorted(set(config.to_diff_dict()) - GREEDY_NEUTRAL)
    return config, f"generation settings beyond greedy decoding ({', '.join(other)})" if other else None


def continue_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    stop_strings: Sequence[str] = (),
    decoders: Decoders,
) -> torch.Tensor:
    """Greedy continuations of left-padded prompts, ``[rows, max_new_tokens]`` on the CPU, padded after each
    row's stop id as ``generate`` pads; a row that has written one of ``stop_strings`` leaves the batch (its
    tokens up to the decoder's next check stay: cut the text at the string). Rows are decoded in groups that
    fit the device's free memory, each group's all-padding columns dropped, by ``model``'s decoder in
    ``decoders`` (the caller keeps them between calls: a call starts from the previous one's cache)."""
    decoder = decoders.of(model)
    rows_done = StopStrings(tokenizer, stop_strings) if stop_strings else None
    pad_id = tokenizer.pad_token_id
    out, start = [], 0
    while start < len(ids):
        rows = decoders.rows_that_fit(decoder, ids.shape[1] + max_new_tokens, _VOCAB_BYTES * len(tokenizer), len(ids) - start)
        mask = attention_mask[start : start + rows]
        first = int((mask == 0).sum(1).min())
        out.append(decoder.generate(ids[start : start + rows, first:], mask[:, first:], max_new_tokens=max_new_tokens, stop_ids=list(stop_ids),
                                    pad_id=pad_id, rows_done=rows_done))
        start += rows
    return torch.cat(out)


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Token ids as one left-padded batch: what the tokenizer's own padding (``padding_side="left"``) gives, from
    ids already tokenized, so a call tokenizes its prompts once however many batches it cuts them into."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
    return {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}


def chat_prompts(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[Message]]) -> list[list[int]]:
    """Each conversation's prompt ids (the chat template, then the tokenizer), each distinct conversation rendered
    and tokenized once: a vote's k samples of a question share one, and tokenizing is most of a call's host time
    before its first batch (``benchmarks/bench_prompts.py``). Rows that share a conversation share its list."""
    place: dict[tuple[tuple[tuple[str, str], ...], ...], int] = {}  # a conversation's messages -> its place in distinct
    distinct: list[Sequence[Message]] = []
    which: list[int] = []  # per conversation: its place in distinct
    for c in conversations:
        key = tuple(tuple(sorted(m.items())) for m in c)
        if key not in place:
            place[key] = len(distinct)
            distinct.append(c)
        which.append(place[key])
    texts = [tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in distinct]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [ids[n] for n in which]


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
    decoders: Decoders | None = None,
    report: Report | None = None,
) -> list[Completion]:
    """Replies to every conversation, in input order. ``max_batch`` caps the rows of one batch. ``report``
    hears how far the call is, every few decode steps (progress for the people watching a shard), and after
    each batch how fast its prefill and decode ran against their limits (``pipeline.engine.roofline``).
    ``decoders``: the static decoders the caller keeps between calls, made with its ``DecoderOptions`` (a
    turn starts from the model's previous one); None: new ones with the default options, for this call alone."""
    if not conversations:
        return []
    if temperature > 0 and seeds is None:
        raise ValueError("sampling (temperature > 0) needs one seed per row")
    called = time.perf_counter()
    tokenizer = chat.tokenizer
    prompts = chat_prompts(tokenizer, conversations)  # once: each batch is padded from these
    lengths = [len(ids) for ids in prompts]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    chosen = pick_engine(chat, engine)
    if decoders is None:
        decoders = Decoders(DecoderOptions())
    decoder = decoders.of(chat.model) if chosen == "static" else None
    stop = torch.tensor(chat.stop_ids)
    results: dict[int, Completion] = {}
    tokens_done = 0  # tokens of the finished batches, for the progress report
    timings = Timings()  # the static decoder's batches, summed
    start = 0
    while start < len(order):
        rows = min(max_batch or len(order), len(order) - start)
        if decoder is not None:  # the cache of the batch's longest prompt must fit in free memory
            longest = lengths[order[start + rows - 1]] + max_new_tokens
            rows = decoders.rows_that_fit(decoder, longest, _VOCAB_BYTES * len(tokenizer), rows)
        chunk = order[start : start + rows]
        start += rows
        batch = left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, chat.device)
        chunk_seeds = [seeds[i] for i in chunk] if seeds is not None else None
        on_step = _chunk_report(report, len(results), tokens_done, len(chunk), len(order), max_new_tokens)
        started = time.perf_counter()
        if decoder is not None:
            new_tokens = decoder.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens, stop_ids=chat.stop_ids,
                                          pad_id=tokenizer.pad_token_id, temperature=temperature, seeds=chunk_seeds, on_step=on_step)
        else:
            new_tokens = _generate(chat, batch, max_new_tokens, temperature, chunk_seeds, on_step)
        seconds = (time.perf_counter() - started) / len(chunk)
        for i, row in zip(chunk, new_tokens):
            results[i] = _completion(chat, row, stop, seconds)
            tokens_done += results[i].tokens
        if decoder is not None:
            timings.add(decoder.last)
            timings.batch_rows.append(len(chunk))
            timings.call_seconds = time.perf_counter() - called
        if report is not None:
            detail = timings.describe() if decoder is not None else "prefill and decode not timed apart (transformers' generate)"
            report(len(results), tokens_done, len(results) / len(order), detail)
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
    with repeatable_attention():  # PyTorch's own pick on an H100, cuDNN's attention, does not repeat its tokens
        output = chat.model.generate(**batch, generation_config=config, logits_processor=processors, stopping_criteria=watch)
    return output[:, batch["input_ids"].shape[1] :].cpu()
