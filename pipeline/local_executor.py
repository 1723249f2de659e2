"""submitit's local executor, with every job detached from the terminal that submitted it, as SLURM jobs are.

submitit (1.5) starts each local job's controller with the submitter's own stdin, stdout and stderr, in
the submitter's process group. So a Ctrl-C in that terminal kills every job of the run, a cancel prints
each controller's ``KeyboardInterrupt`` traceback into that terminal, and ``submit.py ... | tee log``
blocks until the last job ends, because the jobs hold the pipe open. Here the controller starts in a
session of its own, reads nothing, and writes to ``launch/<job id>_controller.log``. The tasks it starts
log to submitit's usual files; everything else (environment, timeouts, requeues) is submitit's own.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import submitit
from submitit.local import local


class DetachedLocalExecutor(submitit.LocalExecutor):
    """``submitit.LocalExecutor`` whose jobs do not share the submitter's terminal or process group."""

    def _submit_command(self, command: str) -> local.LocalJob:
        # submitit's LocalExecutor._submit_command, with the controller started by _start_controller.
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible_gpus = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
        process = _start_controller(
            folder=self.folder,
            command=command,
            tasks_per_node=ntasks,
            cuda_devices=",".join(str(k) for k in gpus),
            timeout_min=self.parameters.get("timeout_min", 2.0),
            signal_delay_s=self.parameters.get("signal_delay_s", 30),
            stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
            setup=self.parameters.get("setup", ()),
        )
        return local.LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))


def _start_controller(folder: Path, command: str, tasks_per_node: int, cuda_devices: str, timeout_min: float,
                      signal_delay_s: int, stderr_to_stdout: bool, setup: Sequence[str]) -> "subprocess.Popen[bytes]":
    """submitit's ``local.start_controller`` (same environment, same command), detached."""
    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    proc_cmd: Any = [sys.executable, "-m", "submitit.local._local", str(folder)]
    if setup:
        proc_cmd = " && ".join([*setup, shlex.join(proc_cmd)])
    Path(folder).mkdir(parents=True, exist_ok=True)
    # The log is named after the job id (the pid) once it is known; the open file keeps its data.
    fd, scratch = tempfile.mkstemp(prefix="controller-", suffix=".log", dir=folder)
    try:
        process = subprocess.Popen(proc_cmd, shell=bool(setup), env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(fd)
    os.replace(scratch, Path(folder) / f"{process.pid}_controller.log")
    return process
