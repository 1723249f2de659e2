"""Who owns the memory the static decoders take: a job's ``Decoders``, one decoder per model.

A decoder keeps its KV cache and graphs between calls (and with them its rows' prefixes, which the model's
next turn starts from). Two models on one GPU (``debate.devices=shared``) each want theirs: while a call's
rows fit beside the other model's cache both stay, otherwise the other decoder gives its memory back and the
models take turns with it. The owner is made by whoever runs the decoders (the debate engine, lm-eval's
model for the eval stage) and handed to each generation call; nothing is kept at module level, so two jobs
in one process (tests, benchmarks) never free or reuse each other's decoders.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from transformers import PreTrainedModel

from pipeline.engine import DecoderOptions
from pipeline.engine.decode import StaticDecoder
from pipeline.engine.kv_cache import round_columns

log = logging.getLogger(__name__)

# Activation memory kept free beside the caches (prefill chunk, logits, sampling noise), in bytes.
RESERVE_BYTES = 3 * 2**30


class Decoders:
    """The static decoders of one job, all made with one ``DecoderOptions``, and the memory they share on each
    device."""

    def __init__(self, options: DecoderOptions) -> None:
        self.options = options
        self._by_model: dict[PreTrainedModel, StaticDecoder] = {}

    def of(self, model: PreTrainedModel) -> StaticDecoder:
        """``model``'s decoder, made at its first call and kept for the next (its cache, graphs and prefixes)."""
        decoder = self._by_model.get(model)
        if decoder is None:
            decoder = self._by_model[model] = StaticDecoder(model, self.options)
        return decoder

    def __iter__(self) -> Iterator[StaticDecoder]:
        """The decoders made so far (benchmarks read their counters)."""
        return iter(list(self._by_model.values()))

    def rows_that_fit(self, decoder: StaticDecoder, columns: int, vocab_rows_cost: int, wanted: int) -> int:
        """How many rows of ``columns`` fit in ``decoder``'s device's free memory now, up to ``wanted`` (no limit
        on a CPU). The other decoders on that device keep their caches (and their rows' prefixes for the next
        turn) while ``wanted`` rows fit beside them; otherwise they give them back: models take turns."""
        device = decoder.device
        if device.type != "cuda":
            return wanted
        per_row = round_columns(columns) * decoder.cache.bytes_per_token() + vocab_rows_cost

        def fitting() -> int:
            free = torch.cuda.mem_get_info(device)[0] + decoder.cache.held_bytes()
            return int((free - RESERVE_BYTES) // per_row)

        rows = fitting()
        others = [d for d in self._by_model.values() if d is not decoder and d.device == device and d.cache.layers is not None]
        if rows < wanted and others:
            for other in others:
                log.info("%s gives its cache back (%.1f GiB): %d rows of %s fit beside it, %d wanted", other.name,
                         other.cache.held_bytes() / 2**30, max(rows, 0), decoder.name, wanted)
                other.release()
            torch.cuda.empty_cache()
            rows = fitting()
        log.debug("%s: %d rows of %d columns fit, %d wanted", decoder.name, rows, columns, wanted)
        return max(1, min(rows, wanted))
