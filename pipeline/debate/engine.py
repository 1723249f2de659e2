"""The debate engine: the open debates advance together, one batched generate per turn.

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
        """Every problem: baselines for a group of at most ``batch_size`` problems at a time, then turns of at most
        ``batch_size`` open debates, emitting records as debates end. With ``refill`` a turn takes in the next
        problems (their group's baselines run when none wait) wherever debates ended, so the later rounds do not run
        a few debates at a time; without it each group runs its rounds to the end before the next starts. Every turn
        starts at model a (debates join before it), so a turn's debates may be in different rounds."""
        s = self.settings
        size = s.batch_size
        groups = (len(problems) + size - 1) // size
        waiting = list(problems)  # problems whose baselines have not run
        ready: list[Debate] = []  # debates whose baselines ran, not yet started
        baselines: dict[int, dict[str, Any]] = {}
        open_debates: list[Debate] = []
        group = 0
        while waiting or ready or open_debates:
            if s.refill or not open_debates:
                room = size - len(open_debates)
                if len(ready) < room and waiting:
                    group += 1
                    self.group = f"group {group}/{groups}: " if groups > 1 else ""
                    batch, waiting = waiting[:size], waiting[size:]
                    baselines.update(self._baselines(batch))
                    ready += [Debate(p) for p in batch]
                open_debates, ready = open_debates + ready[:room], ready[room:]
            for speaker in SPEAKERS:
                open_debates = self._turn(speaker, open_debates, baselines, emit)
                if not open_debates:
                    break

    def _turn(self, speaker: str, debates: list[Debate], baselines: dict[int, dict[str, Any]],
              emit: Callable[[dict[str, Any]], None]) -> list[Debate]:
        """One batched turn of ``speaker`` over the debates; emits those that end. Returns those still open."""
        s = self.settings
        rounds = [len(d.turns) // 2 + 1 for d in debates]  # turns alternate a, b from a
        named = f"round {rounds[0]}" if min(rounds) == max(rounds) else f"rounds {min(rounds)}-{max(rounds)}"
        convs = [conversation(speaker, d, s) for d in debates]
        seeds = [row_seed(self.seed, d.problem.index, "debate", r, speaker) for d, r in zip(debates, rounds)]
        completions = self._generate(speaker, convs, seeds, s.temperature, f"debate {named}, model {speaker}")
        still_open = []
        for debate, round_no, completion in zip(debates, rounds, completions):
            debate.turns.append(_turn(speaker, self.models[speaker], round_no, completion))
            debate.agreed = agree(debate.turns)
            if debate.agreed or (round_no == s.max_rounds and speaker == SPEAKERS[-1]):
                emit(self._record(debate, baselines.pop(debate.problem.index)))
            else:
                still_open.append(debate)
        log.info("%s, model %s: %d debates, %d tokens, %d finished, %d still open", named, speaker, len(debates),
                 sum(c.tokens for c in completions), len(debates) - len(still_open), len(still_open))
        return still_open

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
