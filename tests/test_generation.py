"""Batched chat generation on the tiny pair: stopping, batching independence, the seeded sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.data import load_problems
from pipeline.debate.vote import majority
from pipeline.engine import DecoderOptions
from pipeline.engine.generation import chat_prompts, generate_chat, left_padded
from pipeline.engine.memory import Decoders
from pipeline.engine.sampling import row_seed
from pipeline.models.int8 import RowInt8Linear
from pipeline.models.loading import load_chat_model, stop_token_ids
from pipeline.models.registry import load_registry
from tests.conftest import ROOT

QUESTIONS = [p.question for p in load_problems(ROOT / "pipeline/assets/gsm8k/test.jsonl", limit=6)]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2"])
def chat(request: pytest.FixtureRequest):
    torch.set_num_threads(1)
    return load_chat_model(load_registry()[request.param], Path("/nonexistent"), "float32", torch.device("cpu"))


def _convs(questions: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Solve: {q}"}] for q in questions]


def test_end_of_turn_tokens_are_stop_ids(chat) -> None:
    vocab = chat.tokenizer.get_vocab()
    eot = "<|eot_id|>" if "<|eot_id|>" in vocab else "<|im_end|>"
    assert vocab[eot] in chat.stop_ids
    assert stop_token_ids(chat.tokenizer, chat.model) == chat.stop_ids


def test_a_batch_padded_from_ids_is_the_tokenizers_own(chat) -> None:
    """A call tokenizes its prompts once and pads each batch from the ids: the same tensors as the tokenizer's
    own left padding, so no prompt changes by a bit."""
    texts = [chat.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in _convs(QUESTIONS)]
    own = chat.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    ours = left_padded(chat.tokenizer(texts, add_special_tokens=False)["input_ids"], chat.tokenizer.pad_token_id, "cpu")
    assert len(set(own["attention_mask"].sum(1).tolist())) > 1, "prompts of several lengths"
    assert torch.equal(ours["input_ids"], own["input_ids"]) and torch.equal(ours["attention_mask"], own["attention_mask"])


class _CountingTokenizer:
    """The tokenizer, counting the conversations it renders and the texts it tokenizes."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.rendered, self.tokenized = tokenizer, 0, 0

    def apply_chat_template(self, conversation, **kwargs):
        self.rendered += 1
        return self.tokenizer.apply_chat_template(conversation, **kwargs)

    def __call__(self, texts, **kwargs):
        self.tokenized += len(texts)
        return self.tokenizer(texts, **kwargs)


def test_a_vote_renders_and_tokenizes_each_distinct_conversation_once(chat) -> None:
    """A vote's k samples of a question share one conversation: the prompts are each row's own ids (what
    rendering and tokenizing every row gives), from one rendering and tokenizing per distinct conversation."""
    convs = [[{"role": "system", "content": "Be brief."}, *c] for c in _convs(QUESTIONS[:3]) for _ in range(4)]
    convs.append([{"content": "Be brief.", "role": "system"}, {"content": f"Solve: {QUESTIONS[0]}", "role": "user"}])  # keys in another order
    counting = _CountingTokenizer(chat.tokenizer)
    prompts = chat_prompts(counting, convs)
    every_row = [chat.tokenizer(chat.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False)["input_ids"] for c in convs]
    assert prompts == every_row
    assert counting.rendered == counting.tokenized == 3


def test_rows_stop_independently_before_the_limit(chat) -> None:
    out = generate_chat(chat, _convs(QUESTIONS), max_new_tokens=200)
    assert all(c.stopped for c in out), [c.tokens for c in out]
    assert len({c.tokens for c in out}) > 1, "rows of one batch end at different lengths"
    assert all("####" in c.text for c in out)


def test_greedy_output_does_not_depend_on_the_batch(chat) -> None:
    together = generate_chat(chat, _convs(QUESTIONS), max_new_tokens=64)
    alone = [generate_chat(chat, _convs([q]), max_new_tokens=64)[0] for q in QUESTIONS]
    assert [c.text for c in together] == [c.text for c in alone]


def test_seeded_sampling_is_per_row_and_reproducible(chat) -> None:
    seeds = [row_seed(0, i, "vote") for i in range(len(QUESTIONS))]
    a = generate_chat(chat, _convs(QUESTIONS), max_new_tokens=64, temperature=1.0, seeds=seeds)
    b = generate_chat(chat, _convs(QUESTIONS[::-1]), max_new_tokens=64, temperature=1.0, seeds=seeds[::-1])
    assert [c.text for c in a] == [c.text for c in b[::-1]], "same seed, same sample, whatever the batch"
    other = generate_chat(chat, _convs(QUESTIONS), max_new_tokens=64, temperature=1.0, seeds=[s + 1 for s in seeds])
    assert [c.text for c in other] != [c.text for c in a], "another seed, another sample"


def test_majority_vote_ignores_unparsable_and_breaks_ties_by_first_seen() -> None:
    assert majority(["3", None, "4", "3.0", "4", "3"]) == "3"
    assert majority(["5", "6"]) == "5"
    assert majority([None, None]) is None
    assert majority(["1,000", "1000", "7"]) == "1,000"


def test_int8_runs_the_linear_layers_in_int8_with_both_engines() -> None:
    """models.dtype=int8: a CPU-only mode whose linear layers are int8 with one activation scale per row and
    integer sums, so a row's tokens do not depend on its batch; a row alone gets the same tokens from the
    static decoder and from generate (both call the same layers)."""
    torch.set_num_threads(1)
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "int8", torch.device("cpu"))
    assert isinstance(chat.model.model.layers[0].self_attn.q_proj, RowInt8Linear)
    assert isinstance(chat.model.lm_head, RowInt8Linear)
    static = [generate_chat(chat, _convs([q]), max_new_tokens=48, engine="static")[0] for q in QUESTIONS[:3]]
    plain = [generate_chat(chat, _convs([q]), max_new_tokens=48, engine="generate")[0] for q in QUESTIONS[:3]]
    assert [c.text for c in static] == [c.text for c in plain]
    assert all(c.tokens > 0 for c in static)
    batched = generate_chat(chat, _convs(QUESTIONS[:3]), max_new_tokens=48, engine="static", decoders=Decoders(DecoderOptions(reuse_kv=False)))
    assert [c.text for c in batched] == [c.text for c in static], "a row's tokens in a batch of 3 are its tokens alone"


def test_int8_weights_quantized_by_blocks_are_those_of_the_whole_matrix() -> None:
    """RowInt8Linear quantizes a weight a block of rows at a time (fast to load); the bits are those of
    quantizing the whole matrix at once, for a row count that is not a multiple of the block."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 700, bias=True)
    with torch.no_grad():
        linear.weight[3] = 0.0  # an all-zero row: the smallest scale, no division by zero
    layer = RowInt8Linear(linear)
    weight = linear.weight.detach().float()
    scale = weight.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    assert torch.equal(layer.weight_scale, scale)
    assert torch.equal(layer.matrix(), torch.round(weight / scale[:, None]).to(torch.int8).t())
    x = torch.randn(5, 96)
    assert torch.allclose(layer(x), linear(x), atol=0.05)


def test_int8_refuses_a_gpu() -> None:
    from pipeline.models.device import pick_dtype

    with pytest.raises(ValueError, match="models.dtype=int8 runs on a CPU only"):
        pick_dtype("int8", torch.device("cuda"))
    assert pick_dtype("int8", torch.device("cpu")) is torch.float32


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "int_mm"])
def test_int8_layer_computes_its_formula_bit_for_bit(onednn: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer works in place and, where this CPU's oneDNN is exact, multiplies with a packed weight and
    shifted unsigned activations, for speed; its output is the plain formula's (torch._int_mm, out of place),
    bit for bit, at decode and prefill row counts, with a bias, down either path."""
    from pipeline.models import int8

    if onednn and not int8.onednn_is_exact():
        pytest.skip("this CPU's oneDNN int8 product is not exact: the layers keep torch._int_mm")
    monkeypatch.setattr(int8, "onednn_is_exact", lambda: onednn)
    torch.manual_seed(0)
    layer = RowInt8Linear(torch.nn.Linear(96, 700, bias=True))
    assert layer.packed is onednn
    for rows in (1, 4, 17, 300):
        x = torch.randn(rows, 96) * torch.rand(rows, 1) * 8
        x[0, 0] = 1e4  # an outlier: its row's other values quantize to small integers, the other rows' do not
        scale = x.abs().amax(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
        expected = torch._int_mm(quantized, layer.matrix()).float()
        assert torch.equal(layer(x), expected * scale * layer.weight_scale + layer.bias), rows


def test_onednn_int8_sums_are_exact_at_their_extremes() -> None:
    """Where the layers use oneDNN, its sums equal torch._int_mm's where 16-bit pair sums would saturate
    (every product +-127 x 127) and beyond 2^24, where float32 rounds a sum: the same rounding."""
    from pipeline.models import int8

    if not int8.onednn_is_exact():
        pytest.skip("this CPU's oneDNN int8 product is not exact: the layers keep torch._int_mm")
    weight = torch.full((4, 1536), 127, dtype=torch.int8)
    weight[1] = -127
    weight[2, ::2] = -127
    values = torch.full((3, 1536), 127, dtype=torch.int8)
    values[1] = -127
    packed = torch.ops.onednn.qlinear_prepack(weight, None)
    sums = int8._onednn_product(int8.unsigned(values), packed)
    assert sums.abs().max() > 2**24
    assert torch.equal(sums, torch._int_mm(values, weight.t()).float())
