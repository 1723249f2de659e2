"""The committed ``tiny`` model pair (built by ``python tools/build_tiny_models.py``).

Loads both fixtures the way the suite does (AutoTokenizer / AutoModelForCausalLM from a local
folder, offline) and checks that they behave like small chat models: the real special tokens and
chat templates, and greedy generation that ends in ``#### N`` and stops on the end-of-turn token,
row by row in a left-padded batch and after a debate-style review request.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pipeline" / "assets" / "tiny"
MAX_NEW_TOKENS = 256
FINAL = re.compile(r"####\s*-?\$?\s*[\d,]*\.?\d+")

# The first four GSM8K test questions (kept here so the test needs no data folder).
QUESTIONS = [
    "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per "
    "fresh duck egg. How much in dollars does she make every day at the farmers' market?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?",
    "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 in repairs.  "
    "This increased the value of the house by 150%.  How much profit did he make?",
    "James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  How many total meters "
    "does he run a week?",
]

# name -> (model class, end-of-turn token, end-of-text token, pad token, bos token or None)
MODELS = {
    "tiny-llama": ("LlamaForCausalLM", "<|eot_id|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
                   "<|begin_of_text|>"),
    "tiny-qwen2": ("Qwen2ForCausalLM", "<|im_end|>", "<|endoftext|>", "<|endoftext|>", None),
}

ALLOWED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small generates as fast on one thread, and does not slow to a crawl when other
    jobs share the cores (several threads each on an oversubscribed machine do)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request):
    name = request.param
    path = ASSETS / name
    if not (path / "model.safetensors").exists():
        pytest.fail(f"{path} is missing: build it with `python tools/build_tiny_models.py --out {ASSETS}`")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return name, tok, model


def _ids(tok, *tokens):
    out = [tok.convert_tokens_to_ids(t) for t in tokens]
    assert all(isinstance(i, int) and i != tok.unk_token_id for i in out), (tokens, out)
    return out


def _generate(tok, model, conversations):
    tok.padding_side = "left"
    enc = tok.apply_chat_template(conversations, add_generation_prompt=True, padding=True, return_tensors="pt",
                                  return_dict=True)
    eos = list(model.generation_config.eos_token_id)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=model.generation_config.pad_token_id)
    return enc, out[:, enc["input_ids"].shape[1]:]


def _check_rows(name, tok, gen):
    """Every row stops on its end-of-turn token before the limit and ends in '#### N'."""
    _, eot_tok, _, pad_tok, _ = MODELS[name]
    eot, pad = _ids(tok, eot_tok, pad_tok)
    texts = []
    for row in gen.tolist():
        assert eot in row, f"{name}: no {eot_tok} within {MAX_NEW_TOKENS} new tokens: {tok.decode(row)!r}"
        stop = row.index(eot)
        assert stop < MAX_NEW_TOKENS - 1
        # rows finish independently: after its end of turn a row holds only padding
        assert all(t == pad for t in row[stop + 1:]), row[stop + 1:]
        text = tok.decode(row[:stop], skip_special_tokens=True)
        assert FINAL.search(text), f"{name}: no '#### N' in {text!r}"
        texts.append(text)
    return texts


def test_fixture_files():
    assert (ASSETS / "BUILD.json").is_file()
    build = json.loads((ASSETS / "BUILD.json").read_text())
    total = 0
    for name, (cls, *_rest) in MODELS.items():
        files = {p.name for p in (ASSETS / name).iterdir()}
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json"} <= files
        assert files <= ALLOWED_FILES, files - ALLOWED_FILES
        total += sum(p.stat().st_size for p in (ASSETS / name).iterdir())
        config = json.loads((ASSETS / name / "config.json").read_text())
        assert config["architectures"] == [cls]
        assert config["max_position_embeddings"] >= 4096
        assert name in build["models"]
    assert total < 8 * 1024 * 1024


def test_special_tokens_and_generation_config(pair):
    name, tok, model = pair
    cls, eot_tok, eotext_tok, pad_tok, bos_tok = MODELS[name]
    assert type(model).__name__ == cls
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tok)
    eot, eotext, pad = _ids(tok, eot_tok, eotext_tok, pad_tok)
    assert tok.eos_token == eot_tok
    assert tok.pad_token == pad_tok and tok.pad_token_id == pad
    gc = model.generation_config
    assert list(gc.eos_token_id) == [eot, eotext]
    assert gc.pad_token_id == pad
    assert not gc.do_sample
    if bos_tok is None:
        assert tok.bos_token is None
    else:
        assert tok.bos_token == bos_tok


def test_chat_template(pair):
    name, tok, _ = pair
    _, eot_tok, _, _, bos_tok = MODELS[name]
    user = [{"role": "user", "content": "What is 2+3?"}]
    system = [{"role": "system", "content": "Be brief."}] + user
    if name == "tiny-llama":
        assert tok.apply_chat_template(system, tokenize=False, add_generation_prompt=True) == (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        assert tok.apply_chat_template(user + [{"role": "assistant", "content": "5"}], tokenize=False) == (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>"
        )
    else:
        assert tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
        )
        assert tok.apply_chat_template(system, tokenize=False, add_generation_prompt=False) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        )
    # special tokens are single ids, and BOS (llama) appears exactly once
    ids = tok.apply_chat_template(user, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert _ids(tok, eot_tok)[0] in ids
    if bos_tok is not None:
        bos = _ids(tok, bos_tok)[0]
        assert ids[0] == bos and ids.count(bos) == 1
    assert tok.decode(ids) == tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)


def test_batched_generation_stops_with_answer(pair):
    name, tok, model = pair
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    enc, gen = _generate(tok, model, convs)
    # left padding: every prompt ends at the last column
    assert bool(enc["attention_mask"][:, -1].all())
    assert not bool(enc["attention_mask"][:, 0].all()), "expected prompts of different lengths"
    _check_rows(name, tok, gen)


def test_review_turn_stops_with_answer(pair):
    name, tok, model = pair
    q = QUESTIONS[0]
    first = _check_rows(name, tok, _generate(tok, model, [[{"role": "user", "content": q}]])[1])[0]
    other = ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer's "
             "market.\n#### 18")
    conv = [
        {"role": "user", "content": q},
        {"role": "assistant", "content": first},
        {"role": "user", "content": f"Another agent answered:\n{other}\nReview it and give your own solution; "
                                    "end with '#### <number>'."},
    ]
    _check_rows(name, tok, _generate(tok, model, [conv])[1])
