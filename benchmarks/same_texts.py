"""Which texts two debate runs share: every turn, model b's solo reply and every vote sample of each question, compared
run against run, and counted by kind, before and after a question index (``--split``: the last group of a run, whose
batching follows the free memory, apart from the full groups).

Each run is a run folder (``results/<run_id>``: its ``debate/shard-*.jsonl``), a shard file, or the compressed records
``gpu_results.sh`` brings back (``<run_id>_records.jsonl.xz``), read as the reducer reads a shard: a torn last line
skipped, a corrupt one named. Both runs must hold the same questions, unless ``--common``: then only the questions both
hold are compared (a run stopped early, beside a whole one).

    python benchmarks/same_texts.py results/gpu-pair results/gpu-pair-votes --split 1280
"""

from __future__ import annotations

import argparse
import lzma
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.shards import parse_shard, read_shard  # noqa: E402
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)


def records(where: Path) -> dict[int, dict[str, Any]]:
    """A run's records by question index."""
    if where.is_dir():
        rows = [r for shard in sorted((where / "debate").glob("shard-*.jsonl")) for r in read_shard(shard)]
    elif where.suffix == ".xz":
        rows = parse_shard(where, lzma.decompress(where.read_bytes()))
    else:
        rows = read_shard(where)
    return {r["index"]: r for r in rows}


def texts(record: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(kind, place, text) of every generated text of a record: turns, solo replies, vote samples."""
    for n, turn in enumerate(record["turns"]):
        yield "turn", str(n), turn["text"]
    for model, solo in record["solo"].items():
        if "text" in solo:  # model a's solo answer is its first turn, kept there
            yield f"solo {model}", model, solo["text"]
    for model, vote in record["vote"].items():
        for n, sample in enumerate(vote["replies"]):
            yield f"vote {model}", f"{model}{n}", sample["text"]


def compare(first: dict[int, dict[str, Any]], second: dict[int, dict[str, Any]], questions: list[int]) -> dict[str, Any]:
    """Texts in either run, texts that differ (by kind) and the questions with any, over ``questions``."""
    total, differ, where = 0, {}, set()
    for q in questions:
        one = {(kind, place): text for kind, place, text in texts(first[q])}
        two = {(kind, place): text for kind, place, text in texts(second[q])}
        total += len(one.keys() | two.keys())
        for key in one.keys() | two.keys():
            if one.get(key) != two.get(key):
                differ[key[0]] = differ.get(key[0], 0) + 1
                where.add(q)
    return {"questions": len(questions), "texts": total, "differ": sum(differ.values()), "by_kind": differ, "questions_with_any": len(where)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--split", type=int, help="report questions below this index and from it apart")
    parser.add_argument("--common", action="store_true", help="compare only the questions both runs hold")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    first, second = records(args.first), records(args.second)
    if first.keys() != second.keys() and not args.common:
        parser.error(f"the runs hold other questions ({len(first)} and {len(second)}; {len(first.keys() ^ second.keys())} in one "
                     "only): --common compares the questions both hold")
    common = first.keys() & second.keys()
    last = max(first) + 1
    spans = [range(0, args.split), range(args.split, last)] if args.split else [range(0, last)]
    report = {"first": str(args.first), "second": str(args.second), "common": len(common), "spans": []}
    for span in spans:
        result = {"from": span.start, "to": span.stop - 1, **compare(first, second, [q for q in span if q in common])}
        report["spans"].append(result)
        print(f"questions {span.start}-{span.stop - 1}: {result['differ']} of {result['texts']} texts differ, on "
              f"{result['questions_with_any']} questions {result['by_kind'] or ''}".rstrip())
    emit(report, args.json)


if __name__ == "__main__":
    main()
