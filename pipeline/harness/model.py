"""lm-eval's HFLM around a model loaded by the suite's own loader, telling the task's progress how far
lm-eval's batches have come (lm-eval's own progress bar goes only to submitit's stderr file)."""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from pipeline.config import project_path
from pipeline.models.device import pick_device
from pipeline.models.loading import load_chat_model
from pipeline.models.registry import load_registry, resolve_model
from pipeline.progress import Phase


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
        out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        if self.phase is not None:
            self.answered += context.shape[0]
            self.tokens += int((out[:, context.shape[1] :] != self.tokenizer.pad_token_id).sum())
            self.phase.update(self.answered, self.tokens)
        return out


def harness_model(config: dict[str, Any], key: str, threads: int) -> WatchedHFLM:
    """lm-eval's HFLM around a model loaded by the suite's loader (the same path the debate uses)."""
    torch.set_num_threads(threads)
    spec = resolve_model(f"models.{key}", config["models"][key], load_registry(), config["results_dir"])
    device = pick_device()
    loaded = load_chat_model(spec, project_path(config["paths"]["model_cache"]), config["models"]["dtype"], device)
    batch = config["eval"]["batch_size"]
    if device.type == "cpu" and str(batch).startswith("auto"):
        batch = int(config["eval"]["cpu_batch_size"])
    return WatchedHFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch, max_batch_size=int(config["eval"]["max_batch_size"]))
