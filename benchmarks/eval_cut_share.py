"""How many of an eval run's responses ran to the token limit: ``python benchmarks/eval_cut_share.py RUN_FOLDER``.

lm-eval returns a response's text, not its token count, so the eval stage's records cannot say whether a
response stopped on a stop string or was cut at ``eval.max_gen_toks``. This counts it after the fact: each
response is tokenized again with its model's tokenizer, and one within ``--margin`` tokens of the limit counts
as cut (a response that met a stop string ends there, well short of it; re-tokenizing a decoded text can move
its length by a token or two). RUN_FOLDER is a results folder of ``stage=eval`` (``results/<run_id>``); the
limit comes from its ``config.yaml`` unless ``--max-gen-toks`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import project_path  # noqa: E402
from pipeline.models.loading import load_tokenizer, prepare  # noqa: E402
from pipeline.models.registry import load_registry, resolve_model  # noqa: E402
from pipeline.runs import Run  # noqa: E402
from pipeline.shards import read_shard  # noqa: E402


def cut_share(run: Path, max_gen_toks: int | None, margin: int) -> list[dict[str, object]]:
    """Per model and task: responses, how many reached ``max_gen_toks - margin`` tokens, and their mean length."""
    folders = Run(run)
    config = folders.stage_config("eval")  # a chain's eval step has its own settings
    limit = max_gen_toks or config["eval"]["max_gen_toks"]
    if not limit:
        raise SystemExit(f"{run}/config.yaml has eval.max_gen_toks null (each task's own): give --max-gen-toks")
    registry = load_registry()
    cache = project_path(config["paths"]["model_cache"])  # as the run resolved it: relative to the project root
    rows = []
    for model_dir in sorted(p for p in folders.stage_dir("eval").iterdir() if p.is_dir()):
        spec = resolve_model(f"models.{model_dir.name}", config["models"][model_dir.name], registry, config["results_dir"])
        tokenizer = load_tokenizer(prepare(spec, cache), spec)
        for task_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            lengths = [len(tokenizer(record["response"], add_special_tokens=False).input_ids)
                       for shard in sorted(task_dir.glob("shard-*.jsonl")) for record in read_shard(shard)]
            cut = sum(n >= limit - margin for n in lengths)
            rows.append({"model": f"{spec.name} ({model_dir.name})", "task": task_dir.name, "responses": len(lengths),
                         "cut": cut, "limit": limit, "mean_tokens": sum(lengths) / max(len(lengths), 1)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an eval run's results folder")
    parser.add_argument("--max-gen-toks", type=int, default=None, help="the limit (default: the run's eval.max_gen_toks)")
    parser.add_argument("--margin", type=int, default=8, help="tokens short of the limit that still count as cut")
    args = parser.parse_args()
    print("| model | task | responses | cut at the limit | share | mean tokens |\n|---|---|---|---|---|---|")
    for row in cut_share(args.run, args.max_gen_toks, args.margin):
        share = 100 * row["cut"] / row["responses"] if row["responses"] else 0.0  # type: ignore[operator]
        print(f"| {row['model']} | {row['task']} | {row['responses']} | {row['cut']} (at {row['limit']}) | {share:.1f}% "
              f"| {row['mean_tokens']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
