"""Loading a chat model and its tokenizer, the real way, from a hub id, a local folder or a converted GGUF.

Loading happens once per shard task. The tokenizer is set up for batched chat generation: left padding,
a pad token, and the full set of end-of-turn token ids, because stopping only on ``eos`` is what made the
seed notebook hang on Llama-3 (which ends a turn with ``<|eot_id|>``, not ``<|end_of_text|>``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import project_path
from pipeline.models.device import pick_dtype
from pipeline.models.gguf import ensure_hf_folder
from pipeline.models.int8 import quantize_int8
from pipeline.models.registry import ModelSpec
from pipeline.models.wheels import gguf_source_from_config

log = logging.getLogger(__name__)

# End-of-turn and end-of-text markers of the chat formats the suite meets (Llama-3, ChatML/Qwen, Gemma,
# Mistral/Llama-2). Those that are special tokens of a tokenizer stop generation (in Qwen's vocabulary
# "</s>" is ordinary text, for instance).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<end_of_turn>", "</s>")


@dataclass
class ChatModel:
    """A loaded model with what batched chat generation needs."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_ids: list[int]

    @property
    def device(self) -> torch.device:
        return self.model.device


def prepare(spec: ModelSpec, cache_dir: Path) -> str:
    """Where ``from_pretrained`` finds the model: a folder (converted once for GGUF sources) or a hub id."""
    if spec.source == "gguf":
        return str(ensure_hf_folder(gguf_source_from_config(spec.gguf), cache_dir, spec.name, log=log.info))
    if spec.source == "hub":
        return str(spec.hub_id)
    return str(project_path(spec.path or ""))


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, extra: tuple[str, ...] = ()) -> list[int]:
    """All ids that end a turn: the generation config's eos ids, the tokenizer's eos, and known markers."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id if model.generation_config is not None else None
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(tokenizer.all_special_tokens)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in special and t in vocab)
    ids.update(vocab[t] for t in extra if t in vocab)
    return sorted(ids)


def nf4_config(compute_dtype: torch.dtype):
    """4-bit NF4 weights through bitsandbytes (QLoRA's format), computing in ``compute_dtype``."""
    try:
        import bitsandbytes  # noqa: F401  (fail here, with advice, rather than inside from_pretrained)
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise RuntimeError("4-bit loading needs bitsandbytes: pip install -e '.[gpu]'") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def _with_adapter(model: PreTrainedModel, spec: ModelSpec) -> PreTrainedModel:
    """Applies a PEFT adapter; merged into the weights (plain inference speed) unless the base is 4-bit,
    where merging would round the adapter into the quantised weights."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, spec.adapter)
    return peft_model if spec.load_in_4bit else peft_model.merge_and_unload()


def load_tokenizer(location: str, spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (its eos where it has none): batches are padded."""
    tokenizer = AutoTokenizer.from_pretrained(location, revision=spec.revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_weights(location: str, spec: ModelSpec, dtype: torch.dtype, device: torch.device, load_in_4bit: bool) -> PreTrainedModel:
    """``from_pretrained`` with the suite's settings: dtype, SDPA attention, the spec's revision; in 4-bit
    NF4 the weights are placed on ``device`` as they load (other models are moved by the caller)."""
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if load_in_4bit:
        kwargs["quantization_config"] = nf4_config(dtype)
        kwargs["device_map"] = {"": device}
    return AutoModelForCausalLM.from_pretrained(location, **kwargs)


def load_chat_model(spec: ModelSpec, cache_dir: Path, dtype_name: str, device: torch.device) -> ChatModel:
    """Loads weights (4-bit through bitsandbytes where the spec says so) and a left-padding tokenizer."""
    location = prepare(spec, cache_dir)
    dtype = pick_dtype(dtype_name, device)
    tokenizer_location = spec.adapter if spec.adapter and (Path(spec.adapter) / "tokenizer_config.json").is_file() else location
    tokenizer = load_tokenizer(tokenizer_location, spec)
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise RuntimeError(f"{spec.name} ({location}) has no chat template; the debate needs a chat model")
    model = load_weights(location, spec, dtype, device, spec.load_in_4bit)
    if not spec.load_in_4bit:
        model.to(device)
    if spec.adapter:
        model = _with_adapter(model, spec)
    if dtype_name == "int8":
        model = quantize_int8(model)
    model.eval()
    stop_ids = stop_token_ids(tokenizer, model, spec.stop_tokens)
    log.info("loaded %s from %s (%s, %s); stop ids %s", spec.label, location, "int8 linear layers" if dtype_name == "int8" else dtype, device, stop_ids)
    return ChatModel(name=spec.label, model=model, tokenizer=tokenizer, stop_ids=stop_ids)
