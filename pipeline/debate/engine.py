"""The debate engine: all open debates advance together, one batched generate per turn.

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
        """Every problem, in groups of at most ``batch_size`` debates admitted one after the other. A group's
        baselines run (``batch_size`` rows a batch), then its debates join those still open from earlier groups for
        one round: each turn is one batch over every open debate, whatever its round (cut only where the device's
        memory runs out). So the few debates that reach rounds 2 and 3 ride along with the next group's first round
        instead of running alone at a few dozen rows, each a decode as long as the longest reply. Open debates: at
        most the last ``max_rounds`` groups' (what a killed job loses)."""
        size = self.settings.batch_size
        groups = (len(problems) + size - 1) // size
        baselines: dict[int, dict[str, Any]] = {}
        open_debates: list[Debate] = []
        for n, start in enumerate(range(0, len(problems), size)):
            self.group = f"group {n + 1}/{groups}: " if groups > 1 else ""
            group = problems[start : start + size]
            baselines.update(self._baselines(group))
            open_debates = self._round(open_debates + [Debate(p) for p in group], baselines, emit)
        self.group = "last groups: " if groups > 1 else ""
        while open_debates:
            open_debates = self._round(open_debates, baselines, emit)

    def _generate(self, speaker: str, convs: list[list[Message]], seeds: list[int], temperature: float, phase: str,
                  max_batch: int | None) -> list[Completion]:
        """One batched generation, reported as one phase of the task's progress; ``max_batch`` rows a batch at most
        (None: all of them, as the device's memory allows)."""
        with progress.current().phase(f"{self.group}{phase}", len(convs), "rows") as watched:
            return generate_chat(
                self.models[speaker],
                convs,
                max_new_tokens=self.settings.max_new_tokens,
                temperature=temperature,
                seeds=seeds,
                max_batch=max_batch,
                engine=self.settings.engine,
                decoders=self.decoders,
                report=watched.update,
            )

    def _round(self, open_debates: list[Debate], baselines: dict[int, dict[str, Any]],
               emit: Callable[[dict[str, Any]], None]) -> list[Debate]:
        """One round of every open debate, each at its own round: model a's turn over all of them, then model b's
        over those still open. A debate ends when the latest answers agree or after its ``max_rounds``-th round
        (its record is emitted then); returns those still open."""
        s = self.settings
        for speaker in SPEAKERS:
            if not open_debates:
                break
            rounds = [len(d.turns) // len(SPEAKERS) + 1 for d in open_debates]
            convs = [conversation(speaker, d, s) for d in open_debates]
            seeds = [row_seed(self.seed, d.problem.index, "debate", r, speaker) for d, r in zip(open_debates, rounds)]
            first, last = min(rounds), max(rounds)
            named = f"debate round {first}" if first == last else f"debate rounds {first}-{last}"
            completions = self._generate(speaker, convs, seeds, s.temperature, f"{named}, model {speaker}", None)
            for debate, r, completion in zip(open_debates, rounds, completions):
                debate.turns.append(_turn(speaker, self.models[speaker], r, completion))
                debate.agreed = agree(debate.turns)
            finished = [d for d, r in zip(open_debates, rounds) if d.agreed or (r == s.max_rounds and speaker == SPEAKERS[-1])]
            for debate in finished:
                emit(self._record(debate, baselines.pop(debate.problem.index)))
            ended = {id(d) for d in finished}
            open_debates = [d for d in open_debates if id(d) not in ended]
            log.info("%s, model %s: %d debates (%s), %d tokens, %d finished, %d still open", named, speaker, len(completions),
                     ", ".join(f"round {r}: {rounds.count(r)}" for r in range(first, last + 1)), sum(c.tokens for c in completions),
                     len(finished), len(open_debates))
        return open_debates

    def _baselines(self, problems: Sequence[Problem]) -> dict[int, dict[str, Any]]:
        """Model b alone (model a's first debate turn is already its solo answer) and the votes."""
        s = self.settings
        out: dict[int, dict[str, Any]] = {p.index: {"solo": {}, "vote": {}} for p in problems}
        fresh = [Debate(p) for p in problems]
        if s.baselines.solo:
            convs = [conversation("b", d, s) for d in fresh]
            seeds = [row_seed(self.seed, p.index, "solo", "b") for p in problems]
            for p, c in zip(problems, self._generate("b", convs, seeds, s.temperature, "model b alone", s.batch_size)):
                out[p.index]["solo"]["b"] = _reply(c)
            log.info("solo baseline, model b: %d problems", len(problems))
        for speaker in s.baselines.vote_models:
            rows = [(d, j) for d in fresh for j in range(s.vote_samples)]
            convs = [conversation(speaker, d, s) for d, _ in rows]
            seeds = [row_seed(self.seed, d.problem.index, "vote", speaker, j) for d, j in rows]
            completions = self._generate(speaker, convs, seeds, s.baselines.vote_temperature, f"vote of {s.vote_samples}, model {speaker}",
                                         s.batch_size)
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
