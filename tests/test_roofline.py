"""Each generation is timed against its own limit: the limits count what a decode step must read and compute
and what a prefill must compute (by hand on a small case), a call reports its prefill and decode, and every
phase of a debate (model b alone, the votes, each turn) ends with one log line that carries them."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import progress
from pipeline.data import load_problems
from pipeline.debate.engine import DebateEngine
from pipeline.debate.settings import DebateSettings
from pipeline.engine import roofline
from pipeline.engine import DecoderOptions
from pipeline.engine.generation import generate_chat
from pipeline.engine.memory import Decoders
from pipeline.engine.roofline import Card, ModelCost, Timings
from pipeline.models.loading import load_chat_model
from pipeline.models.registry import load_registry
from pipeline.settings import build
from pipeline.stages import load_config
from tests.conftest import ROOT

PROBLEMS = load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", limit=4)
CONVERSATIONS = [[{"role": "user", "content": f"Solve: {p.question}"}] for p in PROBLEMS]
TIMING = r"prefill [\d,]+ tok/s \((\d+% of its limit|limit n/a)\), decode [\d,]+ tok/s \((\d+% of its limit|limit n/a)[^)]*\), host [\d.]+ s(, \d+ batches: [\d,x +]+ rows)?"

COST = ModelCost(weight_bytes=1000, kv_bytes_per_token=10, layer_flops=100, head_flops=20, attention_flops=4)


@pytest.fixture(scope="module")
def models() -> dict:
    torch.set_num_threads(2)
    registry = load_registry()
    return {k: load_chat_model(registry[n], Path("/nonexistent"), "float32", torch.device("cpu")) for k, n in zip("ab", ("tiny-llama", "tiny-qwen2"))}


def test_a_decode_steps_limit_is_its_reads_or_its_flops_whichever_is_longer() -> None:
    # Row 0: 3 prompt tokens, 3 generated (steps 1 and 2 read 4 and 5 keys); row 1 stopped at its first token.
    prompt, generated = np.array([3, 5]), np.array([3, 1])
    memory = COST.decode_seconds(prompt, generated, Card("test", 1000.0, None))
    assert memory == pytest.approx((1000 + 4 * 10) / 1000 + (1000 + 5 * 10) / 1000)
    compute = COST.decode_seconds(prompt, generated, Card("test", None, 100.0))
    assert compute == pytest.approx((120 + 4 * 4) / 100 + (120 + 5 * 4) / 100)
    both = COST.decode_seconds(prompt, generated, Card("test", 1000.0, 100.0))
    assert both == pytest.approx(max(1.04, 1.36) + max(1.05, 1.40))
    assert COST.decode_seconds(prompt, generated, Card("cpu", None, None)) is None


def test_a_prefills_limit_counts_only_the_tokens_it_computes() -> None:
    # Row 1 reused 2 of its 5 tokens: it computes positions 2-4, attending to 3, 4 and 5 keys.
    flops = (3 + 3) * 100 + 2 * 20 + ((1 + 2 + 3) + (3 + 4 + 5)) * 4
    assert COST.prefill_seconds(np.array([3, 5]), np.array([0, 2]), 2, Card("test", None, 100.0)) == pytest.approx(flops / 100)
    assert COST.prefill_seconds(np.array([3, 5]), np.array([0, 2]), 20, Card("test", 1000.0, 100.0)) == pytest.approx(20.0), "weights read per chunk"


def test_the_cards_figures_come_from_the_data_sheet_table() -> None:
    assert roofline.bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12 and roofline.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert roofline.bandwidth("NVIDIA H200") == 4.8e12 and roofline.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert roofline.bandwidth("a card nobody listed") is None
    assert Card.of(torch.device("cpu"), torch.bfloat16) == Card("cpu", None, None)


def test_a_models_cost_reads_a_tied_table_once_as_its_head(models: dict) -> None:
    model = models["a"].model
    cost = ModelCost.of(model)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight, "the tiny models tie their table"
    assert cost.weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    config = model.config
    assert cost.head_flops == 2 * config.vocab_size * config.hidden_size
    head_dim = config.hidden_size // config.num_attention_heads
    assert cost.kv_bytes_per_token == 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4


def test_a_call_reports_its_prefill_and_decode_against_their_limits(models: dict) -> None:
    chat = models["a"]
    details: list[str | None] = []

    def report(done: int, tokens: int, fraction: float, detail: str | None = None) -> None:
        details.append(detail)

    decoders = Decoders(DecoderOptions(reuse_kv=False))
    generate_chat(chat, CONVERSATIONS, max_new_tokens=24, max_batch=3, decoders=decoders, report=report)
    assert sum(d is not None for d in details) == 2, "a detail after each of the two batches"
    assert re.fullmatch(TIMING, details[-1]) and details[-1].count("limit n/a") == 2, details[-1]
    assert details[-1].endswith(", 2 batches: 3 + 1 rows"), "the batches, shortest prompts first, in the call's line"

    decoder = decoders.of(chat.model)  # the decoder generate_chat used, and uses again
    decoder.card = Card("a card with figures", 1e9, 1e12)  # shares of a limit, on a CPU
    out = generate_chat(chat, CONVERSATIONS, max_new_tokens=24, decoders=decoders, report=report)
    assert re.fullmatch(TIMING, details[-1]) and details[-1].count("% of its limit") == 2, details[-1]
    assert "batches" not in details[-1], "one batch: nothing to say"
    texts = [chat.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS]
    assert decoder.last.prefill.tokens == sum(len(ids) for ids in chat.tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert decoder.last.decode.tokens == sum(c.tokens - 1 for c in out), "every token after each row's first"
    assert decoder.last.decode.limit_seconds > 0 and decoder.last.decode.seconds > 0  # no timing compared: CI machines differ


def test_a_calls_batches_read_as_runs_of_equal_rows() -> None:
    """Six batches of a vote, the last cut short (by its rows, or by free memory), in a phase line's words."""
    assert Timings(batch_rows=[256] * 5 + [230]).describe().endswith(", 6 batches: 256 x 5 + 230 rows")
    assert Timings(batch_rows=[1200, 336]).describe().endswith(", 2 batches: 1,200 + 336 rows")
    assert "batches" not in Timings(batch_rows=[1536]).describe()


def test_every_debate_phase_ends_with_one_line_with_its_timings(models: dict, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(["debate.max_new_tokens=24", "debate.max_rounds=1", "debate.baselines.vote_k=2", "debate.baselines.vote_models=[a]"])
    caplog.set_level(logging.INFO, logger=progress.__name__)
    DebateEngine(models, build(DebateSettings, cfg.debate), 0).run_all(PROBLEMS[:2], lambda record: None)
    closing = [r.getMessage() for r in caplog.records if r.name == progress.__name__ and " rows in " in r.getMessage()]
    phases = [line.split(":")[0] for line in closing]
    assert phases == ["model b alone", "vote of 2, model a", "debate round 1, model a", "debate round 1, model b"], closing
    for line in closing:
        assert len(re.findall(TIMING, line)) == 1, line


def test_a_phase_keeps_its_last_detail_for_its_closing_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=progress.__name__)
    task = progress.TaskProgress(tmp_path / "progress.json")
    with task.phase("vote of 6, model a", 4, "rows") as phase:
        phase.update(2, 10, 0.5, "prefill 1 tok/s (limit n/a), decode 2 tok/s (limit n/a)")
        phase.update(3, 12, 0.7)
        assert task.snapshot()["phase"]["detail"] == "prefill 1 tok/s (limit n/a), decode 2 tok/s (limit n/a)"
    assert caplog.records[-1].getMessage().endswith("; prefill 1 tok/s (limit n/a), decode 2 tok/s (limit n/a)")


def test_a_models_cost_reads_the_int8_layers_as_int8() -> None:
    """models.dtype=int8 (the CPU demo): every linear layer a per-row int8 one; a step reads their int8 matrices
    (one byte a weight) and the float parameters left (norms; the embedding table only as it is not the head)."""
    import copy

    from pipeline.models.int8 import quantize_int8
    from pipeline.models.loading import load_chat_model
    from pipeline.models.registry import load_registry

    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cpu"))
    floating = ModelCost.of(chat.model)
    quantized = quantize_int8(copy.deepcopy(chat.model))
    cost = ModelCost.of(quantized)
    int8 = sum(m.weight_int8.numel() for m in quantized.modules() if hasattr(m, "weight_int8"))
    rest = sum(p.numel() * 4 for p in quantized.parameters() if p is not quantized.get_input_embeddings().weight)
    assert cost.weight_bytes == int8 + rest < floating.weight_bytes
    assert (cost.layer_flops, cost.head_flops) == (floating.layer_flops, floating.head_flops)
