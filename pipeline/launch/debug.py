"""The debug backend: everything runs in this process, in order, as it is submitted (submitit's debug
executor runs a job when its result is asked for, so each is asked at once)."""

from __future__ import annotations

from typing import Sequence

import submitit

from pipeline.launch.base import Launcher


class DebugLauncher(Launcher):
    """cluster=debug."""

    kind = "debug"

    def executor(self, name: str, timeout_min: int, processes: int, gpus: int) -> submitit.AutoExecutor:
        executor = submitit.AutoExecutor(folder=self.run.launch_dir, cluster="debug")
        executor.update_parameters(name=name, timeout_min=timeout_min)
        return executor

    def processes(self, per_gpu: bool) -> int:
        return 1

    def submitted(self, jobs: Sequence[submitit.Job]) -> None:
        """Run them now; a failed shard must not stop the reducer (it reports incomplete shards; the error
        is in the task log)."""
        for job in jobs:
            try:
                job.result()
            except Exception:  # noqa: BLE001 - the reducer reports it
                pass
