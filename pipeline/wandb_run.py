"""Where a run's wandb runs go, decided in one place for the trainer and the reducers: the mode, the project
(``wandb.project``), the group (the run id, so that one run's training and tables sit together on the
dashboard) and the folder (inside the run folder, so that ``wandb sync`` finds offline runs beside their
results). wandb itself is imported only by the code that logs, never here: the light commands stay light.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.run_config import RunConfig


def wandb_mode(config: RunConfig) -> str:
    """``wandb.mode`` as wandb takes it. ``auto`` defers to wandb's own ``WANDB_MODE`` when it is set (the
    tests set it to ``disabled``), else goes online only when ``WANDB_API_KEY`` is set: a cluster job with
    no key must never wait on a login prompt or the network, so it writes an offline run instead."""
    mode = config.wandb.mode
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "online", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


@contextmanager
def train_environment(config: RunConfig, run_id: str, folder: Path) -> Iterator[list[str]]:
    """The trainer's ``report_to``, with wandb's settings in the environment while it trains: transformers'
    wandb callback reads them there (the key stays where the user put it). Training logs into
    ``folder/wandb/``; the environment is as it was afterwards (a debug run trains inside the submitter)."""
    mode = wandb_mode(config)
    if mode == "disabled":
        yield []
        return
    settings = {"WANDB_MODE": mode, "WANDB_PROJECT": config.wandb.project, "WANDB_RUN_GROUP": run_id,
                "WANDB_DIR": str(folder), "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true")}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield ["wandb"]
    finally:
        _finish_open_run()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _finish_open_run() -> None:
    """transformers' wandb callback leaves its run open when training ends; a debug run trains inside the
    submitter, whose reducers then open their own runs: the trainer's is finished (its files flushed) first."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        finish_and_wait(wandb.run)


def finish_and_wait(wandb_run: Any) -> None:
    """Finishes ``wandb_run`` and waits until its files are complete. ``finish()`` can return before wandb's
    service has written all of the run's records (seen under load in CI: a re-reduce's offline run file read
    back without its run record); ``teardown`` waits for the service to write everything and exit, so whoever
    reads the run's folder next (``wandb sync``, the next reduce, a test) finds it whole."""
    import wandb

    wandb_run.finish()
    wandb.teardown()


def step_run_id(run_root: Path, where: str) -> str:
    """A stable wandb id for one step's tables: a reduce run again (after a resume) updates the same wandb run
    instead of adding one. The run folder's path goes into it, so that two results folders holding the same
    run id (``run_id=test`` on two machines) never write into each other's wandb run."""
    digest = hashlib.sha1(str(run_root.resolve()).encode()).hexdigest()[:8]
    return f"{run_root.name}-{where}-{digest}"


def init_step_run(config: RunConfig, run_root: Path, where: str) -> Any | None:
    """An open wandb run for a reducer's step (None when wandb is disabled), resumed when it exists. Offline,
    each reduce adds an ``offline-run-<time>-<id>`` folder of the same id; ``wandb sync`` uploads a run's
    folders in the order they were made, so the last reduce's tables and summary are the ones shown."""
    mode = wandb_mode(config)
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(mode=mode, dir=str(run_root), project=config.wandb.project, group=run_root.name,
                      job_type=where, name=f"{run_root.name}-{where}", id=step_run_id(run_root, where), resume="allow",
                      config=config.plain(), settings=wandb.Settings(silent=True, console="off"))
