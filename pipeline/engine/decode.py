"""The static decoder: the debate's fast engine, which schedules a model's forwards over its own KV cache.

Plain ``generate`` spends most of a decode step on the host (hundreds of small kernel launches, cache
bookkeeping) and, with a padding mask, copies every layer's keys and values four times over to expand
grouped-query heads. This decoder schedules the model's forwards (``pipeline.engine.forward``: the model's
own weights around its own attention, in fewer kernels) over its own cache (``pipeline.engine.kv_cache``:
allocated once, a row per prompt left-padded into shared columns):

- turn to turn, a new prompt starts from the cache row that holds its longest prefix (the model's previous
  turn: its prompt and its own reply, ``pipeline.engine.prefix_cache``): those keys and values move to the new
  row's columns and only the rest of the prompt is prefilled (``reuse_kv``);
- the whole step (forward, sampling, stop bookkeeping) is replayed as a CUDA graph per row bucket, and per
  split size of the attention where rows are few enough to be split across programs (a step runs at the widest
  width that cuts its rows into the same pieces, ``Forward.step_columns``: the same bits) (``pipeline.engine.graphs``),
  so the host issues one launch per token and captures a few graphs per row bucket, not one per column bucket;
- rows that stop leave the batch: when the open rows fit a smaller power-of-two bucket, they are moved to
  the front and the smaller graph takes over;
- with batch invariance, a prompt that recurs in a call (a vote's samples of one question) is prefilled once:
  its other rows copy its keys, values and last logits, and sample their first token with their own seeds;
- prompts are prefilled in chunks of rows of at most ``prefill_tokens`` tokens (bounded activations), a
  call's rows laid out widest prefill first so that a chunk's rows have similar widths.

Its knobs come as one ``DecoderOptions``; how many rows fit the device, and which other decoder gives its
cache back when they do not, is the owner's (``pipeline.engine.memory``). On a CPU the same code runs
without graphs. Greedy and sampled outputs equal those of ``generate`` (``tests/test_decode.py``); only
Llama- and Qwen2-style decoders are supported, and ``engine=auto`` falls back to ``generate`` for anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedModel

from pipeline.engine import DecoderOptions
from pipeline.engine.forward import Forward
from pipeline.engine.graphs import StepGraphs
from pipeline.engine.kernels import usable
from pipeline.engine.kv_cache import KVCache, round_columns
from pipeline.engine.prefix_cache import PrefixIndex, Reuse
from pipeline.engine.roofline import Card, ModelCost, Timing, Timings
from pipeline.engine.sampling import sample_tokens

log = logging.getLogger(__name__)

# The host checks for finished rows (and shrinks the batch) every this many steps: each check waits for
# the GPU, and tokens past a stop are discarded anyway.
CHECK_EVERY = 8

# Progress of one decode call: (step, rows still open, tokens generated so far, an estimate).
StepReport = Callable[[int, int, int], None]
# Rows a caller ends beside the stop ids (lm-eval's stop strings): the open rows' tokens so far,
# ``[rows, steps]`` on the host, -> which of them are finished.
RowsDone = Callable[[np.ndarray], np.ndarray]


def _digest(*arrays: np.ndarray) -> str:
    """A short hash of arrays' bytes: two runs' calls compared in their logs."""
    h = hashlib.blake2b(digest_size=6)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _bucket(n: int) -> int:
    """The power of two at or above ``n``: row buckets."""
    return 1 << max(0, (n - 1).bit_length())


def _stopped(token: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Which rows wrote a stop id. A broadcast compare, not ``torch.isin``: past a few dozen stop ids ``isin``
    sorts and takes ``unique`` of its input, whose size the host must wait for, which a CUDA graph's capture
    refuses (seen on an H100 with 506 stop ids: "operation failed due to a previous error during capture")."""
    return (token[:, None] == stop[None, :]).any(1)


def _sources(prompts: list[np.ndarray], matches: list[Reuse | None]) -> np.ndarray:
    """Per row, the first row with the same prompt starting from the same reused prefix (the row itself when
    none precedes it): the row whose prefill it copies."""
    first: dict[tuple[bytes, Reuse | None], int] = {}
    return np.array([first.setdefault((p.tobytes(), m), r) for r, (p, m) in enumerate(zip(prompts, matches))], dtype=np.int64)


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


class StaticDecoder:
    """Decodes batches of left-padded prompts for one model; keeps its cache and graphs between calls
    while the next call fits them."""

    def __init__(self, model: PreTrainedModel, options: DecoderOptions) -> None:
        self.options = options
        self.name = Path(model.name_or_path).name or model.name_or_path  # for its log lines
        self.forward = Forward(model, options.kernels, options.batch_invariant)
        self.device = model.device
        # The sampler's Triton kernel wherever Triton runs (unless kernels=torch): the same tokens, one pass.
        self.fused_sampling = options.kernels != "torch" and usable(self.device) is None
        self.index = PrefixIndex()
        self.use_graphs = options.cuda_graphs and self.device.type == "cuda"
        self.cache = KVCache(self.forward, self.device)
        self.graphs = StepGraphs(self.device)
        # Where a call's time goes, summed over calls (benchmarks read them): prompts' prefill vs decode steps.
        self.prefill_seconds = 0.0
        self.prefill_tokens = 0  # prompt tokens prefilled
        self.prefill_positions = 0  # positions the prefill computed: those tokens and the padding of their chunks
        self.reused_tokens = 0  # prompt tokens whose keys and values were copied: from an earlier call, or from a row of the same prompt
        # The last call's prefill and decode against their limits (``pipeline.engine.roofline``).
        self.cost = ModelCost.of(model)
        self.card = Card.of(self.device, self.forward.dtype)
        self.last = Timings()
        self.total = Timings()  # summed over calls (benchmarks read it)

    def release(self) -> None:
        """Frees the cache and the graphs, and forgets what the rows held (their owner needs the memory)."""
        self.graphs.clear()
        self.cache.release()
        self.index.clear()

    def _ensure(self, rows: int, columns: int, max_new: int, stop_ids: list[int], pad: int,
                moves: tuple[torch.Tensor, ...] | None) -> None:
        """The cache for this call, reused prefixes moved (``KVCache.ensure``); a cache built anew drops the
        graphs captured on the old one first (other stop tokens drop everything, in ``_decode``)."""
        if not self.cache.holds(rows, columns, max_new):
            self.graphs.clear()
            self.index.clear()
        self.cache.ensure(rows, columns, max_new, stop_ids, pad, moves)

    # ---- a step ---------------------------------------------------------------------------------------
    def _step(self, rows: int, columns: int, temperature: float) -> None:
        """One decode step for the first ``rows`` rows, reading ``columns`` cache columns; all in place."""
        s = self.cache.state
        logits = self.forward.step(self.cache.layers, s.token[:rows], s.position[:rows], s.start[:rows], s.column, columns, s.done[:rows])
        token = sample_tokens(logits, temperature, s.seeds[:rows], s.step, self.fused_sampling)
        done = s.done[:rows]
        token = torch.where(done, s.pad, token)
        s.out[:rows].index_copy_(1, s.step.view(1), token[:, None])
        done |= _stopped(token, s.stop)
        s.token[:rows] = token
        s.position[:rows] += 1
        s.column += 1
        s.step += 1

    def _replay(self, rows: int, columns: int, temperature: float) -> None:
        if self.use_graphs:
            self.graphs.replay(self._step, self.cache.state, rows, columns, temperature)
        else:
            self._step(rows, columns, temperature)

    # ---- a call ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, temperature: float = 0.0, seeds: list[int] | None = None, on_step: StepReport | None = None,
                 rows_done: RowsDone | None = None) -> torch.Tensor:
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
            return self._decode(ids, attention_mask, max_new_tokens, stop_ids, pad_id, temperature, seeds, on_step, rows_done)

    def _decode(self, ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                temperature: float, seeds: list[int] | None, on_step: StepReport | None, rows_done: RowsDone | None) -> torch.Tensor:
        rows, length = ids.shape
        held = self.cache.state
        if held is not None and (held.stop.tolist() != list(stop_ids) or held.pad != pad_id):
            self.release()
        start = (attention_mask == 0).sum(1)
        host_ids, host_start = ids.cpu().numpy(), start.cpu().numpy()
        prompts = [host_ids[r, host_start[r] :] for r in range(rows)]
        matches = [self.index.match(p) for p in prompts] if self.options.reuse_kv else [None] * rows
        reused = np.array([m.tokens if m is not None else 0 for m in matches], dtype=np.int64)
        fresh = host_start + reused  # a row's first column to prefill
        # With batch invariance, a prompt that recurs in the call (a vote's samples of one question) is prefilled
        # once, by its first row: the same bits as its own prefill. Without it a prefill's bits follow its chunk's
        # rows, and copying changed the tokens (measured on an H200: 4,153 of the 0.5B's 7,680 vote samples of
        # questions 0-1,279, docs/performance.md), so every row is prefilled as before.
        source = _sources(prompts, matches) if self.forward.invariant else np.arange(rows)
        unique = source == np.arange(rows)
        sources = int(unique.sum())
        # Cache row i holds input row order[i]: the rows that prefill, widest prefill first (rows that share a
        # prefill chunk have similar widths, so little of a chunk is padding; with reuse, widths no longer follow
        # prompt lengths), then the rows that copy their prompt's keys and values.
        order = np.lexsort((fresh - length, ~unique))
        slot = np.empty(rows, dtype=np.int64)
        slot[order] = np.arange(rows)
        self._ensure(rows, length + max_new_tokens, max_new_tokens, stop_ids, pad_id, self._moves(matches, host_start, slot))
        s = self.cache.state
        slots = torch.from_numpy(order).to(self.device)  # slot -> input row
        s.start[:rows] = start[slots]
        s.done.zero_()
        s.out.fill_(pad_id)
        s.seeds[:rows] = torch.tensor(seeds, dtype=torch.long)[order] if seeds is not None else 0
        widths = length - fresh[order]
        ids, fresh_device = ids[slots], torch.from_numpy(fresh[order]).to(self.device)
        captured = self.graphs.seconds
        started = time.perf_counter()
        token = torch.empty(rows, dtype=torch.long, device=self.device)
        copies = np.arange(sources, rows)  # the cache rows that copy, and the cache rows they copy from
        copied = slot[source[order[sources:]]]
        # Where the kv heads are copied to the query heads, a row's copies span all ``length`` columns, however
        # few it prefills: a chunk is then bounded by the columns its rows attend to, as whole prompts are.
        costs = widths[:sources] if self.forward.gqa_in_kernel else np.full(sources, length)
        chunks = _chunks(costs, self.options.prefill_tokens)
        for part in chunks:
            widest = int(widths[part].max())
            logits = self.forward.prefill(self.cache.layers, ids[part, length - widest :], s.start[part], fresh_device[part], part, length)
            token[part] = sample_tokens(logits, temperature, s.seeds[part], 0, self.fused_sampling)
            mine = (copied >= part.start) & (copied < part.stop)
            if mine.any():  # the copies of this chunk's rows sample their first token from its logits, with their own seeds
                to, of = (torch.from_numpy(a).to(self.device) for a in (copies[mine], copied[mine] - part.start))
                token[to] = sample_tokens(logits[of], temperature, s.seeds[to], 0, self.fused_sampling)
            self.prefill_positions += widest * (part.stop - part.start)
        if len(copies):
            counts = widths[sources:]  # a copy's columns: its prompt from its first fresh column to the end
            places = np.concatenate([np.arange(length - n, length) for n in counts])
            self.cache.move(tuple(torch.from_numpy(m).to(self.device) for m in (
                np.repeat(copies, counts), places, np.repeat(copied, counts), places)))
        if self.device.type == "cuda":  # the first decode check waits for this call's work anyway (not another stream's)
            torch.cuda.current_stream(self.device).synchronize()
        prefilled = time.perf_counter()
        self.prefill_seconds += prefilled - started
        self.prefill_tokens += int(widths[:sources].sum())
        self.reused_tokens += int(reused.sum() + widths[sources:].sum())
        s.out[:rows, 0] = token
        s.done[:rows] = _stopped(token, s.stop)
        s.token[:rows] = token
        s.position[:rows] = length - s.start[:rows]
        s.column.fill_(length)
        s.step.fill_(1)
        capacity = self.cache.layers[0].shape[1]
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
            columns = self.forward.step_columns(active, round_columns(written), self.cache.layers[0].shape[3]) if self.use_graphs else written
            self._replay(active, columns, temperature)
        out = torch.empty((rows, max_new_tokens), dtype=torch.long, device=self.device)
        out[slots] = s.out[:rows, :max_new_tokens]
        out = out.cpu()
        decoded = time.perf_counter() - prefilled
        stops = np.isin(out.numpy(), stop_ids)
        generated = np.minimum(np.where(stops.any(1), stops.argmax(1) + 1, max_new_tokens), ended)  # each row's tokens, its stop included
        prompt = length - host_start
        self.last = Timings(Timing(int(widths[:sources].sum()), prefilled - started,
                                   self.cost.prefill_seconds(prompt[unique], reused[unique], len(chunks), self.card)),
                            Timing(int((generated - 1).sum()), decoded, self.cost.decode_seconds(prompt, generated, self.card)),
                            self.graphs.seconds - captured)
        self.total.add(self.last)
        self._remember(prompts, host_start, slots.cpu().numpy(), out.numpy(), generated)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %d rows x %d columns, T=%g, %d reused tokens, %d prefilled in %d chunks, %d rows copied; digests: "
                      "inputs %s, tokens %s, cache %s", self.name, rows, length, temperature, int(reused.sum()),
                      int(widths[:sources].sum()), len(chunks), rows - sources, _digest(host_ids, host_start, np.asarray(seeds or [])),
                      _digest(out.numpy()), self.cache.checksum())
        return out

    def _end_rows(self, rows_done: RowsDone, rows: int, step: int, slots: torch.Tensor, ended: np.ndarray) -> None:
        """Marks the open rows ``rows_done`` names as done, ``step`` tokens written (``ended``, by input row)."""
        s = self.cache.state
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
        if not self.options.reuse_kv:
            return
        held = []
        for row in slots:
            held.append((np.concatenate((prompts[row], out[row, : generated[row] - 1])), int(start[row])))
        self.index.remember(held)

    def _compact(self, slots: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        """Moves the open rows to the front, with their cache columns and row state."""
        order = torch.argsort(self.cache.state.done[:rows].to(torch.int8), stable=True)
        self.cache.compact(order, rows, columns)
        return slots[order]
