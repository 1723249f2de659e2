"""The static decoder's decode step as CUDA graphs: captured once per (row bucket, columns, temperature) and
replayed, so the host issues one launch per token instead of hundreds of small kernels. The columns are the
widest multiple of ``COLUMN_BUCKET`` at which the step's attention cuts its rows into the same pieces as at their
own width (``Forward.step_columns``), so a call captures a few graphs per row bucket.

A graph holds the addresses of the cache and row buffers it was captured on: whoever reallocates them
``clear``s the graphs first. A GPU only; on a CPU the decoder runs its step directly.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from pipeline.engine.kv_cache import RowState

# A decode step over the first ``rows`` rows, reading ``columns`` cache columns, sampling at ``temperature``.
Step = Callable[[int, int, float], None]


class StepGraphs:
    """One model's captured decode steps, all in one graph memory pool."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.captured: dict[tuple[int, int, float], torch.cuda.CUDAGraph] = {}
        self.pool = None  # the graphs' memory pool, made at the first capture
        self.seconds = 0.0  # spent capturing, summed over calls

    def clear(self) -> None:
        self.captured.clear()
        self.pool = None

    def replay(self, step: Step, state: RowState, rows: int, columns: int, temperature: float) -> None:
        """``step(rows, columns, temperature)``, from its graph (captured now if it is the first of its key)."""
        key = (rows, columns, temperature)
        graph = self.captured.get(key)
        if graph is None:
            graph = self.captured[key] = self._capture(step, state, key)
        graph.replay()

    def _capture(self, step: Step, state: RowState, key: tuple[int, int, float]) -> torch.cuda.CUDAGraph:
        """Captures one step. Warm-up and capture run the step for real on a side stream; the row buffers
        it writes are restored afterwards (the cache columns written are rewritten by the real step)."""
        started = time.perf_counter()
        saved = state.snapshot()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            step(*key)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # A capture stream of this model's device: torch.cuda.graph's default one is made once, on whichever
        # device was current first, and a capture there records nothing of this device's kernels (an empty
        # graph: the second model of a split pair would replay no-ops).
        with torch.cuda.graph(graph, pool=self.pool, stream=stream):
            step(*key)
        state.restore(saved)
        self.seconds += time.perf_counter() - started
        return graph
