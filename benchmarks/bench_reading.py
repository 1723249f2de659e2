"""Benchmark: the host time of reading replies' answers (``pipeline.answers.read_answer``), which a shard spends after
every generation while the GPU waits: a default run reads about 20,700 texts (every turn, solo reply and vote sample).

The texts are those of real runs: the 465 labelled replies of the suite's GPU runs (``tests/data/labelled_replies.jsonl``,
the default) or every text of the runs named (run folders, shard files or ``gpu_results.sh``'s ``*_records.jsonl.xz``,
read by ``same_texts.py``). Each text is read as a complete reply, as a shard reads most. The script uses only the
function's interface, so the same command times any version of it (``git stash`` between two runs):

    python benchmarks/bench_reading.py --json benchmarks/results/reading-cpu.json
    python benchmarks/bench_reading.py results/gpu-pair-again_records.jsonl.xz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.answers import read_answer  # noqa: E402
from report import emit  # noqa: E402  (benchmarks/, the script's own folder)
from same_texts import records, texts  # noqa: E402  (benchmarks/, the script's own folder)

LABELLED = Path(__file__).resolve().parent.parent / "tests" / "data" / "labelled_replies.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="runs whose texts to read (default: the labelled replies)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the texts; the fastest is reported")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.runs:
        corpus = [text for run in args.runs for record in records(run).values() for _, _, text in texts(record)]
    else:
        corpus = [json.loads(line)["text"] for line in LABELLED.read_text().splitlines()]
    best = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        for text in corpus:
            read_answer(text)
        best = min(best, time.perf_counter() - started)
    print(f"{len(corpus):,} texts in {best:.2f} s: {best / len(corpus) * 1e3:.3f} ms a text")
    emit({"texts": len(corpus), "source": [str(r) for r in args.runs] or [str(LABELLED.relative_to(LABELLED.parents[2]))],
          "seconds": round(best, 3), "ms_per_text": round(best / len(corpus) * 1e3, 4)}, args.json)


if __name__ == "__main__":
    main()
