"""The debate stage's own keys, checked before anything is submitted (the stage table runs it): each
setting against its field in :class:`DebateSettings`, then what no single field can say."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import ConfigError, project_path
from pipeline.data import load_problems
from pipeline.debate.settings import DebateSettings
from pipeline.run_config import RunConfig
from pipeline.settings import check


def check_debate(cfg: DictConfig) -> None:
    """The debate stage's keys (``debate.*``): types, ranges, choices, the prompts' placeholders (each
    declared on its field)."""
    check(cfg, "debate", DebateSettings)


def check_first_prompt(config: RunConfig, key: str, folder: Path, context: int) -> None:
    """A debate's first prompt (the system prompt and the solve prompt around the longest question of the run)
    and one turn must fit the model's context: a system prompt past it would run to a table of nonsense, or
    crawl. Tokenized only when its bytes could come near the context (a token is at least one byte)."""
    debate = config.debate
    longest = max((p.question for p in load_problems(project_path(config.data.path) / f"{config.data.split}.jsonl", config.limit)),
                  key=len, default="")
    system, user = debate.system_prompt, debate.prompts.solve.format(question=longest)
    if len(((system or "") + user).encode("utf-8")) + debate.max_new_tokens < context // 2:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokens = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if tokens + debate.max_new_tokens > context:
        raise ConfigError(f"debate.system_prompt: the first prompt (system prompt, solve prompt, longest question) is {tokens} "
                          f"tokens of models.{key} ({getattr(config.models, key)}), which with debate.max_new_tokens="
                          f"{debate.max_new_tokens} passes the {context} it holds (max_position_embeddings); shorten it")
