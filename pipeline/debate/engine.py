"""The debate engine: all open debates of a group advance together, one batched generate per turn.

Round r is a turn of model a, then a turn of model b. Each model sees the conversation so far from its
own side: its earlier replies as assistant messages, the other model's replies quoted in user messages.
A debate ends as soon as both models' latest answers agree numerically (it leaves the batch), or after
``max_rounds``. The baselines a reviewer asks for run in the same engine: each model alone, and a
majority vote of k sampled answers per model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from pipeline import progress
from pipeline.data import Problem
from pipeline.debate.scoring import agree, reply, score_record
from pipeline.debate.settings import SPEAKERS, DebateSettings
from pipeline.engine.generation import Completion, Message, generate_chat
from pipeline.engine.memory import Decoders
from pipeline.engine.sampling import row_seed
from pipeline.models.loading import ChatModel

log = logging.getLogger(__name__)


@dataclass
class Debate:
    """One problem's debate in progress."""

    problem: Problem
    turns: list[dict[str, Any]] = field(default_factory=list)
    agreed: bool = False


def conversation(speaker: str, debate: Debate, settings: DebateSettings) -> list[Message]:
    """The debate so far as ``speaker`` sees it; consecutive user messages are merged (templates alternate)."""
    messages: list[Message] = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages.append({"role": "user", "content": settings.prompts.solve.format(question=debate.problem.question)})
    for turn in debate.turns:
        if turn["model"] == speaker:
            messages.append({"role": "assistant", "content": turn["text"]})
        else:
            quoted = settings.prompts.review.format(other=turn["text"], question=debate.problem.question)
            if messages[-1]["role"] == "user":
                messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + quoted}
            else:
                messages.append({"role": "user", "content": quoted})
    return messages


def _reply(completion: Completion) -> dict[str, Any]:
    return reply(completion.text, completion.stopped, completion.tokens, completion.seconds)


def _turn(speaker: str, model: ChatModel, round_no: int, completion: Completion) -> dict[str, Any]:
    return {"model": speaker, "name": model.name, "round": round_no, **_reply(completion)}


class DebateEngine:
    """Runs debates and baselines for groups of problems, calling ``emit`` with each finished record."""

    def __init__(self, models: Mapping[str, ChatModel], settings: DebateSettings, seed: int) -> None:
        self.models = models
        self.settings = settings
        self.seed = seed
        # The two models' static decoders, kept from turn to turn (each turn starts from the model's previous
        # one) and taking turns with a shared GPU's memory.
        self.decoders = Decoders(settings.decoder_options)
        # Named in progress lines when a shard's problems run in several groups (``debate.batch_size``).
        self.group = ""

    def run_all(self, problems: Sequence[Problem], emit: Callable[[dict[str, Any]], None]) -> None:
        """Every problem, in groups of at most ``batch_size`` debates, one group after the other."""
        size = self.settings.batch_size
        groups = (len(problems) + size - 1) // size
        for n, start in enumerate(range(0, len(problems), size)):
            self.group = f"group {n + 1}/{groups}: " if groups > 1 else ""
            self.run(problems[start : start + size], emit)

    def _generate(self, speaker: str, convs: list[list[Message]], seeds: list[int], temperature: float, phase: str,
                  max_batch: int | None = None) -> list[Completion]:
        """One batched generation, reported as one phase of the task's progress; in batches of at most ``max_batch``
        rows (default: ``batch_size``)."""
        with progress.current().phase(f"{self.group}{phase}", len(convs), "rows") as watched:
            return generate_chat(
                self.models[speaker],
                convs,
                max_new_tokens=self.settings.max_new_tokens,
                temperature=temperature,
                seeds=seeds,
                max_batch=max_batch or self.settings.batch_size,
                engine=self.settings.engine,
                decoders=self.decoders,
                report=watched.update,
            )

    def run(self, problems: Sequence[Problem], emit: Callable[[dict[str, Any]], None]) -> None:
        """Everything for a group of problems: baselines first, then the debate, emitting records as debates end."""
        baselines = self._baselines(problems)
        s = self.settings
        open_debates = [Debate(p) for p in problems]
        for round_no in range(1, s.max_rounds + 1):
            for speaker in SPEAKERS:
                if not open_debates:
                    return
                convs = [conversation(speaker, d, s) for d in open_debates]
                seeds = [row_seed(self.seed, d.problem.index, "debate", round_no, speaker) for d in open_debates]
                completions = self._generate(speaker, convs, seeds, s.temperature, f"debate round {round_no}, model {speaker}")
                for debate, completion in zip(open_debates, completions):
                    debate.turns.append(_turn(speaker, self.models[speaker], round_no, completion))
                    debate.agreed = agree(debate.turns)
                finished = [d for d in open_debates if d.agreed or (round_no == s.max_rounds and speaker == SPEAKERS[-1])]
                for debate in finished:
                    emit(self._record(debate, baselines[debate.problem.index]))
                open_debates = [d for d in open_debates if d not in finished]
                tokens = sum(c.tokens for c in completions)
                log.info(
                    "round %d, model %s: %d debates, %d tokens, %d finished, %d still open",
                    round_no, speaker, len(completions), tokens, len(finished), len(open_debates),
                )

    def _baselines(self, problems: Sequence[Problem]) -> dict[int, dict[str, Any]]:
        """Model b alone (model a's first debate turn is already its solo answer) and the votes."""
        s = self.settings
        out: dict[int, dict[str, Any]] = {p.index: {"solo": {}, "vote": {}} for p in problems}
        fresh = [Debate(p) for p in problems]
        if s.baselines.solo:
            convs = [conversation("b", d, s) for d in fresh]
            seeds = [row_seed(self.seed, p.index, "solo", "b") for p in problems]
            for p, c in zip(problems, self._generate("b", convs, seeds, s.temperature, "model b alone")):
                out[p.index]["solo"]["b"] = _reply(c)
            log.info("solo baseline, model b: %d problems", len(problems))
        for speaker in s.baselines.vote_models:
            rows = [(d, j) for d in fresh for j in range(s.vote_samples)]
            convs = [conversation(speaker, d, s) for d, _ in rows]
            seeds = [row_seed(self.seed, d.problem.index, "vote", speaker, j) for d, j in rows]
            completions = self._generate(speaker, convs, seeds, s.baselines.vote_temperature, f"vote of {s.vote_samples}, model {speaker}",
                                         s.vote_batch_rows)
            for n, p in enumerate(problems):
                mine = completions[n * s.vote_samples : (n + 1) * s.vote_samples]  # rows are grouped by problem, k each
                out[p.index]["vote"][speaker] = {
                    "replies": [_reply(c) for c in mine],
                    "tokens": sum(c.tokens for c in mine),
                    "seconds": round(sum(c.seconds for c in mine), 4),
                }
            log.info("vote baseline, model %s: %d problems x %d samples", speaker, len(problems), s.vote_samples)
        return out

    def _record(self, debate: Debate, baselines: dict[str, Any]) -> dict[str, Any]:
        p = debate.problem
        record = {"index": p.index, "question": p.question, "gold": p.gold, "turns": debate.turns,
                  "solo": {SPEAKERS[0]: {}, **baselines["solo"]},
                  "vote": baselines["vote"]}
        return score_record(record, self.settings.final_answer)
