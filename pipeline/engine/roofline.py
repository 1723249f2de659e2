"""What a generation's phases must cost at the least: the card's data-sheet figures, and the bytes a decode
step must read and the FLOPs a prefill must compute, so that a phase's time can be told as a share of its own
limit (the shard's log, ``benchmarks/``).

- **A decode step** must read every weight once (all parameters but the input-embedding table, of which a step
  reads one row per sequence; a tied table is the output head too and is read whole) and the keys and values
  of every open row up to the token it writes, and compute 2 FLOPs per weight per open row plus its attention
  (4 FLOPs per query head dimension, key and layer). Its limit is the longer of the reads at the card's
  bandwidth and the FLOPs at its tensor-core peak (at 1,536 rows of a 1.5B model the FLOPs can be the longer).
  A call's steps are those its longest row needs (a row that stopped costs nothing after its stop).
- **A prefill** must compute the same per prefilled prompt token (attention over the token's causal prefix,
  the reused one included) and the output head once per row, and read the weights once per chunk of rows.
- Tokens: a decode phase's are the tokens after each row's first (the prefill samples the first), a prefill's
  the prompt tokens it computed (not those reused from the previous turn's cache).

The figures are data-sheet numbers matched by a word of the device's name; a card or a precision without a
figure (a CPU, float32) has no limit on that side: the line says "n/a" where neither side has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Data-sheet memory bandwidth, bytes/s, by a word of the device name: the first match wins.
BANDWIDTH = (("H100 80GB HBM3", 3.35e12), ("H100 PCIe", 2.0e12), ("H200", 4.8e12), ("A100-SXM4-80GB", 2.039e12), ("V100-SXM2", 0.9e12))
# Data-sheet dense fp16/bf16 tensor-core peaks, FLOP/s, likewise.
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12), ("V100", 125e12))
HALF = (torch.float16, torch.bfloat16)


def bandwidth(name: str) -> float | None:
    """The data-sheet bandwidth of the card named ``name`` (bytes/s), or None when the table has none."""
    return next((value for key, value in BANDWIDTH if key in name), None)


def peak_flops(name: str) -> float | None:
    """The data-sheet fp16/bf16 tensor-core peak of the card named ``name`` (FLOP/s), or None."""
    return next((value for key, value in PEAK_FLOPS if key in name), None)


@dataclass(frozen=True)
class Card:
    """A device's figures: ``bandwidth`` bytes/s, ``flops`` FLOP/s in the model's precision (None: unknown)."""

    name: str
    bandwidth: float | None
    flops: float | None

    @classmethod
    def of(cls, device: torch.device, dtype: torch.dtype) -> "Card":
        if device.type != "cuda":
            return cls(device.type, None, None)
        name = torch.cuda.get_device_name(device)
        return cls(name, bandwidth(name), peak_flops(name) if dtype in HALF else None)


def _is_linear(module: torch.nn.Module) -> bool:
    """A float linear layer, a dynamically quantised one (its ``weight`` a method) or the suite's per-row int8 one."""
    return isinstance(module, torch.nn.Linear) or callable(getattr(module, "weight", None)) or hasattr(module, "weight_int8")


def _matrix(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a step reads it: its parameter, the int8 matrix a dynamically quantised layer
    unpacks, or a per-row int8 layer's int8 buffer (``pipeline.models.int8``)."""
    if hasattr(linear, "weight_int8"):
        return linear.weight_int8
    return linear.weight() if callable(linear.weight) else linear.weight


@dataclass(frozen=True)
class ModelCost:
    """What one token costs a model: the weights a step reads, the cache bytes per token, the matmul FLOPs
    per token (2 per weight the token multiplies: the layers' and the head's) and the attention's FLOPs per
    (query, key) pair."""

    weight_bytes: int
    kv_bytes_per_token: int
    layer_flops: int  # per token: 2 x the decoder layers' matmul weights
    head_flops: int  # per token whose logits are computed: 2 x the output head's weights
    attention_flops: int  # per (query, key) pair: 4 x layers x query heads x head dim

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelCost":
        config = model.config
        embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings()
        linears = [m for m in model.modules() if _is_linear(m)]
        packed = [w for w in map(_matrix, linears) if not isinstance(w, torch.nn.Parameter)]  # int8 weights are no parameters
        read = [p for p in {id(p): p for p in model.parameters()}.values() if p is not embedding or p is _matrix(head)]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(weight_bytes=sum(p.numel() * p.element_size() for p in read + packed),
                   kv_bytes_per_token=2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * embedding.element_size(),
                   layer_flops=2 * sum(_matrix(m).numel() for m in linears if m is not head), head_flops=2 * _matrix(head).numel(),
                   attention_flops=4 * config.num_hidden_layers * config.num_attention_heads * head_dim)

    def decode_seconds(self, prompt: np.ndarray, generated: np.ndarray, card: Card) -> float | None:
        """The least time of a call's decode steps: rows with ``prompt`` tokens in the cache that generated
        ``generated`` tokens each (the first from the prefill, the stop token included)."""
        if card.bandwidth is None and card.flops is None:
            return None
        prompt, generated = np.asarray(prompt, dtype=np.float64), np.asarray(generated, dtype=np.int64)
        steps = np.arange(1, max(int(generated.max(initial=1)), 1))[:, None]  # step s feeds a row's s-th token
        open_rows = steps < generated[None, :]
        keys = np.where(open_rows, prompt[None, :] + steps, 0.0).sum(1)  # keys/values read (= attended) per step
        rows = open_rows.sum(1)
        seconds = np.zeros(len(steps))
        if card.bandwidth is not None:
            seconds = np.maximum(seconds, (self.weight_bytes + keys * self.kv_bytes_per_token) / card.bandwidth)
        if card.flops is not None:
            seconds = np.maximum(seconds, (rows * (self.layer_flops + self.head_flops) + keys * self.attention_flops) / card.flops)
        return float(seconds.sum())

    def prefill_seconds(self, prompt: np.ndarray, reused: np.ndarray, chunks: int, card: Card) -> float | None:
        """The least time of a call's prefill: rows of ``prompt`` tokens of which ``reused`` came from the
        cache, computed in ``chunks`` forwards."""
        if card.bandwidth is None and card.flops is None:
            return None
        prompt, reused = np.asarray(prompt, dtype=np.float64), np.asarray(reused, dtype=np.float64)
        pairs = (prompt * (prompt + 1) - reused * (reused + 1)).sum() / 2  # (query, key) pairs, causal
        flops = (prompt - reused).sum() * self.layer_flops + len(prompt) * self.head_flops + pairs * self.attention_flops
        return max(flops / card.flops if card.flops else 0.0, chunks * self.weight_bytes / card.bandwidth if card.bandwidth else 0.0)


@dataclass
class Timing:
    """Prefill or decode, summed over calls: tokens, seconds, and the least seconds they could take (None:
    no figure for the device)."""

    tokens: int = 0
    seconds: float = 0.0
    limit_seconds: float | None = 0.0

    def add(self, tokens: int, seconds: float, limit_seconds: float | None) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.limit_seconds = None if self.limit_seconds is None or limit_seconds is None else self.limit_seconds + limit_seconds

    def describe(self, name: str, note: str = "") -> str:
        """``decode 17,812 tok/s (23% of its limit)``, ``note`` added in the parentheses."""
        if self.tokens == 0 or self.seconds <= 0:
            return f"{name}: none"
        share = f"{self.limit_seconds / self.seconds:.0%} of its limit" if self.limit_seconds is not None else "limit n/a"
        return f"{name} {self.tokens / self.seconds:,.0f} tok/s ({share}{note})"


def _runs(counts: list[int]) -> str:
    """``[256, 256, 256, 230]`` as ``256 x 3 + 230``: runs of equal counts, in order."""
    parts: list[tuple[int, int]] = []
    for n in counts:
        if parts and parts[-1][0] == n:
            parts[-1] = (n, parts[-1][1] + 1)
        else:
            parts.append((n, 1))
    return " + ".join(f"{n:,} x {times}" if times > 1 else f"{n:,}" for n, times in parts)


@dataclass
class Timings:
    """A generation's prefill and decode (one call, or several summed), the seconds its decode spent capturing
    CUDA graphs (counted in the decode's time), and the whole call's seconds where the caller timed it
    (``call_seconds``: ``generate_chat``), whose part in neither prefill nor decode is ``host_seconds``, and the
    rows of each of the call's batches (``batch_rows``: where free memory cut a batch short, the log says so, and
    on the fast kernels a row's tokens follow its batch)."""

    prefill: Timing = field(default_factory=Timing)
    decode: Timing = field(default_factory=Timing)
    capture_seconds: float = 0.0
    call_seconds: float | None = None
    batch_rows: list[int] = field(default_factory=list)

    @property
    def host_seconds(self) -> float | None:
        """The call's seconds in neither its prefill nor its decode: rendering and tokenizing the prompts, finding
        their reused prefixes, decoding the replies' text, while the GPU waits (None: the call was not timed)."""
        return None if self.call_seconds is None else self.call_seconds - self.prefill.seconds - self.decode.seconds

    def add(self, other: "Timings") -> None:
        self.prefill.add(other.prefill.tokens, other.prefill.seconds, other.prefill.limit_seconds)
        self.decode.add(other.decode.tokens, other.decode.seconds, other.decode.limit_seconds)
        self.capture_seconds += other.capture_seconds

    def describe(self) -> str:
        """``prefill 41,300 tok/s (38% of its limit), decode 17,812 tok/s (23% of its limit; 1.2 s capturing graphs),
        host 0.4 s``, then ``, 6 batches: 256 x 5 + 230 rows`` where the call had more than one batch."""
        capture = f"; {self.capture_seconds:.1f} s capturing graphs" if self.capture_seconds >= 0.05 else ""
        host = f", host {self.host_seconds:.1f} s" if self.host_seconds is not None else ""
        batches = f", {len(self.batch_rows)} batches: {_runs(self.batch_rows)} rows" if len(self.batch_rows) > 1 else ""
        return f"{self.prefill.describe('prefill')}, {self.decode.describe('decode', capture)}{host}{batches}"

    def as_dict(self) -> dict[str, float | int | None]:
        """The numbers behind ``describe``, for benchmarks' JSON."""
        out: dict[str, float | int | None] = {"capture_s": round(self.capture_seconds, 3)}
        if self.host_seconds is not None:
            out["host_s"] = round(self.host_seconds, 3)
        for name, t in (("prefill", self.prefill), ("decode", self.decode)):
            rate = t.tokens / t.seconds if t.seconds > 0 else None
            share = t.limit_seconds / t.seconds if t.limit_seconds is not None and t.seconds > 0 else None
            out.update({f"{name}_tokens": t.tokens, f"{name}_s": round(t.seconds, 3), f"{name}_tok_per_s": round(rate, 1) if rate else None,
                        f"{name}_limit_s": round(t.limit_seconds, 4) if t.limit_seconds is not None else None,
                        f"{name}_share_of_limit": round(share, 4) if share is not None else None})
        return out
