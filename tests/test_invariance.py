"""On the CPU a question's record is a function of the question alone. A row's logits are the same bits
whatever its batch (its size, the row's place, its neighbours' padding, the prefill chunks, rows leaving
as they stop) and whether its keys and values came from a fresh prefill or from decode steps and the
previous turn's cache, in float32, bfloat16 and int8; and a debate's records do not depend on the shard
count, the batch size, or whether votes ran beside the solo rows."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from pipeline.data import load_problems
from pipeline.debate.engine import DebateEngine
from pipeline.debate.settings import DebateSettings
from pipeline.engine import DecoderOptions, decode, kernels
from pipeline.engine.decode import StaticDecoder
from pipeline.engine.forward import _fused
from pipeline.models.loading import ChatModel, load_chat_model
from pipeline.models.registry import load_registry
from pipeline.settings import build
from pipeline.shards import read_shard
from pipeline.stages import load_config
from pipeline.submit import submit
from tests.conftest import ROOT, run_interpreted, tiny_overrides, without_timings

PROBLEMS = load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", limit=8)
GPU = torch.cuda.is_available() and kernels.usable(torch.device("cuda")) is None


@pytest.fixture(scope="module", params=[("tiny-llama", "float32"), ("tiny-qwen2", "float32"), ("tiny-llama", "bfloat16"),
                                        ("tiny-qwen2", "int8")], ids=lambda p: "-".join(p))
def chat(request: pytest.FixtureRequest) -> ChatModel:
    torch.set_num_threads(1)
    name, dtype = request.param
    return load_chat_model(load_registry()[name], Path("/nonexistent"), dtype, torch.device("cpu"))


def _prompts(chat: ChatModel, count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, chat.model.config.vocab_size, (int(n),), generator=generator)
            for n in torch.randint(5, 40, (count,), generator=generator)]


def _left_padded(prompts: list[torch.Tensor], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts) + extra
    ids = torch.stack([F.pad(p, (width - len(p), 0)) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (width - len(p), 0)) for p in prompts])
    return ids, mask


@contextlib.contextmanager
def _spied() -> Iterator[dict[int, list[torch.Tensor]]]:
    """Every logits row the static decoder samples from, by the row's seed (greedy: the seed only names the row)."""
    seen: dict[int, list[torch.Tensor]] = defaultdict(list)
    sample = decode.sample_tokens

    def spy(logits: torch.Tensor, temperature: float, row_seeds: torch.Tensor, step: object, *how: object) -> torch.Tensor:
        for row, s in zip(logits, row_seeds.tolist()):
            seen[s].append(row.clone())
        return sample(logits, temperature, row_seeds, step, *how)

    decode.sample_tokens = spy
    try:
        yield seen
    finally:
        decode.sample_tokens = sample


def _logits(decoder: StaticDecoder, prompts: list[torch.Tensor], seeds: list[int], stop_ids: list[int], new_tokens: int,
            extra: int = 0, **kwargs) -> tuple[dict[int, list[torch.Tensor]], torch.Tensor]:
    """The logits rows of each row of one call (by seed), and its tokens."""
    ids, mask = _left_padded(prompts, extra)
    with _spied() as seen:
        out = decoder.generate(ids.to(decoder.device), mask.to(decoder.device), max_new_tokens=new_tokens, stop_ids=stop_ids, pad_id=0,
                               seeds=seeds, **kwargs)
    return seen, out


def _until_stop(row: torch.Tensor, stop_ids: list[int]) -> int:
    stops = torch.isin(row, torch.tensor(stop_ids)).nonzero()
    return int(stops[0]) + 1 if len(stops) else len(row)


# A static decoder of the model under test, made with the options a case asks for.
Decoder = Callable[[DecoderOptions], StaticDecoder]
# Batch-invariant (on a GPU too, where it is off by default), each call decoded afresh: rows in other batches,
# never started from an earlier call's cache.
FRESH = DecoderOptions(reuse_kv=False, batch_invariant=True)


def batch_case(chat: ChatModel, decoder: Decoder, rows: int = 7, new_tokens: int = 24) -> None:
    """Each row alone, then all together in two orders with extra padding and small prefill chunks: every
    logits row a row sampled from is the same bits, up to its stop (rows stop at different steps and leave)."""
    prompts = _prompts(chat, rows, seed=1)
    stop_ids = chat.stop_ids + [7, 11, 13]  # some rows stop early, so finished rows leave the batch mid-call
    alone = {i: _logits(decoder(FRESH), [p], [i], stop_ids, new_tokens) for i, p in enumerate(prompts)}
    lengths = {i: _until_stop(out[0], stop_ids) for i, (_, out) in alone.items()}
    assert len(set(lengths.values())) > 1, "rows stop at different steps"
    for order, extra, chunk in ((list(range(rows)), 0, 16384), (list(range(rows))[::-1], 9, 60)):
        together, _ = _logits(decoder(replace(FRESH, prefill_tokens=chunk)), [prompts[i] for i in order], order, stop_ids, new_tokens, extra=extra)
        for i, (seen, _) in alone.items():
            assert all(torch.equal(a, b) for a, b in zip(seen[i][: lengths[i]], together[i][: lengths[i]])), f"row {i}, order {order[:2]}.."


def reuse_case(chat: ChatModel, decoder: Decoder, rows: int = 5, new_tokens: int = 24) -> None:
    """reuse_kv: the keys and values of a reply come from decode steps (batched with others) and those of a
    prompt from the prefill; the next turn, prefilling only its new tokens, gives the logits of prefilling
    the whole conversation afresh, alone."""
    prompts, news = _prompts(chat, rows, seed=2), _prompts(chat, rows, seed=3)
    reusing = decoder(replace(FRESH, reuse_kv=True))
    _, first = _logits(reusing, prompts, list(range(rows)), [], new_tokens)
    turns = [torch.cat((p, first[i].cpu(), n)) for i, (p, n) in enumerate(zip(prompts, news))]
    reused, _ = _logits(reusing, turns, list(range(rows)), [], new_tokens)
    assert reusing.reused_tokens > reusing.prefill_tokens / 2, "the second call starts from the first's cache"
    for i, turn in enumerate(turns):
        fresh, _ = _logits(decoder(FRESH), [turn], [i], [], new_tokens)
        assert all(torch.equal(a, b) for a, b in zip(fresh[i], reused[i])), f"row {i}"


def test_a_rows_logits_do_not_depend_on_its_batch(chat: ChatModel) -> None:
    batch_case(chat, lambda options: StaticDecoder(chat.model, options))


def test_a_querys_attention_does_not_depend_on_the_thread_count() -> None:
    """The CPU path's per-query attention at 1 and at 2 threads, over a long row: the same bits (PyTorch's CPU
    attention splits one query's columns across threads; on two threads the 0.5B's records changed)."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cpu"))
    forward = StaticDecoder(chat.model, FRESH).forward
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = forward.heads, forward.kv_heads, forward.head_dim
    q = torch.randn(3, heads, 1, dim, generator=generator)
    cache = torch.randn(2, 3, kv_heads, 2048, dim, generator=generator)
    start, fresh = torch.tensor([0, 300, 1000]), torch.tensor([2047, 2047, 2047])
    threads = torch.get_num_threads()
    try:
        seen = []
        for count in (1, 2):
            torch.set_num_threads(count)
            seen.append(forward._each_query(q, cache, start, fresh, 2048))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(seen[0], seen[1])


def test_a_turn_from_the_previous_turns_cache_equals_a_fresh_prefill(chat: ChatModel) -> None:
    reuse_case(chat, lambda options: StaticDecoder(chat.model, options))


def emulated_gpu_path(chat: ChatModel, options: DecoderOptions) -> StaticDecoder:
    """A static decoder on this CPU running the GPU's batch-invariant forward: fused projections through the
    fixed-tile matmul, the prefill's positions through the decode step's attention kernel (Triton's
    interpreter runs the kernels, ``TRITON_INTERPRET=1``)."""
    decoder = StaticDecoder(chat.model, options)
    f = decoder.forward
    f.use_kernels, f.invariant, f.processors, f.gqa_in_kernel, f.min_rows = True, True, 4, True, 0
    f.qkv = [_fused(layer.self_attn, ("q_proj", "k_proj", "v_proj")) for layer in f.layers]
    f.gate_up = [_fused(layer.mlp, ("gate_proj", "up_proj")) for layer in f.layers]
    return decoder


def check_done_rows(decoder: StaticDecoder, device: str) -> None:
    """A decode step's rows that are done (stopped, waiting for the open rows to fit a smaller batch) read only
    their first cache column: their other columns poisoned with NaN leave their logits finite, and the open
    rows' logits are the bits of the same step without any row done."""
    f = decoder.forward
    generator = torch.Generator().manual_seed(0)
    layers, columns = len(f.layers), 64
    shape = (2, 3, f.kv_heads, columns, f.head_dim)
    cache = [torch.randn(shape, generator=generator).to(device, f.dtype) for _ in range(layers)]
    token = torch.tensor([5, 9, 13], device=device)
    start = torch.tensor([0, 10, 5], device=device)
    column = torch.tensor(40, device=device)
    position = column - start
    done = torch.tensor([False, True, False], device=device)
    with torch.inference_mode():
        expected = f.step([c.clone() for c in cache], token, position, start, column, columns)
        for c in cache:
            c[:, 1, :, 11:] = float("nan")
        logits = f.step(cache, token, position, start, column, columns, done)
    assert torch.equal(logits[[0, 2]], expected[[0, 2]]), "the open rows' logits"
    assert logits[1].isfinite().all(), "the done row read past its first column"


def check_gpu_path(name: str) -> None:
    """The GPU's batch-invariant path, its logic on this CPU: the batch and reuse cases, smaller, and done rows."""
    torch.set_num_threads(1)
    chat = load_chat_model(load_registry()[name], Path("/nonexistent"), "float32", torch.device("cpu"))
    batch_case(chat, lambda options: emulated_gpu_path(chat, options), rows=4, new_tokens=10)
    reuse_case(chat, lambda options: emulated_gpu_path(chat, options), rows=2, new_tokens=6)
    check_done_rows(emulated_gpu_path(chat, DecoderOptions()), "cpu")


@pytest.mark.skipif(not kernels.HAVE_TRITON, reason="triton is not installed")
def test_the_gpu_paths_invariance_in_the_interpreter() -> None:
    run_interpreted("from tests.test_invariance import check_gpu_path; check_gpu_path('tiny-qwen2')", timeout=900)


@pytest.mark.skipif(not GPU, reason="needs a GPU Triton can compile for")
@pytest.mark.parametrize("invariant", [True, False], ids=["invariant", "fast"])
def test_done_rows_read_no_cache_on_the_gpu(invariant: bool) -> None:
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cuda"))
    check_done_rows(StaticDecoder(chat.model, DecoderOptions(batch_invariant=invariant)), "cuda")


@pytest.mark.skipif(not GPU, reason="needs a GPU Triton can compile for")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_rows_logits_do_not_depend_on_its_batch_on_the_gpu(dtype: str) -> None:
    """On the GPU: the batch and reuse cases, bit for bit (without CUDA graphs: the logits are read on the host
    at each step; graphs on or off change no token: benchmarks/invariance.py's graphs_off case)."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), dtype, torch.device("cuda"))
    batch_case(chat, lambda options: StaticDecoder(chat.model, replace(options, cuda_graphs=False)))
    reuse_case(chat, lambda options: StaticDecoder(chat.model, replace(options, cuda_graphs=False)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batch_invariance_is_refused_where_it_cannot_hold() -> None:
    """PyTorch's kernels on a GPU pick their kernels by shape: asking for batch invariance there is an error,
    not batch-dependent tokens under a record fingerprint that claims otherwise."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "bfloat16", torch.device("cuda"))
    with pytest.raises(ValueError, match="batch_invariant=true cannot hold"):
        StaticDecoder(chat.model, replace(FRESH, kernels="torch"))


def _comparable(records: list[dict]) -> list[dict]:
    """Records without their timings, in problem order."""
    return without_timings(records)


def test_batch_size_and_votes_change_no_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """debate.batch_size 3 or 8, a vote in batches of 5 rows, of batch_size (null) or of the group's 16 (the default's
    1536 rows at most), the turns refilled or group by group, votes on or off: the same turns and solo rows, and the
    same votes (int8 and float32 models); the vote's batches are the ones asked for."""
    torch.set_num_threads(1)
    registry = load_registry()
    models = {"a": load_chat_model(registry["tiny-llama"], Path("/nonexistent"), "float32", torch.device("cpu")),
              "b": load_chat_model(registry["tiny-qwen2"], Path("/nonexistent"), "int8", torch.device("cpu"))}
    cfg = load_config(["debate.max_new_tokens=64", "debate.max_rounds=2", "debate.baselines.vote_k=2"])
    rows: dict[str, list[int]] = defaultdict(list)  # per run, the rows of each sampled (vote) batch
    label = ""
    generate = StaticDecoder.generate

    def counted(self: StaticDecoder, ids: torch.Tensor, *args: object, temperature: float = 0.0, **kwargs: object) -> torch.Tensor:
        if temperature > 0:
            rows[label].append(len(ids))
        return generate(self, ids, *args, temperature=temperature, **kwargs)

    monkeypatch.setattr(StaticDecoder, "generate", counted)
    runs = {}
    for label, changes in (("8", {"batch_size": 8, "vote_batch_rows": None}), ("3", {"batch_size": 3}), ("whole vote", {"batch_size": 8}),
                           ("vote of 5s", {"batch_size": 8, "vote_batch_rows": 5}), ("3, refilled", {"batch_size": 3, "refill": True}),
                           ("no votes", {"baselines": {**cfg.debate.baselines, "vote_models": []}})):
        out: list[dict] = []
        DebateEngine(models, build(DebateSettings, {**cfg.debate, **changes}), 0).run_all(PROBLEMS, out.append)
        runs[label] = _comparable(out)
    assert runs["3"] == runs["8"] == runs["whole vote"] == runs["vote of 5s"] == runs["3, refilled"]
    assert rows["8"] == [8, 8] * 2 and rows["whole vote"] == [16] * 2 and rows["vote of 5s"] == [5, 5, 5, 1] * 2, dict(rows)
    without_vote = [{k: v for k, v in r.items() if k != "vote"} for r in runs["8"]]
    assert [{k: v for k, v in r.items() if k != "vote"} for r in runs["no votes"]] == without_vote
    assert all(r["vote"] == {} for r in runs["no votes"]) and all(len(r["vote"]["a"]["samples"]) == 2 for r in runs["8"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="models.dtype=int8 runs on a CPU only, and a job here takes the GPU")
def test_one_shard_or_three_give_the_same_outcomes_file(tmp_path: Path) -> None:
    """The same questions in one shard or in three (other batches, other padding): byte-identical
    per-question outcomes and the same records, in int8 (where one activation scale per batch made 11 to 18
    of 24 answers per method change with the shard count)."""
    files, records = {}, {}
    for shards in (1, 3):
        results = tmp_path / f"shards{shards}"
        submit(tiny_overrides(results, "limit=9", f"shards={shards}", "cluster=debug", "run_id=same", "debate.max_new_tokens=64", "models.dtype=int8",
                              "debate.baselines.vote_k=2"))
        files[shards] = (results / "same" / "debate_outcomes.csv").read_bytes()
        records[shards] = _comparable([r for f in (results / "same" / "debate").glob("shard-*.jsonl") for r in read_shard(f)])
    assert files[1] == files[3]
    assert records[1] == records[3] and len(records[1]) == 9


def test_the_fingerprint_holds_what_changes_tokens_and_nothing_else() -> None:
    """The batching settings (measured above to change no token in a batch-invariant run, and up to 123 of 256
    greedy rows on an H100's fast kernels) leave a record's fingerprint alone only with batch_invariant=true;
    with null (off on a GPU, which the submitter cannot rule out) or false they change it. The engine, the
    kernels and batch invariance itself always change it."""
    from pipeline.debate.units import debate_schema
    from pipeline.stages import build_config

    def fingerprint(*overrides: str) -> str:
        return debate_schema(build_config(load_config(["stage=debate", *overrides])), None).fingerprint

    batching = ("debate.batch_size=7", "debate.vote_batch_rows=null", "debate.refill=true", "debate.cuda_graphs=false", "debate.reuse_kv=false", "debate.prefill_tokens=512", "debate.devices=shared")
    invariant = fingerprint("debate.batch_invariant=true")
    for setting in batching:
        assert fingerprint("debate.batch_invariant=true", setting) == invariant, setting
        for switch in ("null", "false"):
            assert fingerprint(f"debate.batch_invariant={switch}", setting) != fingerprint(f"debate.batch_invariant={switch}"), (setting, switch)
    base = fingerprint()
    for changes_tokens in ("debate.engine=generate", "debate.kernels=torch", "debate.batch_invariant=false", "debate.batch_invariant=true",
                           "debate.max_new_tokens=9"):
        assert fingerprint(changes_tokens) != base, changes_tokens
    assert fingerprint("debate.batch_invariant=true", "debate.kernels=torch") != invariant
    assert fingerprint("shards=3") == base, "the shard count is the run's own (the resume check), not a record's"
