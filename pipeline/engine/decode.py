"""The static decoder: the debate's fast engine, a KV cache allocated once and a decode step replayed as a CUDA graph.

Plain ``generate`` spends most of a decode step on the host (hundreds of small kernel launches, cache
bookkeeping) and, with a padding mask, copies every layer's keys and values four times over to expand
grouped-query heads. This decoder schedules the model's forwards (``pipeline.engine.forward``: the model's
own weights around its own attention, in fewer kernels) over its own cache:

- one preallocated cache per model, a ``[k/v, rows, kv_heads, columns, head_dim]`` tensor per layer; rows
  are left-padded into shared columns, so a step writes one column for every row;
- turn to turn, a new prompt starts from the cache row that holds its longest prefix (the model's previous
  turn: its prompt and its own reply, ``pipeline.engine.prefix_cache``): those keys and values move to the new
  row's columns and only the rest of the prompt is prefilled (``reuse_kv``);
- the whole step (forward, sampling, stop bookkeeping) is captured once as a CUDA graph per
  (row bucket, column bucket) and replayed, so the host issues one launch per token;
- rows that stop leave the batch: when the open rows fit a smaller power-of-two bucket, they are moved to
  the front and the smaller graph takes over;
- prompts are prefilled in chunks of rows of at most ``prefill_tokens`` tokens (bounded activations), a
  call's rows laid out widest prefill first so that a chunk's rows have similar widths.

On a CPU the same code runs without graphs. Greedy and sampled outputs equal those of ``generate``
(``tests/test_decode.py``); only Llama- and Qwen2-style decoders are supported, and ``engine=auto``
falls back to ``generate`` for anything else.
"""

from __future__ import annotations

import contextlib
import time
import numpy as np
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel

from pipeline.engine.forward import Forward
from pipeline.engine.kernels import usable
from pipeline.engine.prefix_cache import PrefixIndex, Reuse
from pipeline.engine.roofline import Card, ModelCost, Timing, Timings
from pipeline.engine.sampling import sample_tokens

# Graph buckets: the key/value columns a step reads are rounded up to this many, so a turn replays a
# handful of graphs instead of one per length.
COLUMN_BUCKET = 64
# The host checks for finished rows (and shrinks the batch) every this many steps: each check waits for
# the GPU, and tokens past a stop are discarded anyway.
CHECK_EVERY = 8
# Activation memory kept free beside the cache (prefill chunk, logits, sampling noise), in bytes.
RESERVE_BYTES = 3 * 2**30

_LIVE: "weakref.WeakSet[StaticDecoder]" = weakref.WeakSet()
# Progress of one decode call: (step, rows still open, tokens generated so far, an estimate).
StepReport = Callable[[int, int, int], None]
# Rows a caller ends beside the stop ids (lm-eval's stop strings): the open rows' tokens so far,
# ``[rows, steps]`` on the host, -> which of them are finished.
RowsDone = Callable[[np.ndarray], np.ndarray]


def _bucket(n: int) -> int:
    """The power of two at or above ``n``: row buckets."""
    return 1 << max(0, (n - 1).bit_length())


def _round_columns(n: int) -> int:
    return -(-n // COLUMN_BUCKET) * COLUMN_BUCKET


def _move(dst: torch.Tensor, src: torch.Tensor, moves: tuple[torch.Tensor, ...]) -> None:
    """Copies one layer's reused prefixes, keys then values (half the scratch memory of both at once):
    ``moves`` = (new rows, new columns, old rows, old columns). The old entries are gathered before any is
    written, so ``dst`` may be ``src`` with rows trading places."""
    for kv in range(2):
        dst[kv][moves[0], :, moves[1]] = src[kv][moves[2], :, moves[3]]


def _chunks(costs: np.ndarray, budget: int) -> list[slice]:
    """Consecutive rows in groups whose prefill (rows x the group's widest cost: the tokens a row prefills,
    or the columns it attends to) stays within ``budget`` tokens; a row costlier than the budget goes alone."""
    chunks, first, costliest = [], 0, 0
    for row, cost in enumerate(costs):
        costliest_with = max(costliest, int(cost))
        if row > first and (row - first + 1) * costliest_with > budget:
            chunks.append(slice(first, row))
            first, costliest_with = row, int(cost)
        costliest = costliest_with
    chunks.append(slice(first, len(costs)))
    return chunks


@dataclass
class _State:
    """The per-row buffers a decode step reads and writes in place (a captured graph holds their addresses)."""

    token: torch.Tensor  # [rows] the last token of each row
    position: torch.Tensor  # [rows] its rotary position
    start: torch.Tensor  # [rows] first non-padding column
    done: torch.Tensor  # [rows] bool, the row has written a stop token
    out: torch.Tensor  # [rows, max_new] generated tokens, padding after a stop
    seeds: torch.Tensor  # [rows] sampling seeds
    column: torch.Tensor  # [] the column this step writes
    step: torch.Tensor  # [] the index of the token this step produces
    stop: torch.Tensor  # the model's stop ids
    pad: int

    def permute(self, order: torch.Tensor) -> None:
        for name in ("token", "position", "start", "done", "out", "seeds"):
            buf = getattr(self, name)
            buf[: len(order)] = buf[order]


class StaticDecoder:
    """Decodes batches of left-padded prompts for one model; keeps its cache and graphs between calls
    while the next call fits them."""

    def __init__(self, model: PreTrainedModel, cuda_graphs: bool = True, kernels: str = "auto", reuse_kv: bool = True,
                 invariant: bool | None = None) -> None:
        self.forward = Forward(model, kernels, invariant)
        self.device = model.device
        # The sampler's Triton kernel wherever Triton runs (unless kernels=torch): the same tokens, one pass.
        self.fused_sampling = kernels != "torch" and usable(self.device) is None
        self.settings = (cuda_graphs, kernels, reuse_kv, invariant)
        self.reuse_kv = reuse_kv
        self.index = PrefixIndex()
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.cache: list[torch.Tensor] | None = None  # per layer: [k/v, rows, kv_heads, columns, head_dim]
        self.state: _State | None = None
        self.graphs: dict[tuple[int, int, float], torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.capture_seconds = 0.0
        # Where a call's time goes, summed over calls (benchmarks read them): prompts' prefill vs decode steps.
        self.prefill_seconds = 0.0
        self.prefill_tokens = 0  # prompt tokens prefilled
        self.prefill_positions = 0  # positions the prefill computed: those tokens and the padding of their chunks
        self.reused_tokens = 0  # prompt tokens whose keys and values came from an earlier call
        # The last call's prefill and decode against their limits (``pipeline.engine.roofline``).
        self.cost = ModelCost.of(model)
        self.card = Card.of(self.device, self.forward.dtype)
        self.last = Timings()
        self.total = Timings()  # summed over calls (benchmarks read it)
        _LIVE.add(self)

    # ---- memory ---------------------------------------------------------------------------------------
    def bytes_per_token(self) -> int:
        """Cache bytes for one token of one row (keys and values of every layer)."""
        f = self.forward
        return 2 * len(f.layers) * f.kv_heads * f.head_dim * torch.finfo(f.dtype).bits // 8

    def release(self) -> None:
        """Frees the cache and the graphs (another model on this device needs the memory)."""
        self.cache = self.state = self.pool = None
        self.graphs.clear()
        self.index.clear()

    def held_bytes(self) -> int:
        """Bytes of this decoder's cache now (what giving it back would free)."""
        return sum(layer.numel() * layer.element_size() for layer in self.cache) if self.cache is not None else 0

    def max_rows(self, columns: int, vocab_rows_cost: int, wanted: int) -> int:
        """How many rows of ``columns`` fit in this device's free memory now, up to ``wanted`` (no limit on
        a CPU). Other static decoders on this device keep their caches (and their rows' prefixes for the
        next turn) while ``wanted`` rows fit beside them; otherwise they give them back: models take turns."""
        if self.device.type != "cuda":
            return wanted
        per_row = _round_columns(columns) * self.bytes_per_token() + vocab_rows_cost

        def fitting() -> int:
            free = torch.cuda.mem_get_info(self.device)[0] + self.held_bytes()
            return int((free - RESERVE_BYTES) // per_row)

        rows = fitting()
        others = [d for d in list(_LIVE) if d is not self and d.device == self.device and d.cache is not None]
        if rows < wanted and others:
            for other in others:
                other.release()
            torch.cuda.empty_cache()
            rows = fitting()
        return max(1, min(rows, wanted))

    def _ensure(self, rows: int, columns: int, max_new: int, stop_ids: list[int], pad: int,
                moves: tuple[torch.Tensor, ...] | None) -> None:
        """A cache (and row buffers) of at least ``rows`` x ``columns``, with the reused prefixes moved into
        their new rows and columns: ``moves`` = (new rows, new columns, old rows, old columns), one entry
        per token. A bigger need drops the graphs (other stop tokens drop everything first, in ``_decode``); a
        bigger cache is built a layer at a time, each old layer freed once its prefixes are copied out, so two
        caches never coexist."""
        columns = _round_columns(columns)
        s = self.state
        if s is not None and self.cache[0].shape[1] >= rows and self.cache[0].shape[3] >= columns and s.out.shape[1] >= max_new:
            if moves is not None:
                for layer in self.cache:
                    _move(layer, layer, moves)
            return
        old = self.cache if moves is not None else None
        self.release()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.cache = []
        f = self.forward
        for i in range(len(f.layers)):
            layer = torch.zeros((2, rows, f.kv_heads, columns, f.head_dim), dtype=f.dtype, device=self.device)
            if old is not None:
                _move(layer, old[i], moves)
                old[i] = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self.cache.append(layer)
        zeros = lambda *s, dtype=torch.long: torch.zeros(s, dtype=dtype, device=self.device)  # noqa: E731
        self.state = _State(zeros(rows), zeros(rows), zeros(rows), zeros(rows, dtype=torch.bool), zeros(rows, max_new),
                            zeros(rows), zeros(), zeros(), torch.tensor(stop_ids, dtype=torch.long, device=self.device), pad)

    # ---- a step ---------------------------------------------------------------------------------------
    def _step(self, rows: int, columns: int, temperature: float) -> None:
        """One decode step for the first ``rows`` rows, reading ``columns`` cache columns; all in place."""
        s = self.state
        logits = self.forward.step(self.cache, s.token[:rows], s.position[:rows], s.start[:rows], s.column, columns)
        token = sample_tokens(logits, temperature, s.seeds[:rows], s.step, self.fused_sampling)
        done = s.done[:rows]
        token = torch.where(done, s.pad, token)
        s.out[:rows].index_copy_(1, s.step.view(1), token[:, None])
        done |= torch.isin(token, s.stop)
        s.token[:rows] = token
        s.position[:rows] += 1
        s.column += 1
        s.step += 1

    def _replay(self, rows: int, columns: int, temperature: float) -> None:
        if not self.use_graphs:
            self._step(rows, columns, temperature)
            return
        key = (rows, columns, temperature)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._capture(rows, columns, temperature)
        graph.replay()

    def _capture(self, rows: int, columns: int, temperature: float) -> torch.cuda.CUDAGraph:
        """Captures one step. Warm-up and capture run the step on scratch copies of the row state, so the
        live state is untouched (its values are restored; the cache columns written are rewritten by the
        real step)."""
        started = time.perf_counter()
        s = self.state
        saved = {name: getattr(s, name).clone() for name in ("token", "position", "done", "out", "column", "step")}
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._step(rows, columns, temperature)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # A capture stream of this model's device: torch.cuda.graph's default one is made once, on whichever
        # device was current first, and a capture there records nothing of this device's kernels (an empty
        # graph: the second model of a split pair would replay no-ops).
        with torch.cuda.graph(graph, pool=self.pool, stream=stream):
            self._step(rows, columns, temperature)
        for name, value in saved.items():
            getattr(s, name).copy_(value)
        self.capture_seconds += time.perf_counter() - started
        return graph

    # ---- a call ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, temperature: float = 0.0, seeds: list[int] | None = None, prefill_tokens: int = 16384,
                 on_step: StepReport | None = None, rows_done: RowsDone | None = None) -> torch.Tensor:
        """New tokens, ``[rows, max_new_tokens]`` on the CPU, padding after each row's stop token (as
        ``generate`` pads). ``ids`` are left-padded prompts on this decoder's device. ``on_step(step, open
        rows, tokens so far)`` is called at each check for finished rows (no extra wait for the GPU).
        ``rows_done`` is asked at each check too, about the open rows: those it names are padded from
        then on and leave the batch as if they had written a stop token (their tokens up to the check stay).
        Afterwards ``last`` holds the call's prefill and decode timed against their limits."""
        if temperature > 0 and seeds is None:
            raise ValueError("sampling (temperature > 0) needs one seed per row")
        # Streams and graph captures use the current device: make it this model's (two models, two GPUs).
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            return self._decode(ids, attention_mask, max_new_tokens, stop_ids, pad_id, temperature, seeds, prefill_tokens, on_step, rows_done)

    def _decode(self, ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                temperature: float, seeds: list[int] | None, prefill_tokens: int, on_step: StepReport | None,
                rows_done: RowsDone | None) -> torch.Tensor:
        rows, length = ids.shape
        if self.state is not None and (self.state.stop.tolist() != list(stop_ids) or self.state.pad != pad_id):
            self.release()
        start = (attention_mask == 0).sum(1)
        host_ids, host_start = ids.cpu().numpy(), start.cpu().numpy()
        prompts = [host_ids[r, host_start[r] :] for r in range(rows)]
        matches = [self.index.match(p) for p in prompts] if self.reuse_kv else [None] * rows
        reused = np.array([m.tokens if m is not None else 0 for m in matches], dtype=np.int64)
        fresh = host_start + reused  # a row's first column to prefill
        # Cache row i holds input row order[i], widest prefill first: rows that share a prefill chunk have
        # similar widths, so little of a chunk is padding (with reuse, widths no longer follow prompt lengths).
        order = np.argsort(fresh - length, kind="stable")
        slot = np.empty(rows, dtype=np.int64)
        slot[order] = np.arange(rows)
        self._ensure(rows, length + max_new_tokens, max_new_tokens, stop_ids, pad_id, self._moves(matches, host_start, slot))
        s = self.state
        slots = torch.from_numpy(order).to(self.device)  # slot -> input row
        s.start[:rows] = start[slots]
        s.done.zero_()
        s.out.fill_(pad_id)
        s.seeds[:rows] = torch.tensor(seeds, dtype=torch.long)[order] if seeds is not None else 0
        widths = length - fresh[order]
        ids, fresh_device = ids[slots], torch.from_numpy(fresh[order]).to(self.device)
        captured = self.capture_seconds
        started = time.perf_counter()
        first = []
        # Where the kv heads are copied to the query heads, a row's copies span all ``length`` columns, however
        # few it prefills: a chunk is then bounded by the columns its rows attend to, as whole prompts are.
        costs = widths if self.forward.gqa_in_kernel else np.full(rows, length)
        chunks = _chunks(costs, prefill_tokens)
        for part in chunks:
            widest = int(widths[part].max())
            logits = self.forward.prefill(self.cache, ids[part, length - widest :], s.start[part], fresh_device[part], part, length)
            first.append(sample_tokens(logits, temperature, s.seeds[part], 0, self.fused_sampling))
            self.prefill_positions += widest * (part.stop - part.start)
        token = torch.cat(first)
        if self.device.type == "cuda":  # the first decode check waits for the GPU anyway
            torch.cuda.synchronize(self.device)
        prefilled = time.perf_counter()
        self.prefill_seconds += prefilled - started
        self.prefill_tokens += int(widths.sum())
        self.reused_tokens += int(reused.sum())
        s.out[:rows, 0] = token
        s.done[:rows] = torch.isin(token, s.stop)
        s.token[:rows] = token
        s.position[:rows] = length - s.start[:rows]
        s.column.fill_(length)
        s.step.fill_(1)
        capacity = self.cache[0].shape[1]
        width: Callable[[int], int] = (lambda n: min(_bucket(n), capacity)) if self.use_graphs else int
        active = width(rows)
        tokens, open_rows = rows, rows  # every row has its first token
        ended = np.full(rows, max_new_tokens)  # per input row: tokens it wrote before ``rows_done`` ended it
        for step in range(1, max_new_tokens):
            if (step - 1) % CHECK_EVERY == 0:
                if step > 1:  # the rows open at the last check wrote a token a step since (about: some stopped)
                    tokens += open_rows * CHECK_EVERY
                if rows_done is not None:
                    self._end_rows(rows_done, rows, step, slots, ended)
                open_rows = int((~s.done[:rows]).sum())
                if on_step is not None:
                    on_step(step, open_rows, tokens)
                if open_rows == 0:
                    break
                if width(open_rows) < active:
                    active = width(open_rows)
                    slots = self._compact(slots, rows, length + step - 1)
            written = length + step  # columns holding keys/values once this step has written its own
            columns = _round_columns(written) if self.use_graphs else written
            self._replay(active, columns, temperature)
        out = torch.empty((rows, max_new_tokens), dtype=torch.long, device=self.device)
        out[slots] = s.out[:rows, :max_new_tokens]
        out = out.cpu()
        decoded = time.perf_counter() - prefilled
        stops = np.isin(out.numpy(), stop_ids)
        generated = np.minimum(np.where(stops.any(1), stops.argmax(1) + 1, max_new_tokens), ended)  # each row's tokens, its stop included
        prompt = length - host_start
        self.last = Timings(Timing(int(widths.sum()), prefilled - started, self.cost.prefill_seconds(prompt, reused, len(chunks), self.card)),
                            Timing(int((generated - 1).sum()), decoded, self.cost.decode_seconds(prompt, generated, self.card)),
                            self.capture_seconds - captured)
        self.total.add(self.last)
        self._remember(prompts, host_start, slots.cpu().numpy(), out.numpy(), generated)
        return out

    def _end_rows(self, rows_done: RowsDone, rows: int, step: int, slots: torch.Tensor, ended: np.ndarray) -> None:
        """Marks the open rows ``rows_done`` names as done, ``step`` tokens written (``ended``, by input row)."""
        s = self.state
        open_slots = (~s.done[:rows]).nonzero().flatten()
        if not len(open_slots):
            return
        finished = torch.from_numpy(rows_done(s.out[open_slots, :step].cpu().numpy())).to(self.device)
        if finished.any():
            hit = open_slots[finished]
            s.done[hit] = True
            ended[slots[hit].cpu().numpy()] = step

    def _moves(self, matches: list[Reuse | None], start: np.ndarray, slot: np.ndarray) -> tuple[torch.Tensor, ...] | None:
        """Where each reused prefix goes: (new rows, new columns, old rows, old columns), one per token, for
        input row i in cache row ``slot[i]``; None when nothing is reused."""
        pairs = [(i, m) for i, m in enumerate(matches) if m is not None]
        if not pairs:
            return None
        spans = [np.arange(m.tokens) for _, m in pairs]
        moves = (np.concatenate([np.full(m.tokens, slot[i]) for i, m in pairs]), np.concatenate([start[i] + s for (i, _), s in zip(pairs, spans)]),
                 np.concatenate([np.full(m.tokens, m.row) for _, m in pairs]), np.concatenate([m.column + s for (_, m), s in zip(pairs, spans)]))
        return tuple(torch.from_numpy(m).to(self.device) for m in moves)

    def _remember(self, prompts: list[np.ndarray], start: np.ndarray, slots: np.ndarray, out: np.ndarray, generated: np.ndarray) -> None:
        """Records what each cache row holds after the call: its prompt and the generated tokens fed back
        (all but the last of a row's ``generated`` tokens: the last may never have been fed)."""
        if not self.reuse_kv:
            return
        held = []
        for row in slots:
            held.append((np.concatenate((prompts[row], out[row, : generated[row] - 1])), int(start[row])))
        self.index.remember(held)

    def _compact(self, slots: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        """Moves the open rows to the front, with their cache columns and row state."""
        s = self.state
        order = torch.argsort(s.done[:rows].to(torch.int8), stable=True)
        for layer in self.cache:  # finished rows keep their keys and values too: the next turn starts from them
            for kv in layer:
                kv[:rows, :, :columns] = kv[:rows, :, :columns].index_select(0, order)
        s.permute(order)
        return slots[order]
