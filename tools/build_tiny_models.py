"""Build the ``tiny`` model pair: two very small chat LLMs for fast tests.

The pair imitates the two real model families the suite debates with:

* ``tiny-llama``  -- ``LlamaForCausalLM`` with a Llama-3 style tokenizer
  (``<|begin_of_text|>``, ``<|start_header_id|>``, ``<|end_header_id|>``,
  ``<|eot_id|>``, ...) and Meta's Llama-3 chat template;
* ``tiny-qwen2``  -- ``Qwen2ForCausalLM`` with a Qwen2 / ChatML tokenizer
  (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``) and Qwen2's chat
  template.

Each gets its own byte-level BPE tokenizer trained on GSM8K text (with the
pre-tokenizer of the real family), a randomly initialised (seeded) model of a
few hundred thousand parameters, and a short supervised fine-tuning run on
chat-formatted GSM8K (single-turn and debate-like multi-turn conversations,
loss on the assistant turns only).  Afterwards the models answer in GSM8K's
format -- some reasoning lines ending in ``#### N`` -- and then emit their
end-of-turn token, so generation, stopping and answer parsing can be tested
end to end on a CPU in seconds.  (The numbers they write are not meant to be
right.)

Greedy decoding of a model this small tends to loop (``$1000000000...``, ``the
number of the number of ...``), worst with Qwen2's one-digit number tokens, and
plain SFT leaves a good share of answers that never stop.  Two things fix that:
training only on solutions whose numbers have at most three digits, and
on-policy "repair" examples (:func:`repair_examples`): during the second part of
training the model greedy-answers a few training questions every
``--repair-every`` steps, and each answer that loops, runs on or stops without
``#### N`` is cut where it went wrong and continued with a newline and the rest
of the gold solution, which is what the model is then trained to write.

Usage::

    HF_HUB_OFFLINE=1 python tools/build_tiny_models.py --out pipeline/assets/tiny \
        --data pipeline/assets/gsm8k --sft-steps 1000 --seed 0

(the command that built the committed fixture, everything else at its defaults; ``BUILD.json``
records the full arguments, losses, timings and a greedy check on GSM8K test questions.)

writes ``<out>/tiny-llama/``, ``<out>/tiny-qwen2/`` (config.json,
generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja) and ``<out>/BUILD.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_NAMES = ("tiny-llama", "tiny-qwen2")

# Meta-Llama-3-8B-Instruct's chat template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2-*-Instruct's chat template (ChatML with a default system prompt), verbatim.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Pre-tokenizer regexes of the real tokenizers (Llama-3's tiktoken pattern, Qwen2's pattern:
# Qwen2 splits numbers into single digits, Llama-3 into groups of up to three).
LLAMA3_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECS = {
    "tiny-llama": {
        "arch": "llama",
        # Same order as Llama-3's reserved special tokens (ids after the BPE vocabulary).
        "special_tokens": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",  # as in Llama-3-Instruct's tokenizer_config.json
        "pad": "<|finetune_right_pad_id|>",
        "end_of_turn": "<|eot_id|>",
        "end_of_text": "<|end_of_text|>",
        "add_bos_token": True,  # like Llama-3: plain encode() prepends <|begin_of_text|>
        "regex": LLAMA3_PRETOKENIZE_REGEX,
        "nfc": False,
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "rope_theta": 500000.0,
    },
    "tiny-qwen2": {
        "arch": "qwen2",
        "special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",  # as in Qwen2-Instruct's tokenizer_config.json
        "pad": "<|endoftext|>",
        "end_of_turn": "<|im_end|>",
        "end_of_text": "<|endoftext|>",
        "add_bos_token": False,
        "regex": QWEN2_PRETOKENIZE_REGEX,
        "nfc": True,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "rope_theta": 1000000.0,
    },
}

# ---------------------------------------------------------------------------------------------
# data

_CALC = re.compile(r"<<[^<>]*>>")


def clean_answer(answer: str) -> str:
    """GSM8K solution without the ``<<a*b=c>>`` calculator annotations, ending in ``#### N``."""
    text = _CALC.sub("", answer).strip()
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n*####\s*", "\n#### ", text)
    return text


def load_gsm8k(data_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for split in ("train", "test"):
        rows = []
        with open(data_dir / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows.append({"question": row["question"].strip(), "answer": clean_answer(row["answer"])})
        out[split] = rows
    return out


FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")

FIRST_TURN = [
    "{q}",
    "{q}",
    "Solve the following math problem. End your answer with '#### <number>'.\n\n{q}",
    "Question: {q}\nAnswer step by step and finish with '#### <number>'.",
    "Can you solve this problem?\n{q}",
    "{q}\nGive the final answer after '####'.",
    "Solve this math word problem step by step. Put the final numeric answer on the last line "
    "as '#### <number>'.\n\nProblem: {q}",
    "Here is a math problem:\n{q}\nExplain your reasoning, then write '#### ' followed by the answer.",
]

REVIEW_TURN = [
    "Another agent answered:\n{other}\nReview it and give your own solution; end with '#### <number>'.",
    "Another agent answered:\n{other}\nReview it and give your own solution; end with '#### <number>'.",
    "Here is a solution from another agent:\n\n{other}\n\nUsing it as additional information, give an "
    "updated answer. End with '#### <number>'.",
    "Other agent's answer: {other}\nDo you agree? Give your own step-by-step solution ending in "
    "'#### <number>'.",
    "These are the solutions to the problem from other agents:\n\nOne agent solution: {other}\n\n"
    "Using the reasoning from other agents as additional advice, can you provide an updated answer? "
    "Finish with '#### <number>'.",
    "The problem was: {q}\n\nAnother agent's solution:\n{other}\n\nCheck it carefully and give your "
    "final solution, ending with '#### <number>'.",
    "A second opinion:\n\"\"\"\n{other}\n\"\"\"\nIs it correct? Reply with your own solution and a last "
    "line '#### <number>'.",
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a careful math tutor. Show your work and end with '#### <number>'.",
    "You are a helpful assistant that solves grade-school math problems.",
    "You are one of several agents debating a math problem. Reason step by step.",
    "Answer the user's math question. The last line of your answer must be '#### <number>'.",
]


def _perturb(solution: str, rng: random.Random) -> str:
    """A plausible wrong solution: same text, different final number."""
    m = FINAL.search(solution)
    if not m:
        return solution
    try:
        value = float(m.group(1).replace(",", ""))
    except ValueError:
        return solution
    delta = rng.choice([1, 2, 3, 5, 10, -1, -2, -10])
    new = value + delta if rng.random() < 0.7 else value * rng.choice([2, 3, 0.5])
    new_s = str(int(new)) if float(new).is_integer() else f"{new:.2f}"
    return solution[: m.start(1)] + new_s + solution[m.end(1):]


def make_conversation(rows: list[dict], rng: random.Random, n_turns: int) -> list[dict]:
    """One chat: a question, the gold solution, then ``n_turns - 1`` review rounds."""
    row = rows[rng.randrange(len(rows))]
    q, sol = row["question"], row["answer"]
    msgs: list[dict] = []
    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    msgs.append({"role": "user", "content": rng.choice(FIRST_TURN).format(q=q)})
    msgs.append({"role": "assistant", "content": sol})
    for _ in range(n_turns - 1):
        r = rng.random()
        if r < 0.4:
            other = sol  # the other agent agrees
        elif r < 0.8:
            other = _perturb(sol, rng)  # the other agent is wrong in the end
        else:
            other = rows[rng.randrange(len(rows))]["answer"]  # an unrelated answer
        msgs.append({"role": "user", "content": rng.choice(REVIEW_TURN).format(q=q, other=other)})
        msgs.append({"role": "assistant", "content": sol})
    return msgs


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(texts: list[str], spec: dict, vocab_size: int):
    """Byte-level BPE (pre-tokenizer of the real family) + the family's special tokens at the end."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    if spec["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec["regex"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(spec["special_tokens"]),
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["special_tokens"]])
    return tok


def wrap_tokenizer(raw, spec: dict):
    from transformers import PreTrainedTokenizerFast

    kwargs = dict(
        tokenizer_object=raw,
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        chat_template=spec["chat_template"],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        add_bos_token=spec["add_bos_token"],
        add_eos_token=False,
    )
    if spec["bos"] is not None:
        kwargs["bos_token"] = spec["bos"]
    if spec["arch"] == "qwen2":
        kwargs["unk_token"] = None
        kwargs["errors"] = "replace"
    return PreTrainedTokenizerFast(**kwargs)


# ---------------------------------------------------------------------------------------------
# model


def make_config(spec: dict, tok, args):
    from transformers import LlamaConfig, Qwen2Config

    ids = {
        "bos": tok.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else tok.convert_tokens_to_ids(spec["end_of_text"]),
        "eot": tok.convert_tokens_to_ids(spec["end_of_turn"]),
        "eotext": tok.convert_tokens_to_ids(spec["end_of_text"]),
        "pad": tok.convert_tokens_to_ids(spec["pad"]),
    }
    common = dict(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-6 if spec["arch"] == "qwen2" else 1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["pad"],
        hidden_act="silu",
        attention_dropout=0.0,
        rope_theta=args.rope_theta or spec["rope_theta"],
    )
    if spec["arch"] == "llama":
        cfg = LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    else:
        cfg = Qwen2Config(**common, use_sliding_window=False)
    cfg.dtype = "float32"
    return cfg, ids


def make_generation_config(ids: dict):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=ids["bos"],
        eos_token_id=[ids["eot"], ids["eotext"]],
        pad_token_id=ids["pad"],
        do_sample=False,
    )


# ---------------------------------------------------------------------------------------------
# SFT


def encode_conversation(tok, msgs: list[dict], eot_id: int, max_len: int):
    """Token ids and labels (-100 outside the assistant turns) of one conversation.

    An assistant turn's labelled span runs from just after its generation prompt through its
    end-of-turn token; everything else (system/user turns, headers, the newline after
    ``<|im_end|>``) is masked.  Returns None if a prefix does not tokenise consistently.
    """
    full = tok.apply_chat_template(msgs, tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        start = len(p_ids)
        if ids[:start] != p_ids:
            return None
        try:
            end = ids.index(eot_id, start)
        except ValueError:
            return None
        labels[start : end + 1] = ids[start : end + 1]
    return ids[:max_len], labels[:max_len]


def find_degenerate(row: list[int], eos: set, max_run: int = 4, max_rep: int = 3, max_n: int = 8):
    """Where a greedy answer goes wrong: None if it reaches an eos token first; else the index at
    which it starts a loop (a token repeated more than ``max_run`` times in a row, or an n-gram of
    2..``max_n`` tokens repeated ``max_rep`` times in a row); else ``len(row)`` (it ran too long)."""
    for p, t in enumerate(row):
        if t in eos:
            return None
        if p >= max_run and all(row[p - k] == t for k in range(1, max_run + 1)):
            return p
        for n in range(2, max_n + 1):
            if p + 1 >= max_rep * n:
                last = row[p + 1 - n : p + 1]
                if all(row[p + 1 - n * (r + 1) : p + 1 - n * r] == last for r in range(1, max_rep)):
                    return p + 1
    return len(row)


def repair_examples(model, tok, rows: list[dict], rng: random.Random, eos: list[int], eot_id: int, args):
    """On-policy repair data: greedy-answer a few training questions with the current model and,
    for each answer that loops, runs on, or stops without ``#### N``, make an example whose
    context is the prompt plus the answer up to where it went wrong (see :func:`find_degenerate`)
    and whose target -- the only labelled tokens -- is a newline, the gold solution's lines after
    the one the answer broke down in (``--repair-target continue``; ``wrap``: just its
    ``#### N`` line) and the end-of-turn token.  Teaches the model to find its way out of the
    states greedy decoding actually reaches."""
    import torch

    chosen = [rows[rng.randrange(len(rows))] for _ in range(args.repair_batch)]
    convs = []
    for r in chosen:
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        msgs.append({"role": "user", "content": rng.choice(FIRST_TURN).format(q=r["question"])})
        convs.append(msgs)
    prompts = [tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"] for c in convs]
    width = max(len(x) for x in prompts)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompts])
    attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attn, do_sample=False, eos_token_id=eos,
                             pad_token_id=pad, max_new_tokens=args.repair_tokens)
    model.train(was_training)
    examples = []
    eos_set = set(eos)
    for r, prompt, gen in zip(chosen, prompts, out[:, width:].tolist()):
        cut = find_degenerate(gen, eos_set)
        if cut is None:
            stop = next(j for j, t in enumerate(gen) if t in eos_set)
            if FINAL.search(tok.decode(gen[:stop], skip_special_tokens=True)):
                continue
            cut = stop  # it stopped without a '#### N' line
        gold = r["answer"].split("\n")
        if args.repair_target == "continue":
            # go on with the gold solution after the line the answer broke down in
            done = tok.decode(gen[:cut], skip_special_tokens=True).count("\n")
            rest = gold[min(done + 1, len(gold) - 1):]
        else:
            rest = gold[-1:]
        target = tok("\n" + "\n".join(rest), add_special_tokens=False)["input_ids"] + [eot_id]
        ids = prompt + gen[:cut] + target
        labels = [-100] * (len(prompt) + cut) + target
        examples.append((ids[-args.max_len:], labels[-args.max_len:]))
    return examples


def sft(model, tok, rows: list[dict], eot_id: int, pad_id: int, args, name: str, log=print, eos=None):
    import torch
    import torch.nn.functional as F

    rng = random.Random(f"{args.seed}-{name}-data")
    repair_rng = random.Random(f"{args.seed}-{name}-repair")
    eos = list(eos or [eot_id])
    repair_from = int(args.sft_steps * args.repair_start) if args.repair_every > 0 else args.sft_steps + 1
    repair_buffer: list = []
    repair_log = []
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, min(30, args.sft_steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.sft_steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    t0 = time.time()
    window, losses, skipped, n_tokens = [], [], 0, 0
    for step in range(args.sft_steps):
        # one turn count per batch keeps padding low
        r = rng.random()
        n_turns = 1 if r < args.single_turn_frac else (2 if r < args.single_turn_frac + (1 - args.single_turn_frac) * 0.7 else 3)
        batch = []
        while len(batch) < args.batch_size:
            enc = encode_conversation(tok, make_conversation(rows, rng, n_turns), eot_id, args.max_len)
            if enc is None:
                skipped += 1
                continue
            batch.append(enc)
        n_sft = len(batch)
        if step >= repair_from and (step - repair_from) % args.repair_every == 0:
            new = repair_examples(model, tok, rows, repair_rng, eos, eot_id, args)
            repair_log.append({"step": step, "greedy_answers": args.repair_batch, "bad": len(new)})
            repair_buffer = (new + repair_buffer)[: args.repair_buffer]
        if repair_buffer:
            batch += [repair_buffer[rng.randrange(len(repair_buffer))] for _ in range(args.repair_per_step)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attn[i, : len(ids)] = 1
        n_tokens += int(attn.sum())
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=input_ids, attention_mask=attn).logits[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                             ignore_index=-100, reduction="none").view(len(batch), -1)
        mask = (labels[:, 1:] != -100).float()
        loss = (ce[:n_sft] * mask[:n_sft]).sum() / mask[:n_sft].sum().clamp(min=1)
        if len(batch) > n_sft:
            w = mask[n_sft:].clone()
            first = w.argmax(dim=1)  # each repair row's first labelled position: where it leaves the loop
            w[torch.arange(w.shape[0]), first] *= args.repair_exit_weight
            repair_loss = (ce[n_sft:] * w).sum() / w.sum().clamp(min=1)
            (loss + args.repair_weight * repair_loss).backward()
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.sft_steps:
            bad = f" bad greedy answers {repair_log[-1]['bad']}/{args.repair_batch}" if repair_log else ""
            log(
                f"[{name}] step {step + 1}/{args.sft_steps} loss {sum(window) / len(window):.4f} "
                f"lr {lr_at(step):.2e} tokens {n_tokens}{bad} {time.time() - t0:.0f}s"
            )
            window = []
    model.eval()
    tail = losses[-min(len(losses), max(1, args.log_every)):]
    return {
        "steps": args.sft_steps,
        "final_loss": round(sum(tail) / len(tail), 4),
        "last_step_loss": round(losses[-1], 4),
        "first_loss": round(losses[0], 4),
        "tokens": n_tokens,
        "skipped_conversations": skipped,
        "repair_rounds": repair_log,
        "sft_seconds": round(time.time() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------
# quick evaluation


REVIEW_PROMPT = "Another agent answered:\n{other}\nReview it and give your own solution; end with '#### <number>'."


def _generate(model, tok, gen_cfg, convs: list, max_new_tokens: int):
    """Greedy, left-padded batch generation; per row (text before the stop token, stopped?, tokens)."""
    import copy

    import torch

    cfg = copy.deepcopy(gen_cfg)
    cfg.max_new_tokens = max_new_tokens
    eos = set(cfg.eos_token_id)
    tok.padding_side = "left"
    enc = tok.apply_chat_template(convs, add_generation_prompt=True, padding=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, generation_config=cfg)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        stop = next((j for j, t in enumerate(row) if t in eos), None)
        text = tok.decode(row[:stop] if stop is not None else row, skip_special_tokens=True)
        rows.append((text, stop is not None, (stop + 1) if stop is not None else len(row)))
    return rows


def quick_eval(model, tok, gen_cfg, data: list[dict], max_new_tokens: int = 256, batch_size: int = 10) -> dict:
    """Greedy answers to GSM8K questions, first alone, then after a debate-style review request
    quoting another question's gold solution: how many stop on an eos token and contain ``#### N``."""
    result = {"questions": len(data), "max_new_tokens": max_new_tokens}
    t0 = time.time()
    n_tokens = 0
    first_answers = []
    for turn in ("single_turn", "review_turn"):
        stopped = parsable = both = correct = lines = tokens = 0
        for i in range(0, len(data), batch_size):
            chunk = data[i : i + batch_size]
            if turn == "single_turn":
                convs = [[{"role": "user", "content": r["question"]}] for r in chunk]
            else:
                convs = [
                    [
                        {"role": "user", "content": r["question"]},
                        {"role": "assistant", "content": first_answers[i + j]},
                        {"role": "user", "content": REVIEW_PROMPT.format(other=data[(i + j + 1) % len(data)]["answer"])},
                    ]
                    for j, r in enumerate(chunk)
                ]
            for (text, ok_stop, n), r in zip(_generate(model, tok, gen_cfg, convs, max_new_tokens), chunk):
                if turn == "single_turn":
                    first_answers.append(text)
                m = FINAL.search(text)
                stopped += ok_stop
                parsable += m is not None
                both += ok_stop and m is not None
                correct += m is not None and m.group(1).replace(",", "") == FINAL.search(r["answer"]).group(1).replace(",", "")
                n_tokens += n
                tokens += n
                lines += text.strip().count("\n") + 1
        result[turn] = {"stopped": stopped, "parsable": parsable, "stopped_and_parsable": both, "correct": correct,
                        "mean_tokens": round(tokens / len(data), 1), "mean_lines": round(lines / len(data), 2)}
    secs = time.time() - t0
    result.update(generated_tokens=n_tokens, seconds=round(secs, 1),
                  tokens_per_second=round(n_tokens / secs, 1) if secs > 0 else None)
    return result


# ---------------------------------------------------------------------------------------------
# build


def build_one(name: str, data: dict, args, log=print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers

    transformers.utils.logging.disable_progress_bar()
    spec = SPECS[name]
    t0 = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    texts = []
    for split in ("train", "test"):
        for row in data[split]:
            texts.append(row["question"])
            texts.append(row["answer"])
    texts += FIRST_TURN + REVIEW_TURN + SYSTEM_PROMPTS
    raw = train_tokenizer(texts, spec, args.vocab_size)
    tok0 = wrap_tokenizer(raw, spec)

    cfg, ids = make_config(spec, tok0, args)
    gen_cfg = make_generation_config(ids)

    out_dir = Path(args.out) / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    # Save tokenizer + config first and reload through AutoTokenizer: for model_type=qwen2,
    # AutoTokenizer builds a Qwen2Tokenizer, whatever tokenizer_config.json says. Train with
    # exactly what users will load.
    with tempfile.TemporaryDirectory() as tmp:
        tok0.save_pretrained(tmp)
        cfg.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
    probe = [data["test"][0]["question"] + "\n" + data["test"][0]["answer"], " 12,345.67  x\n\n#### 42 "]
    mismatch = sum(tok0(p, add_special_tokens=False)["input_ids"] != tok(p, add_special_tokens=False)["input_ids"]
                   for p in probe)
    for key in ("eot", "eotext", "pad"):
        assert tok.convert_ids_to_tokens(ids[key]) == spec[{"eot": "end_of_turn", "eotext": "end_of_text",
                                                              "pad": "pad"}[key]], key
    assert len(tok) == cfg.vocab_size, (len(tok), cfg.vocab_size)
    log(f"[{name}] tokenizer: {type(tok).__name__}, vocab {len(tok)}, "
        f"eot={ids['eot']} end_of_text={ids['eotext']} pad={ids['pad']}, reload mismatches {mismatch}")

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config = gen_cfg
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[{name}] {type(model).__name__}: {n_params} parameters")

    train_rows = data["train"]
    if args.max_number_digits:
        # Solutions whose numbers all have at most this many digits (see --max-number-digits).
        too_long = re.compile(r"\d{%d}" % (args.max_number_digits + 1))
        train_rows = [r for r in train_rows if not too_long.search(r["answer"])]
    if args.train_problems and args.train_problems < len(train_rows):
        train_rows = random.Random(f"{args.seed}-subset").sample(train_rows, args.train_problems)
    log(f"[{name}] SFT on {len(train_rows)} of {len(data['train'])} GSM8K train problems")
    stats = sft(model, tok, train_rows, ids["eot"], ids["pad"], args, name, log=log, eos=gen_cfg.eos_token_id)
    stats["train_problems"] = len(train_rows)

    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    _tidy_tokenizer_config(out_dir / "tokenizer_config.json", spec)
    build_seconds = round(time.time() - t0, 1)

    evaluation = None
    if args.eval_questions > 0:
        evaluation = quick_eval(model, tok, gen_cfg, data["test"][: args.eval_questions])
        log(f"[{name}] eval: {json.dumps(evaluation)}")

    return {
        "class": type(model).__name__,
        "tokenizer_class": type(tok).__name__,
        "parameters": n_params,
        "vocab_size": len(tok),
        "tokenizer_reload_mismatches": mismatch,
        **stats,
        "build_seconds": build_seconds,
        "eval": evaluation,
    }


def _tidy_tokenizer_config(path: Path, spec: dict) -> None:
    """Drop the load-time keys a reloaded tokenizer writes back (``is_local``, ``local_files_only``)
    and state the BOS behaviour that tokenizer.json's post-processor implements."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg["add_bos_token"] = spec["add_bos_token"]
    cfg["add_eos_token"] = False
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="pipeline/assets/tiny", help="output folder")
    p.add_argument("--data", default="pipeline/assets/gsm8k", help="folder with GSM8K train.jsonl/test.jsonl")
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--max-positions", type=int, default=4096)
    p.add_argument("--rope-theta", type=float, default=0.0, help="0: the family's value (Llama-3 5e5, Qwen2 1e6)")
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-len", type=int, default=512, help="truncate training conversations to this many tokens")
    p.add_argument("--single-turn-frac", type=float, default=0.7,
                   help="share of batches of single-turn chats; the rest are 2-turn (70%%) or 3-turn")
    p.add_argument("--max-number-digits", type=int, default=3,
                   help="train only on solutions whose numbers have at most this many digits (0: all). "
                        "Runs like 1000000... are the commonest way greedy decoding of a tiny model with "
                        "one-digit tokens (Qwen2) never stops")
    p.add_argument("--train-problems", type=int, default=0,
                   help="train on a seeded random subset of this many problems (0: all)")
    p.add_argument("--repair-every", type=int, default=40,
                   help="every this many steps, collect on-policy repair examples (see repair_examples); 0: off")
    p.add_argument("--repair-start", type=float, default=0.25, help="first repair round, as a share of the steps")
    p.add_argument("--repair-batch", type=int, default=16, help="greedy answers per repair round")
    p.add_argument("--repair-tokens", type=int, default=192, help="max new tokens of those answers")
    p.add_argument("--repair-per-step", type=int, default=2, help="repair examples added to each batch")
    p.add_argument("--repair-buffer", type=int, default=48, help="most recent repair examples kept")
    p.add_argument("--repair-weight", type=float, default=1.0, help="weight of the repair loss")
    p.add_argument("--repair-exit-weight", type=float, default=5.0,
                   help="extra weight of a repair example's first target token (the way out of the loop)")
    p.add_argument("--repair-target", choices=["continue", "wrap"], default="continue",
                   help="continue: newline, then the gold solution's remaining lines; wrap: newline, '#### N'")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: torch's default). 1 is fast for a model this small, keeps the "
                        "numbers reproducible, and does not collapse when other jobs share the cores")
    p.add_argument("--jobs", type=int, default=2, help="build this many models at once, one process each")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-questions", type=int, default=20,
                   help="after training, greedy-answer this many GSM8K test questions and record the result")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(msg, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    data = load_gsm8k(Path(args.data))
    print(f"GSM8K: {len(data['train'])} train, {len(data['test'])} test; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.jobs > 1 and len(args.models) > 1:
        # one process per model (each with --threads threads): the two builds are independent
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(args.jobs, len(args.models)),
                                 mp_context=mp.get_context("spawn")) as pool:
            futures = {name: pool.submit(build_one, name, data, args, _log) for name in args.models}
            models = {name: f.result() for name, f in futures.items()}
    else:
        models = {name: build_one(name, data, args, log=_log) for name in args.models}
    record = {
        "command": "python tools/build_tiny_models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": __import__("tokenizers").__version__},
        "models": models,
        "total_seconds": round(time.time() - t0, 1),
    }
    with open(Path(args.out) / "BUILD.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"done in {record['total_seconds']}s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
