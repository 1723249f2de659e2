"""How long the commands that load no model take: ``python benchmarks/bench_commands.py [--repeat 5]``.

A status screen, a refused submission and ``--help`` are what people run while they wait; each must answer
in well under 2 s. Prints the median wall time of each over ``--repeat`` runs (a fresh interpreter each,
as a user starts them), and the heavy modules each one imported (none should be).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import runpy, sys; sys.argv = {argv!r}\ntry:\n    runpy.run_path({path!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules), file=sys.stderr)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = tempfile.mkdtemp()
    commands = {"status (no run)": ["status.py", "--results-dir", results], "refused: stage=nope": ["submit.py", "stage=nope"],
                "refused: shards=0": ["submit.py", "shards=0"], "submit.py --help": ["submit.py", "--help"]}
    report = {}
    for name, argv in commands.items():
        times, heavy = [], ""
        for _ in range(args.repeat):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, path=str(ROOT / "jobs" / argv[0]))],
                                  capture_output=True, text=True, cwd=ROOT)
            times.append(time.perf_counter() - started)
            heavy = done.stderr.strip().splitlines()[-1]
        report[name] = {"median_s": round(statistics.median(times), 3), "imported": heavy}
        print(f"{name:<22} {statistics.median(times):6.3f} s   {heavy}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
