"""report.html on a real tiny debate, opened in a real headless browser (Debian's ``chromium``): the page
renders, each filter shows exactly its questions, a question opens turn by turn, model text stays text, and
nothing is fetched. The screenshot is saved to ``$GSM8K_TEST_ARTIFACTS`` (default: the test's tmp folder,
printed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pipeline.answers import same_answer
from pipeline.reduce.debate import reduce_debate
from pipeline.reduce.train import reduce_train
from pipeline.reduce.questions import FILTERS
from pipeline.runs import Run
from pipeline.shards import read_shard
from pipeline.stages import saved_task
from pipeline.submit import submit
from pipeline.summary import write_run_readme
from tests.conftest import copy_run, tiny_overrides

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run installs it)")
# Model text that would end the data block, run a script or add markup were it not escaped.
HOSTILE = "</script><script>document.title='owned'</script><b id=\"bold\">bold</b> <!-- & \u2028"


def _shards(run: Path) -> list[Path]:
    return sorted((run / "debate").glob("shard-*.jsonl"))


def _records(run: Path) -> list[dict]:
    return [r for f in _shards(run) for r in read_shard(f)]


def _set_gold(record: dict, gold: str) -> None:
    """Another gold answer for a record, with every verdict in it made to agree."""
    record["gold"] = gold
    record["correct"] = same_answer(record["final_answer"], gold)
    for entry in [*record["solo"].values(), *record["vote"].values()]:
        entry["correct"] = same_answer(entry["answer"], gold)


def _make_every_case(records: list[dict]) -> None:
    """Golds chosen so that a debate fixes model a's answer and another breaks a right one (the tiny models
    are rarely right on their own), and one turn of hostile text."""
    movable = [r for r in records if r["final_answer"] is not None and r["first_answers"]["a"] is not None
               and not same_answer(r["final_answer"], r["first_answers"]["a"])]
    assert len(movable) >= 2, "the tiny run needs two debates whose final answer differs from model a's first"
    _set_gold(movable[0], movable[0]["final_answer"])
    _set_gold(movable[1], movable[1]["first_answers"]["a"])
    records[0]["turns"][-1]["text"] = HOSTILE


def expected(records: list[dict]) -> dict[str, set[int]]:
    """Each filter's questions, from the records by the filters' stated meanings."""
    def any_turn(r: dict, test) -> bool:
        return any(test(t["answer"]) for t in r["turns"])
    return {
        "fixed": {r["index"] for r in records if not same_answer(r["first_answers"]["a"], r["gold"]) and r["correct"]},
        "broke": {r["index"] for r in records if any_turn(r, lambda a: same_answer(a, r["gold"])) and not r["correct"]},
        "never_agreed": {r["index"] for r in records if not r["agreed"]},
        "unparsable": {r["index"] for r in records if r["final_answer"] is None or any_turn(r, lambda a: a is None)},
        "cut": {r["index"] for r in records if any(not t["stopped"] for t in r["turns"])},
    }


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny debate (8 problems, in process), its golds moved to hold every case, reduced again."""
    results = tmp_path_factory.mktemp("report") / "results"
    submit(tiny_overrides(results, "limit=8", "shards=1", "cluster=debug", "run_id=report"))
    run = results / "report"
    by_file = {f: read_shard(f) for f in _shards(run)}
    _make_every_case([r for rows in by_file.values() for r in rows])
    for f, rows in by_file.items():
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reduce_debate(saved_task(Run(run), "debate"))
    return run


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("GSM8K_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"report test artifacts: {folder}")
    return folder


def _chromium(tmp: Path, url: str, *args: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
                           "--hide-scrollbars", *args, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _shown(dom: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr class="q" data-index="(\d+)"', dom)]


def test_the_page_holds_the_tables_plot_and_config_and_fetches_nothing(report_run: Path) -> None:
    page = (report_run / "report.html").read_text(encoding="utf-8")
    assert "<td>debate</td>" in page and "<td>model a (tiny-llama) alone</td>" in page and "<th>how the debate agreed</th>" in page
    plots = sorted(report_run.glob("debate_*.png"))
    assert len(plots) == 2 and page.count('src="data:image/png;base64,') == len(plots), "every plot of the step, inline"
    assert "<h2 id=\"config\">Config</h2>" in page and "max_rounds: 2" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing may be fetched"
    assert "<link" not in page and HOSTILE not in page, "model text must reach the page escaped"


@needs_chromium
def test_the_browser_renders_and_each_filter_shows_its_questions(report_run: Path, tmp_path: Path) -> None:
    records = _records(report_run)
    url = (report_run / "report.html").as_uri()
    everything = _chromium(tmp_path, url, "--dump-dom")
    assert sorted(_shown(everything)) == sorted(r["index"] for r in records)
    assert "<title>report: debate</title>" in everything and 'id="bold"' not in everything, "hostile text ran"
    wanted = expected(records)
    assert wanted["fixed"] and wanted["broke"] and wanted["never_agreed"], wanted
    summary = json.loads((report_run / "debate_accuracy.json").read_text())["debate"]
    assert len(wanted["fixed"]) == summary["flips_wrong_to_right"]
    for key, _, _ in FILTERS:
        dom = _chromium(tmp_path, f"{url}#filter={key}", "--dump-dom")
        assert set(_shown(dom)) == wanted[key], key
        assert f"{len(wanted[key])} of {len(records)} questions" in dom


@needs_chromium
def test_a_question_opens_turn_by_turn_and_the_screenshot_is_saved(report_run: Path, tmp_path: Path, artifacts: Path) -> None:
    record = _records(report_run)[0]
    url = f"{(report_run / 'report.html').as_uri()}#filter=never_agreed&q={record['index']}"
    dom = _chromium(tmp_path, url, "--dump-dom")
    opened = dom.split(f'<tr class="exchange" data-index="{record["index"]}">', 1)[1].split("</tr>", 1)[0]
    heads = re.findall(r"<h4>round (\d) · model ([ab]) \(", opened)
    assert heads == [(str(t["round"]), t["model"]) for t in record["turns"]]
    assert "&lt;/script&gt;&lt;script&gt;document.title='owned'&lt;/script&gt;&lt;b id=\"bold\"&gt;" in opened
    shot = artifacts / "report.png"
    # A window that holds the whole page: the page then need not scroll to the open question (headless chromium's
    # screenshot of a scrolled page painted only its images: text, tables and the question came out white).
    _chromium(tmp_path, url, "--window-size=1280,6000", f"--screenshot={shot}")
    with Image.open(shot) as image:
        histogram = image.convert("L").histogram()
    assert 1 - histogram[255] / sum(histogram) > 0.1, "the page painted mostly white: its text and tables are missing"


def test_a_chain_page_links_its_steps_pages(report_run: Path) -> None:
    chain = copy_run(report_run, "chain")
    (chain / "report.html").unlink()
    config = chain / "config.yaml"
    config.write_text(config.read_text().replace("stage: debate", "stage: all"))
    reduce_debate(saved_task(Run(chain), "debate"))
    write_run_readme(saved_task(Run(chain), "summary"))
    page = (chain / "report.html").read_text(encoding="utf-8")
    assert '<a href="debate_report.html">debate_report.html</a>' in page and (chain / "debate_report.html").exists()
    shown = page.count('src="data:image/png;base64,')
    assert "No table: the train step did not finish" in page and shown == len(list(chain.glob("debate_*.png"))) == 2


def _data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="questions-data">(.*?)</script>', page, re.S).group(1))


def test_an_eval_page_shows_each_question_with_every_models_response(tmp_path: Path) -> None:
    results = tmp_path / "results"
    submit(["stage=eval", "models=tiny", f"results_dir={results}", "tasks=[gsm8k]", "limit=3", "shards=1", "eval.max_gen_toks=16",
            "cluster=debug", "cluster.cpus_per_task=1", "run_id=eval"])
    data = _data((results / "eval" / "report.html").read_text(encoding="utf-8"))
    assert [r["index"] for r in data["rows"]] == [0, 1, 2] and not data["filters"]
    assert data["methods"] == ["tiny-llama (a) gsm8k strict-match", "tiny-llama (a) gsm8k flexible-extract",
                               "tiny-qwen2 (b) gsm8k strict-match", "tiny-qwen2 (b) gsm8k flexible-extract"]
    first = data["rows"][0]
    assert first["question"].startswith("Janet") and first["gold"] == "18"
    by_model = {t["title"]: t for t in first["turns"]}
    assert set(by_model) == {"model a (tiny-llama) on gsm8k", "model b (tiny-qwen2) on gsm8k"}
    response = read_shard(results / "eval" / "eval" / "a" / "gsm8k" / "shard-00000-of-00001.jsonl")[0]["response"]
    assert by_model["model a (tiny-llama) on gsm8k"]["text"] == response


def test_a_train_page_holds_its_table_and_config_without_a_browser(report_run: Path) -> None:
    run = copy_run(report_run, "untrained")
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("stage: debate", "stage: train"))
    reduce_train(saved_task(Run(run), "train"))
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<strong>Not trained yet: tiny-llama, tiny-qwen2.</strong>" in page and "<th>train loss</th>" in page
    assert 'id="questions-data"' not in page and "<h2 id=\"config\">Config</h2>" in page
