"""The debate stage's settings (``debate.*``): each knob once, with its type, default, help and range."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError
from pipeline.engine import ENGINES, KERNELS, DecoderOptions
from pipeline.settings import PAIR, knob, section

# The switch that makes the batching settings run-only (``run_only_when``): ``batch_invariant=true``.
INVARIANT = "batch_invariant"

# The debaters, in the order they speak: the pair.
SPEAKERS = PAIR

SOLVE_PROMPT = (
    "Solve the following math problem step by step, in words and arithmetic (no code): write out every calculation "
    "before its result. After the reasoning, end with a last line of the form \"#### <number>\" (the number alone, "
    "no units).\n\nProblem: {question}"
)
REVIEW_PROMPT = (
    "Another agent's solution to the same problem follows. It may be wrong.\n\n{other}\n\nDo not copy their answer. "
    "Solve the problem again yourself, step by step, in words and arithmetic (no code), recomputing every number; if "
    "your result differs from theirs, say which step of theirs is wrong. End with a last line of the form \"#### <number>\"."
)


@dataclass(frozen=True)
class Prompts:
    """The messages. The prompts ask for the working before the answer, and ask a reviewer to recompute rather
    than trust: with a bare "end with #### N", small models answer with the number alone, and in review echo the
    other model's number (agreement by copying; the reducer's agreement table tells it from correction)."""

    solve: str = knob(SOLVE_PROMPT, "A model's first message; {question} is the problem.",
                      format_fields=["question"], placeholders=["question"])
    review: str = knob(REVIEW_PROMPT, "How the other model's reply is quoted to a model; {other} is that reply "
                                      "({question}, the problem, may be quoted too).",
                       format_fields=["other", "question"], placeholders=["other"])


@dataclass(frozen=True)
class Baselines:
    """Baselines run in the same engine and land in the same table."""

    solo: bool = knob(True, "Each model alone: its answer to the problem with no other model in the loop.")
    vote_k: int | None = knob(None, "Majority vote over k sampled answers per model; null: the debate's full turn "
                                    "budget (2 x max_rounds), so a vote spends as many generations as a debate run to the end.",
                              minimum=1)
    vote_temperature: float = knob(0.7, "Sampling temperature of the vote's answers.", minimum=0.0)
    vote_models: tuple[str, ...] = knob(["a", "b"], "Which models get a vote row ([] turns the vote off).", choices=SPEAKERS)


@dataclass(frozen=True)
class DebateSettings:
    """Two models take turns on each problem. A round is one turn of model a then one of model b; the debate
    stops when both models' latest answers agree numerically, or after ``max_rounds``."""

    # ``run_only_when=INVARIANT``: how the work is batched, replayed and placed, measured to change no token with
    # ``batch_invariant=true`` (tests/test_invariance.py on the CPU, benchmarks/invariance.py on an H100) and up
    # to 123 of 256 greedy rows without it (the H100's fast kernels; docs/performance.md), so they are run-only
    # only in a run made with ``batch_invariant=true``. ``engine`` and ``kernels`` are never run-only: another
    # engine or other kernels sum in another order and change answers (kernels=torch changed 249 of 1,319 greedy
    # answers on an H200), and so does ``batch_invariant`` itself.

    max_rounds: int = knob(3, "Rounds at most (a round: model a's turn, then model b's).", minimum=1)
    max_new_tokens: int = knob(256, "Tokens a model may write in one turn; generation also stops on each model's "
                                    "end-of-turn tokens.", minimum=1)
    temperature: float = knob(0.0, "0 = greedy. Above 0: seeded sampling per row (see `seed`).", minimum=0.0)
    batch_size: int = knob(256, "Debates of a shard that advance together: every turn is one batched generate over "
                                "the group's open debates. Bounds memory, and the work a killed job loses.", minimum=1,
                          run_only_when=INVARIANT)
    vote_batch_rows: int | None = knob(1536, "Rows of one batched generation of a vote at most (the k samples of each of "
                                             "the group's questions, sorted by prompt length); null: batch_size, as runs made "
                                             "before the sixteenth session had it. Each batch decodes until its longest sample "
                                             "ends, so a vote of k in batches of batch_size runs k long tails of few rows one "
                                             "after the other; 1536 runs a default group's vote of 6 (256 x 6) as one batch and "
                                             "one tail, the memory permitting (free memory splits a batch further). The default "
                                             "pair's run on an H100: 126 s against 167 s, the same accuracy, and the run repeats "
                                             "(docs/performance.md). Without batch_invariant=true a row's tokens follow its batch: "
                                             "another value changes the vote's samples and, through reuse_kv, the debate's turns.",
                                       minimum=1, run_only_when=INVARIANT, only_when_changed=True, earlier_default=None)
    refill: bool = knob(False, "As debates end, the next turn takes in the shard's next problems (their baselines run "
                               "a group of batch_size at a time), so every turn holds up to batch_size open debates of "
                               "any round, where otherwise each group of batch_size debates runs its rounds to the end "
                               "before the next group starts and its later rounds hold a few debates each. Fewer, fuller "
                               "turns where a turn's time follows its longest reply (a GPU); unmeasured on a GPU so far, "
                               "hence off (docs/performance.md). A killed job loses the debates open then and the problems "
                               "whose baselines ran but whose debates did not start (up to 2 x batch_size problems; off: "
                               "batch_size). Without batch_invariant=true another value changes the turns' batches and "
                               "so their tokens.", run_only_when=INVARIANT, only_when_changed=True)
    engine: str = knob("auto", "The decoding engine: static (preallocated KV cache, CUDA-graph decode steps; Llama- "
                               "and Qwen2-style models), generate (transformers' generate: any model), or auto (static "
                               "wherever it can run the model). Both give the same tokens.", choices=ENGINES)
    cuda_graphs: bool = knob(True, "Static engine: replay each decode step as a CUDA graph (GPU only); off = the same "
                                   "kernels launched one by one (for debugging).", run_only_when=INVARIANT)
    kernels: str = knob("auto", "Static engine: triton (fused Triton kernels; compute capability 8.0+, not a V100), "
                                "torch (PyTorch's kernels), or auto (triton wherever it can run).", choices=KERNELS)
    reuse_kv: bool = knob(True, "Static engine: a turn starts from the KV cache of the model's previous turn and "
                                "prefills only the new messages.", run_only_when=INVARIANT)
    prefill_tokens: int = knob(16384, "Static engine: prompts are prefilled in groups of rows of at most this many "
                                      "tokens (bounds the activation memory of long prompts).", minimum=1,
                              run_only_when=INVARIANT)
    batch_invariant: bool | None = knob(None, "Static engine: each row's numbers independent of its batch (its size, place "
                                              "and neighbours' padding, the prefill groups, CUDA graphs, an earlier turn's cache), "
                                              "so a question's record does not depend on the shard count, batch_size, a resume or "
                                              "the votes beside it. On a GPU it takes the Triton kernels (fixed-tile matmuls, "
                                              "attention in fixed pieces; 0 of 256 rows changed with the batching on an H100, "
                                              "38-55% slower in a 256-row benchmark, 23% on a whole run of the default pair); "
                                              "true is an error where it cannot hold (engine=generate, or on a GPU "
                                              "kernels=torch or a V100). false = kernels picked per batch shape (up to 123 of 256 "
                                              "greedy rows changed with the batching on an H100). null: on on a CPU, off on a GPU. "
                                              "Only true makes batch_size, vote_batch_rows, refill, cuda_graphs, reuse_kv, "
                                              "prefill_tokens and devices run-only (left out of the records' fingerprint, free to change on a resume); null "
                                              "counts as off for them, since the submitter cannot know the device a shard runs on "
                                              "(docs/performance.md).")
    devices: str = knob("auto", "Where the two models sit: shared (both on the job's first GPU), split (model a on the "
                                "first GPU, model b on the second: the job needs two), or auto (split when the job "
                                "sees two GPUs or more, else shared).", choices=("auto", "shared", "split"),
                       run_only_when=INVARIANT)
    final_answer: str = knob("last", "The answer of a debate that did not converge: the last turn's (last), or "
                                     "model a's / b's.", choices=("last", *SPEAKERS))
    system_prompt: str | None = knob(None, "A system message before every conversation (null: none).")
    prompts: Prompts = section(Prompts, "The messages.")
    baselines: Baselines = section(Baselines, "The baselines.")

    @property
    def vote_samples(self) -> int:
        """k of the vote: ``baselines.vote_k``, or the debate's full turn budget."""
        return self.baselines.vote_k or 2 * self.max_rounds

    @property
    def decoder_options(self) -> DecoderOptions:
        """The static engine's knobs above, as one object for the decoder."""
        return DecoderOptions(cuda_graphs=self.cuda_graphs, kernels=self.kernels, reuse_kv=self.reuse_kv,
                              prefill_tokens=self.prefill_tokens, batch_invariant=self.batch_invariant)

    def validate(self, prefix: str) -> None:
        """``batch_invariant=true`` takes the batching settings out of the records' fingerprint, so it must hold
        wherever a shard runs: transformers' generate (``engine=generate``) picks its kernels by the batch's
        shape. Where only the shard can tell (``kernels=torch`` on a GPU, a model ``auto`` hands to generate),
        the shard stops with an error (``debate.shard.check_invariant``, ``engine.forward.Forward``)."""
        if self.batch_invariant and self.engine == "generate":
            raise ConfigError(f"{prefix}.batch_invariant=true needs the static engine ({prefix}.engine=auto or static): "
                              f"transformers' generate picks its kernels by the batch's shape")
