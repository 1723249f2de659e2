"""Batched chat generation: many conversations, one ``generate`` call, each row stopping on its own.

This is the engine the debate spends its time in. Rows are rendered with the model's own chat template,
sorted by length (less padding), left-padded and generated together; generation stops per row on any of
the model's end-of-turn ids. Sampling is seeded per row (Gumbel-max with a row's own random stream), so a
question's sampled answer does not depend on which other questions share its batch: a resumed shard
reproduces an undisturbed one.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from pipeline.models.loading import ChatModel

Message = dict[str, str]


@dataclass(frozen=True)
class Completion:
    """One row's reply: its text, the tokens it generated (stop token included), and its share of the wall time."""

    text: str
    tokens: int
    seconds: float
    stopped: bool


def row_seed(*parts: object) -> int:
    """A stable 63-bit seed from any identifying parts (Python's ``hash`` is salted per process)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) * 2654435761 % (2**63 - 1)


class SeededGumbelSampler(LogitsProcessor):
    """Temperature sampling where row i draws from its own generator seeded by (seeds[i], step).

    argmax(logits / T + Gumbel noise) is an exact sample of softmax(logits / T), so decoding greedily
    after this processor samples, while keeping every row's draws independent of the batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for row, seed in enumerate(self.seeds):
            generator = torch.Generator(device=scores.device).manual_seed((seed + self.step * 1_000_003) % (2**63 - 1))
            uniform[row].uniform_(1e-10, 1.0 - 1e-7, generator=generator)
        self.step += 1
        return scores.float() / self.temperature - torch.log(-torch.log(uniform))


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
) -> list[Completion]:
    """Replies to every conversation, in input order. ``max_batch`` splits very large calls (memory)."""
    if not conversations:
        return []
    order = list(range(len(conversations)))
    step = max_batch or len(order)
    if step < len(order):  # several batches: group similar lengths so that padding does not eat them
        order.sort(key=lambda i: len(chat.tokenizer.apply_chat_template(conversations[i], add_generation_prompt=True, tokenize=False)))
    results: dict[int, Completion] = {}
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        chunk_seeds = [seeds[i] for i in chunk] if seeds is not None else None
        for i, completion in zip(chunk, _generate_batch(chat, [conversations[i] for i in chunk], max_new_tokens, temperature, chunk_seeds)):
            results[i] = completion
    return [results[i] for i in range(len(conversations))]


@torch.inference_mode()
def _generate_batch(
    chat: ChatModel,
    conversations: list[Sequence[Message]],
    max_new_tokens: int,
    temperature: float,
    seeds: list[int] | None,
) -> list[Completion]:
    tokenizer = chat.tokenizer
    batch = tokenizer.apply_chat_template(
        [list(c) for c in conversations],
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    ).to(chat.device)
    processors = LogitsProcessorList()
    if temperature > 0:
        if seeds is None:
            raise ValueError("sampling (temperature > 0) needs one seed per row")
        processors.append(SeededGumbelSampler(seeds, temperature))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=chat.stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    started = time.perf_counter()
    output = chat.model.generate(**batch, generation_config=config, logits_processor=processors)
    seconds = (time.perf_counter() - started) / len(conversations)
    new_tokens = output[:, batch["input_ids"].shape[1] :].cpu()
    stop = torch.tensor(chat.stop_ids)
    completions = []
    for row in new_tokens:
        count, stopped = _count_tokens(row, stop, tokenizer.pad_token_id)
        text = tokenizer.decode(row[:count], skip_special_tokens=True).strip()
        completions.append(Completion(text=text, tokens=count, seconds=seconds, stopped=stopped))
    return completions
