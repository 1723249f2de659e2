"""wandb and the hub on the real stack: the debate and eval reducers' tables in an offline wandb run (read
back in wandb's own record format), ``wandb sync`` reading that run and going for the network, a wandb
failure that keeps the tables; the adapter's model card, and its push to a local stand-in for the hub with
the token in no file and no line of output."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.reduce.debate import reduce_debate
from pipeline.runs import Run
from pipeline.stages import saved_task
from pipeline.submit import submit
from pipeline.train.hub import push_adapter
from pipeline.wandb_run import step_run_id
from tests.conftest import ROOT, copy_run, tiny_overrides
from tests.test_eval_e2e import eval_overrides
from tests.test_train import train_overrides

# wandb's run file: a LevelDB-style log (a 7-byte file header, then 32 KiB blocks of records, each with a
# 7-byte header: crc32, length, type) of protobuf Records. wandb 0.31 has no Python reader left.
BLOCK, HEADER, FULL, LAST = 32768, 7, 1, 4


def wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks, records = path.read_bytes(), HEADER, b"", []
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER]) if left >= HEADER else (0, 0, 0)
        if left < HEADER or (kind == 0 and length == 0):
            pos += left
            continue
        chunks += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def offline_folders(run: Path, where: str) -> list[Path]:
    """Every offline run folder of a step, oldest first: ``offline-run-<time>-<id>``, and when a reduce
    started in the same second as an earlier one (wandb's time is in seconds), ``offline-run-<time>-<id>-<n>``
    (wandb numbers it rather than replace the earlier folder)."""
    run_id = step_run_id(run, where)
    found = []
    for folder in (run / "wandb").glob(f"offline-run-*-{run_id}*"):
        stamp, _, rest = folder.name.removeprefix("offline-run-").partition(f"-{run_id}")
        if rest == "" or (rest.startswith("-") and rest[1:].isdigit()):
            found.append(((stamp, int(rest[1:] or 0)), folder))
    return [folder for _, folder in sorted(found)]


def read_offline(folder: Path, run_id: str) -> dict[str, Any]:
    """What one offline run folder's records hold: the run, the final summary, the history."""
    records = wandb_records(folder / f"run-{run_id}.wandb")
    summary: dict[str, Any] = {}
    history = []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    [header] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return {"run": header, "summary": summary, "history": history}


def offline_run(run: Path, where: str) -> tuple[Path, dict[str, Any]]:
    """The step's one offline run folder (one reduce) and what its records hold."""
    [folder] = offline_folders(run, where)
    return folder, read_offline(folder, step_run_id(run, where))


def table_file(folder: Path, name: str) -> dict[str, Any]:
    [path] = (folder / "files" / "media" / "table" / "table").glob(f"{name}_*.table.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny debate and a tiny eval with wandb offline."""
    results = tmp_path_factory.mktemp("wandb") / "results"
    results.mkdir()
    submit(tiny_overrides(results, "limit=2", "cluster=debug", "run_id=talk", "wandb.mode=offline"))
    submit(eval_overrides(results, "limit=2", "tasks=[gsm8k]", "cluster=debug", "run_id=exam", "wandb.mode=offline"))
    return results


def test_the_debate_reducer_logs_its_tables_rounds_and_plot(runs: Path) -> None:
    run = runs / "talk"
    tables = json.loads((run / "debate_accuracy.json").read_text())
    folder, logged = offline_run(run, "debate")
    assert (logged["run"].run_group, logged["run"].display_name, logged["run"].job_type) == ("talk", "talk-debate", "debate")
    assert logged["run"].project == "gsm8k-slurm"
    rounds = [h for h in logged["history"] if "per_round/accuracy" in h]
    assert [(h["round"], h["per_round/accuracy"]) for h in rounds] == [(i, r["accuracy"]) for i, r in enumerate(tables["per_round"], 1)]
    for row in tables["methods"]:
        assert logged["summary"][f"methods/{row['method']}/accuracy"] == row["accuracy"]
        assert logged["summary"][f"methods/{row['method']}/n"] == row["n"] == 2
    assert logged["summary"]["complete"] is True
    methods = table_file(folder, "methods")
    assert [r[methods["columns"].index("method")] for r in methods["data"]] == [r["method"] for r in tables["methods"]]
    assert list((folder / "files" / "media" / "images" / "plot").glob("debate_accuracy_per_round_*.png"))


def test_a_second_reduce_logs_to_the_same_wandb_run(runs: Path) -> None:
    """The id is the step's (and the run folder's): a re-reduce resumes that wandb run, never starts another,
    and never loses the earlier one: offline it is a second folder of the same id, each complete on disk when
    its reduce returns (whether or not both started in the same second), which ``wandb sync`` uploads in order."""
    run = copy_run(runs / "talk", "talk-again")
    shutil.rmtree(run / "wandb", ignore_errors=True)
    for count in (1, 2):
        reduce_debate(saved_task(Run(run), "debate"))
        folders = offline_folders(run, "debate")
        assert len(folders) == count, folders
        logged = read_offline(folders[-1], step_run_id(run, "debate"))
        assert logged["run"].run_id == step_run_id(run, "debate") and logged["summary"]["complete"] is True
        assert logged["summary"]["methods/debate/n"] == 2
    assert read_offline(folders[0], step_run_id(run, "debate"))["summary"]["complete"] is True, "the first reduce's run is kept"


def test_the_eval_reducer_logs_its_table(runs: Path) -> None:
    run = runs / "exam"
    rows = json.loads((run / "eval_accuracy.json").read_text())["rows"]
    folder, logged = offline_run(run, "eval")
    assert (logged["run"].run_group, logged["run"].job_type) == ("exam", "eval")
    for row in rows:
        label = f"{row['model']} {row['key']} {row['task']} {row['filter']}"
        assert logged["summary"][f"accuracy/{label}/accuracy"] == row["accuracy"]
    table = table_file(folder, "accuracy")
    assert len(table["data"]) == len(rows) and "ci95_low" in table["columns"]
    assert list((folder / "files" / "media" / "images" / "plot").glob("eval_accuracy_*.png"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_wandb_sync_reads_the_offline_run_and_goes_for_the_network(runs: Path, tmp_path: Path) -> None:
    """No server answers on the port: sync reads the run, logs in with the key and starts the upload, which
    retries for ever, so the test stops it there."""
    folder, _ = offline_run(runs / "talk", "debate")
    env = {**os.environ, "WANDB_BASE_URL": f"http://127.0.0.1:{_free_port()}", "WANDB_API_KEY": "k" * 40,
           "WANDB_CONFIG_DIR": str(tmp_path), "HOME": str(tmp_path)}
    env.pop("WANDB_MODE")
    sync = subprocess.Popen([str(Path(sys.executable).with_name("wandb")), "sync", str(folder)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in sync.stdout:
            seen.append(line)
            if f"setting up run {step_run_id(runs / 'talk', 'debate')}" in line:
                break
    finally:
        sync.kill()
        sync.wait()
    assert f"setting up run {step_run_id(runs / 'talk', 'debate')}" in "".join(seen), "".join(seen)


def test_a_wandb_failure_is_one_warning_and_the_tables_stay(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """wandb online with no key: refused, the reducer still writes every table."""
    run = copy_run(runs / "talk", "talk-online")
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("mode: offline", "mode: online"))
    for name in ("debate_accuracy.md", "debate_accuracy.json", "debate_accuracy_per_round.png"):
        (run / name).unlink()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_free_port()}")
    with caplog.at_level(logging.WARNING, logger="pipeline.reduce.wandb_log"):
        result = reduce_debate(saved_task(Run(run), "debate"))
    assert result["complete"]
    assert all((run / name).exists() for name in ("debate_accuracy.md", "debate_accuracy.json", "debate_accuracy_per_round.png"))
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pipeline.reduce.wandb_log"]
    assert warning.startswith("wandb: debate not logged (UsageError: ") and "\n" not in warning


class Hub(ThreadingHTTPServer):
    """The few endpoints huggingface_hub's create_repo and upload_folder call, every file sent inline (the
    preupload answer says "regular" for each, so nothing goes to LFS or xet); each request is kept."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.requests: list[tuple[str, str, str | None]] = []
        self.files: dict[str, bytes] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _answer(self, body: bytes) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path == "/api/repos/create":
            name = json.loads(body)
            return self._send(200, {"url": f"{self.server.url}/{name['organization']}/{name['name']}"})
        if self.path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
            return self._send(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40})
        self._send(404, {"error": f"no {self.command} {self.path} here"})


TOKEN = "hf_SECRETpushtoken0123456789abcdef"


def test_a_trained_adapter_has_a_card_and_is_pushed_with_the_token_from_the_environment_only(tmp_path: Path) -> None:
    hub = Hub()
    results = tmp_path / "results"
    # The hub's address is the stand-in's: with HF_HUB_OFFLINE=0 for this job only, nothing else is reachable.
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    args = train_overrides(results, "cluster=debug", "run_id=pushed", "train.max_steps=2", "train.push_to_hub=tester/tiny-orpo", "wandb.mode=offline")
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "submit.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    hub.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    folder = results / "pushed" / "train" / "tiny-llama"
    card = (folder / "README.md").read_text()
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert card.startswith("---\nlibrary_name: peft\n") and "- orpo\n- trl\n" in card and "datasets:\n- openai/gsm8k\n---\n" in card
    for fact in ("**Base model**: tiny-llama", "- **Steps**: 2 optimizer steps", "`gsm8k` (split `train`), 16 preference pairs",
                 "| beta (ORPO's lambda) | 0.1 |", "| learning rate | 0.001 (linear, warm-up 0.1) |", "| LoRA | r 16, alpha 32, dropout 0.05, on q_proj",
                 "| precision | fp32 |", f"| reward margin | {metrics[-1]['rewards/margins']:.4f} |", f"At the last logged step ({metrics[-1]['step']})"):
        assert fact in card, fact
    assert hub.files["README.md"].decode() == card
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "metrics.jsonl"):
        assert hub.files[name] == (folder / name).read_bytes(), name
    assert not [p for p in hub.files if p.startswith(("checkpoints/", "wandb/"))]
    posts = [r for r in hub.requests if r[0] == "POST"]
    assert [p for _, p, _ in posts if "/commit/" in p or "/repos/" in p] == ["/api/repos/create", "/api/models/tester/tiny-orpo/commit/main"]
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in posts)
    assert json.loads((folder / "training.json").read_text())["hub"] == f"{hub.url}/tester/tiny-orpo/commit/{'0' * 40}"
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked and TOKEN not in done.stdout + done.stderr, leaked


def test_a_failed_push_is_one_warning_and_the_adapter_stays(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The tests' own HF_HUB_OFFLINE=1 refuses every hub call: the push's failure, as any other, is a line."""
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "README.md").write_text("a card\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.train.hub"):
        assert push_adapter(folder, "tester/tiny-orpo", "run") is None
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pipeline.train.hub"]
    assert warning.startswith("train.push_to_hub: tiny-llama not pushed to tester/tiny-orpo (") and "\n" not in warning
    assert warning.endswith(f"it stays in {folder}") and (folder / "README.md").read_text() == "a card\n"


# A debug run in one process: training (transformers' callback opens a run from the environment and leaves it
# open), then a reducer's run. Run in a fresh interpreter: wandb keeps a process's first settings.
_TRAIN_THEN_REDUCE = """
import sys
from pathlib import Path

import wandb

from pipeline.run_config import load
from pipeline.wandb_run import init_step_run, train_environment

folder = Path(sys.argv[1])
config = load({"wandb": {"mode": "offline", "project": "gsm8k-slurm"}}, {})
with train_environment(config, "trained", folder / "train") as report_to:
    assert report_to == ["wandb"]
    wandb.init(settings=wandb.Settings(silent=True, console="off"))  # as transformers' callback does
print("open after training:", wandb.run is not None)
step = init_step_run(config, folder / "run", "debate")
step.summary["complete"] = True
step.finish()
"""


def test_training_leaves_no_wandb_run_open_for_the_reducers_after_it(tmp_path: Path) -> None:
    """transformers' callback leaves its run open; a debug run trains in the submitter, and the reducers' runs
    opened after it in that process wrote no file (seen in CI): training ends with no run open, its offline
    run complete on disk, and the reducer's run after it is complete on disk when it returns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "config"),
               WANDB_CACHE_DIR=str(tmp_path / "cache"), WANDB_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", _TRAIN_THEN_REDUCE, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "open after training: False" in done.stdout
    [trained] = (tmp_path / "train" / "wandb").glob("offline-run-*/run-*.wandb")
    assert [r.run.run_group for r in wandb_records(trained) if r.WhichOneof("record_type") == "run"] == ["trained"]
    [folder] = offline_folders(tmp_path / "run", "debate")
    assert read_offline(folder, step_run_id(tmp_path / "run", "debate"))["summary"]["complete"] is True
