"""lm-eval's HFLM around a model loaded by the suite's own loader, telling the task's progress how far
lm-eval's batches have come (lm-eval's own progress bar goes only to submitit's stderr file), and decoding
through the suite's static decoder where ``eval.engine`` says so."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from pipeline.config import project_path
from pipeline.engine import DecoderOptions
from pipeline.engine.forward import repeatable_attention
from pipeline.engine.generation import continue_prompts, greedy_config, pick_engine
from pipeline.engine.memory import Decoders
from pipeline.models.device import pick_device
from pipeline.models.loading import load_chat_model
from pipeline.models.registry import load_registry, resolve_model
from pipeline.progress import Phase
from pipeline.run_config import RunConfig

log = logging.getLogger(__name__)

# The static decoder as lm-eval's requests need it: without batch invariance, the same sums as the reference
# (transformers' generate); the other knobs at their defaults (eval.* has none of them).
EVAL_DECODER = DecoderOptions(batch_invariant=False)


class WatchedHFLM(HFLM):
    """HFLM that counts the questions its generation batches have answered into a progress phase (one
    request per question: GSM8K's tasks generate once per question)."""

    phase: Phase | None = None
    answered = 0
    tokens = 0

    def watch(self, phase: Phase) -> None:
        self.phase, self.answered, self.tokens = phase, 0, 0

    def finished(self, questions: int) -> None:
        """A chunk is recorded: the count restarts from the questions on file (lm-eval may batch past them)."""
        self.answered = questions
        if self.phase is not None:
            self.phase.update(questions, self.tokens)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        out = self._continue(context, max_length, stop, **generation_kwargs)
        if self.phase is not None:
            self.answered += context.shape[0]
            self.tokens += int((out[:, context.shape[1] :] != self.tokenizer.pad_token_id).sum())
            self.phase.update(self.answered, self.tokens)
        return out

    def _continue(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        """One batch's prompts and their continuations, as ``generate`` returns them: HFLM's own, on the attention
        backends whose results repeat (``repeatable_attention``: on an H100 PyTorch's own pick, cuDNN's, gave
        other tokens in 228 of 256 greedy rows from the same inputs)."""
        with repeatable_attention():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """HFLM's logits for scoring requests (the tasks beside GSM8K that score choices), on the same backends."""
        with repeatable_attention():
            return super()._model_call(inps, attn_mask, labels)


class StaticHFLM(WatchedHFLM):
    """WatchedHFLM whose batches are continued by the static decoder (``eval.engine=static`` or ``auto``).

    Only the continuation of a batch changes: lm-eval's requests, their grouping and batches, the prompt
    text (few-shot examples, chat template, system instruction), its encoding and truncation, the decoding
    of the tokens and the cut at the first stop string are HFLM's own. The decoder stops a row on the ids
    ``generate`` stops on (the model's generation config) and lets it leave the batch once it has written
    one of the request's stop strings (``generate`` runs every row on until all have one, then HFLM cuts
    the text there: the same response). A request the decoder cannot reproduce (sampling, a repetition
    penalty, beams: anything but plain greedy decoding) goes to ``generate`` under ``auto`` and is an
    error under ``static``."""

    def __init__(self, *args: Any, fallback: bool, **kwargs: Any) -> None:
        """``fallback`` (``auto``): requests the decoder cannot reproduce go to ``generate``, each reason logged once."""
        super().__init__(*args, **kwargs)
        self.fallback, self._warned = fallback, set[str]()
        # The model's decoder, kept from batch to batch (a batch starts from the cache of the one before).
        self.decoders = Decoders(EVAL_DECODER)

    def _continue(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        kwargs = dict(generation_kwargs)
        mask = kwargs.pop("attention_mask")
        # HFLM's reading of a request: no temperature means 0, and temperature 0 with do_sample unset is greedy.
        kwargs.setdefault("temperature", 0.0)
        if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
            kwargs["do_sample"] = False
        config, reason = greedy_config(self.model, kwargs)
        if reason is not None:
            if not self.fallback:
                raise ValueError(f"eval.engine=static cannot decode this request: {reason}; use eval.engine=generate (or auto)")
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("eval.engine=auto: %s, so these requests go through transformers' generate", reason)
            return super()._continue(context, max_length, stop, **generation_kwargs)
        eos = config.eos_token_id
        stop_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        new = continue_prompts(self.model, self.tokenizer, context, mask, max_new_tokens=max_length - context.shape[1],
                               stop_ids=stop_ids, stop_strings=stop, decoders=self.decoders)
        return torch.cat([context.cpu(), new], dim=1)


def harness_model(config: RunConfig, key: str, threads: int) -> WatchedHFLM:
    """lm-eval's HFLM around a model loaded by the suite's loader (the same path the debate uses), with the
    engine ``eval.engine`` picks for it (``auto``: the static decoder where it supports the model)."""
    torch.set_num_threads(threads)
    spec = resolve_model(f"models.{key}", getattr(config.models, key), load_registry(), config.results_dir)
    device = pick_device()
    loaded = load_chat_model(spec, project_path(config.paths.model_cache), config.models.dtype, device)
    batch = config.eval.batch_size
    if device.type == "cpu" and str(batch).startswith("auto"):
        batch = config.eval.cpu_batch_size
    engine = config.eval.engine
    static = pick_engine(loaded, engine) == "static"
    if static and str(batch).startswith("auto"):
        batch = config.eval.max_batch_size
    options = {"pretrained": loaded.model, "tokenizer": loaded.tokenizer, "batch_size": batch, "max_batch_size": config.eval.max_batch_size}
    lm = StaticHFLM(**options, fallback=engine == "auto") if static else WatchedHFLM(**options)
    log.info("%s: lm-eval decodes through %s", loaded.name, "the static decoder" if static else "transformers' generate")
    return lm
