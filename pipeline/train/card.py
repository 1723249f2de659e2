"""The adapter folder's model card (``README.md``): what the hub shows and what ``hf upload`` sends as is.

The YAML front matter is what the hub indexes (base model, library, tags, datasets); the body says what
was trained, on what, with which ORPO settings, for how many steps and how it ended, from the config the
job ran with and its metrics file. In a ``stage=all`` chain the fine-tuned eval's table is added at the
end of the chain (``add_eval_table``), so the card carries the adapter's measured accuracy too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.files import write_atomic
from pipeline.markdown import code, escape
from pipeline.run_config import RunConfig
from pipeline.train.settings import TrainSettings

CARD = "README.md"
EVAL_HEADING = "## Evaluation"
# The metrics file's last line, as the card shows it.
FINAL_METRICS = (("loss", "ORPO loss"), ("nll_loss", "NLL of the chosen answer"), ("log_odds_ratio", "log odds ratio"),
                 ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))


# A hub id as the front matter may hold it (YAML plain scalar, no markdown): owner/name of word characters.
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _hub_id(name: str) -> str | None:
    """A hub id (``owner/name``) the hub can link, or None for a registry name or a local folder."""
    return name if _HUB_ID.fullmatch(name) and not name.startswith((".", "-")) and not Path(name).exists() else None


def _front_matter(base: str, hub_id: str | None, train: TrainSettings) -> str:
    lines = ["---"]
    if hub_id or _hub_id(base):
        lines.append(f"base_model: {hub_id or base}")
    lines += ["library_name: peft", "pipeline_tag: text-generation", "tags:",
              *(f"- {tag}" for tag in ("orpo", "trl", "peft", "lora", "gsm8k", "gsm8k-slurm"))]
    dataset = "openai/gsm8k" if train.dataset == "gsm8k" else _hub_id(train.dataset)
    if dataset:
        lines += ["datasets:", f"- {dataset}"]
    return "\n".join([*lines, "---"])


def _settings(train: TrainSettings, summary: dict[str, Any], seed: int) -> list[str]:
    lora = train.lora
    rows = [("beta (ORPO's lambda)", train.beta), ("learning rate", f"{train.learning_rate} ({train.lr_scheduler_type}, warm-up {train.warmup_steps})"),
            ("epochs / max steps", f"{train.num_train_epochs} / {train.max_steps or '-'}"),
            ("global batch", f"{summary['global_batch']} ({summary['per_device_batch_size']} per device x {summary['gradient_accumulation_steps']} "
                             f"accumulation x {summary['processes']} process(es))"),
            ("max length (tokens)", train.max_length),
            ("LoRA", f"r {lora.r}, alpha {lora.lora_alpha}, dropout {lora.lora_dropout}, on {', '.join(map(escape, lora.target_modules))}"),
            ("precision", f"{summary['precision']}{', base in 4-bit NF4' if summary['load_in_4bit'] else ''}"),
            ("DeepSpeed", escape(summary["deepspeed"] or "-")), ("device", escape(summary["device"])), ("seed", seed)]
    return ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def model_card(run_id: str, config: RunConfig, summary: dict[str, Any], last: dict[str, Any], hub_id: str | None = None) -> str:
    """The card's text; ``last`` is the metrics file's last line (empty when nothing was logged), ``hub_id``
    the base's hub repo when the registry names one."""
    train = config.train
    base, model = summary["base"], summary["model"]
    data = f"{code(train.dataset)} (split {code(train.dataset_split)}), {summary['pairs']} preference pairs"
    if train.mine_from:
        data += (f", {summary['mined_rejected']} of them with a rejected reply and {summary['mined_chosen']} with a chosen "
                 f"reply of the model's own, mined from debate run {code(train.mine_from)}")
    base_md, model_md = escape(base), escape(model)
    lines = [_front_matter(base, hub_id, train), "", f"# {model_md}: ORPO LoRA adapter (run {run_id})", "",
             f"A PEFT LoRA adapter on **{base_md}**, trained with ORPO (TRL) by gsm8k-slurm, run `{run_id}` ({code(f'{run_id}/train/{model}')}).", "",
             f"- **Base model**: {base_md}",
             f"- **Data**: {data}",
             f"- **Steps**: {summary['steps']} optimizer steps" + (f" (resumed from step {summary['resumed_from']})" if summary["resumed_from"] else ""),
             f"- **Training time**: {summary['seconds']} s", "",
             "## ORPO settings", "", *_settings(train, summary, config.seed), "",
             "## Final metrics", "",
             f"Mean training loss {summary['train_loss']}. At the last logged step ({last.get('step', '-')}):", "",
             "| metric | value |", "|---|---|",
             *(f"| {title} | {last[key]:.4f} |" for key, title in FINAL_METRICS if isinstance(last.get(key), (int, float))), "",
             "## Use", "", "```python", "from peft import AutoPeftModelForCausalLM", "",
             'model = AutoPeftModelForCausalLM.from_pretrained("<this repo or folder>")  # loads its base model under it', "```", "",
             f"In gsm8k-slurm: {code(f'models.a={run_id}/train/{model}')}.", ""]
    return "\n".join(lines)


def write_card(folder: Path, run_id: str, config: RunConfig, summary: dict[str, Any], metrics: list[dict[str, Any]],
               hub_id: str | None = None) -> Path:
    """Writes ``<adapter folder>/README.md``."""
    path = folder / CARD
    write_atomic(path, model_card(run_id, config, summary, metrics[-1] if metrics else {}, hub_id))
    return path


def add_eval_table(folder: Path, table: str) -> bool:
    """Puts (or replaces) the card's evaluation section: ``table`` is the fine-tuned eval step's Markdown,
    its title line dropped. False when the folder has no card (an adapter trained before cards existed)."""
    path = folder / CARD
    if not path.exists():
        return False
    card = path.read_text(encoding="utf-8").split(f"\n{EVAL_HEADING}\n", 1)[0].rstrip("\n")
    body = table.split("\n", 1)[1].strip() if table.startswith("# ") else table.strip()
    write_atomic(path, f"{card}\n\n{EVAL_HEADING}\n\nGSM8K, lm-evaluation-harness, measured by the same run:\n\n{body}\n")
    return True
