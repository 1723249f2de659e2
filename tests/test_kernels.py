"""The static decoder's Triton kernels give what the PyTorch ops they replace give: attention over each
row's own columns (whatever its left padding and the number of splits), the rotary embedding (with the
cache write, or in place) bit for bit, the norm and the activation to the last rounding. On a CPU they run in Triton's
interpreter (a subprocess: the interpreter is chosen when a kernel is defined); on a GPU, compiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.engine import DecoderOptions, kernels
from pipeline.config import ConfigError
from pipeline.stages import checked_config
from pipeline.engine.decode import StaticDecoder
from pipeline.engine.kv_cache import round_columns
from pipeline.models.loading import load_chat_model
from pipeline.models.registry import load_registry
from tests.conftest import run_interpreted

needs_triton = pytest.mark.skipif(not kernels.HAVE_TRITON, reason="triton is not installed")
GPU = torch.cuda.is_available() and kernels.usable(torch.device("cuda")) is None


def _reference_attention(q: torch.Tensor, cache: torch.Tensor, start: torch.Tensor, column: int, scale: float) -> torch.Tensor:
    rows, heads, dim = q.shape
    kv_heads, columns = cache.shape[2], cache.shape[3]
    cols = torch.arange(columns, device=q.device)
    valid = (cols[None] >= start[:, None]) & (cols[None] <= column)
    mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~valid, float("-inf"))[:, None, None, :]
    grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim)
    return F.scaled_dot_product_attention(grouped, cache[0], cache[1], attn_mask=mask, scale=scale).reshape(rows, heads, dim)


def check_kernels(device: str, dtype: torch.dtype) -> None:
    """Every kernel against its PyTorch ops on random inputs; raises AssertionError on a mismatch."""
    torch.manual_seed(0)
    rows, heads, kv_heads, dim, columns, column = 4, 8, 2, 64, 192, 150
    # Rows with no padding, some, and a prompt that starts just before the column written now.
    start = torch.tensor([0, 37, 120, 149], device=device)
    cache = torch.randn(2, rows, kv_heads, columns, dim, dtype=dtype, device=device)
    q = torch.randn(rows, heads, dim, dtype=dtype, device=device)
    expected = _reference_attention(q, cache, start, column, 0.125)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    end = torch.tensor(column, device=device)
    # 1 piece of 256 columns, 3 of 64, 8 of 32 (a 1-column row: seven empty pieces merge away)
    for splits, size in ((1, 256), (3, 64), (8, 32)):
        out = kernels.decode_attention(q, cache[0], cache[1], start, end, 0.125, splits, size, block=32)
        torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance, msg=f"attention, {splits} splits")

    # one piece: the loop stops at each row's own last column, so the piece's size changes no bit (one graph
    # serves every width: Forward.step_columns), a finished row's (its end at its start) included
    ends = torch.tensor([column, column, 120, column], device=device)
    one = [kernels.decode_attention(q, cache[0], cache[1], start, ends, 0.125, 1, size, block=32) for size in (256, 1024)]
    assert torch.equal(one[0], one[1]), "one piece of 256 or of 1024 columns: the same bits"
    assert torch.equal(one[0][[0, 1, 3]], kernels.decode_attention(q, cache[0], cache[1], start, end, 0.125, 1, 256, block=32)[[0, 1, 3]])
    finished = cache[1, 2, :, 120].float().repeat_interleave(heads // kv_heads, 0)  # one column: its value, weight 1
    torch.testing.assert_close(one[0][2].float(), finished, atol=tolerance, rtol=tolerance, msg="a finished row reads its first column")

    # a step run wider, cut into the same pieces (Forward.step_columns: one graph for many widths), is the same
    # bits: the pieces past a row's end are empty and merge away, one piece merged is that piece; a done row
    # (its end at its start) and rows that start late included
    capacity, widened = 640, 0
    wide = torch.randn(2, rows, kv_heads, capacity, dim, dtype=dtype, device=device)
    for processors, invariant in ((2, False), (16, False), (132, False), (16, True)):
        for narrow in (64, 192, 320, 576):
            starts = torch.tensor([0, narrow // 3, narrow - 1, narrow // 2], device=device)
            ends = torch.tensor([narrow - 1, narrow - 1, narrow - 1, narrow // 2], device=device)
            wider = kernels.widest_same_pieces(rows, kv_heads, narrow, capacity, processors, invariant)
            outs = [kernels.decode_attention(q, wide[0], wide[1], starts, ends, 0.125, *kernels.attention_plan(rows, kv_heads, width, processors, invariant), block=32)
                    for width in (narrow, wider)]
            assert torch.equal(*outs), f"{narrow} columns run at {wider}: {processors} processors, invariant {invariant}"
            widened += wider > narrow
    assert widened >= 10, "most widths run wider"

    # pieces from the row's own first column: the same bits in another batch, at another place and padding
    row, first, count = 1, 37, column - 37 + 1
    moved = torch.randn(2, 3, kv_heads, 320, dim, dtype=dtype, device=device)
    moved[:, 2, :, 5 : 5 + count] = cache[:, row, :, first : column + 1]
    elsewhere = torch.tensor([0, 40, 5], device=device)
    for split_size in (32, kernels.INVARIANT_SPLIT):
        here = kernels.decode_attention(q, cache[0], cache[1], start, end, 0.125, -(-columns // split_size), split_size, block=32)
        there = kernels.decode_attention(torch.stack((q[0], q[2], q[row])), moved[0], moved[1], elsewhere,
                                         torch.tensor(5 + count - 1, device=device), 0.125, -(-320 // split_size), split_size, block=32)
        assert torch.equal(here[row], there[2]), f"a row's attention, pieces of {split_size}, in another batch"
        torch.testing.assert_close(here, expected, atol=tolerance, rtol=tolerance, msg=f"attention, pieces of {split_size}")
        # a prefill's positions as queries of one cache row, each to its own column: the decode step's bits
        ends = torch.tensor([column - 2, column, column - 1], device=device)
        queries = torch.stack((q[3], q[row], q[0]))
        prefill = kernels.decode_attention(queries, cache[0], cache[1], torch.full((3,), first, device=device), ends, 0.125,
                                           -(-columns // split_size), split_size, rows=torch.tensor([row, row, row], device=device), block=32)
        assert torch.equal(prefill[1], here[row]), "a prefill position and a decode step, the same query: the same bits"

    # the batch-invariant matmul: F.linear's values, and a row's bits whatever the rows beside it
    weight, bias = torch.randn(80, 200, dtype=dtype, device=device), torch.randn(80, dtype=dtype, device=device)
    x = torch.randn(70, 200, dtype=dtype, device=device)
    product = kernels.matmul(x, weight, bias, processors=4)
    torch.testing.assert_close(product, F.linear(x, weight, bias), atol=tolerance * 20, rtol=tolerance, msg="matmul")
    for lo, hi in ((0, 1), (5, 8), (3, 70)):
        assert torch.equal(kernels.matmul(x[lo:hi], weight, bias, processors=4), product[lo:hi]), f"matmul of rows {lo}-{hi}"
    assert kernels.matmul_tiles(80, 4) == 16 and kernels.matmul_tiles(4096, 32) == 128

    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, dtype=dtype, device=device)
    cos, sin = torch.randn(rows, dim, dtype=dtype, device=device), torch.randn(rows, dim, dtype=dtype, device=device)
    written = cache.clone()
    rotated_q = kernels.rope_and_store(qkv, cos, sin, written, torch.tensor(column, device=device), heads, kv_heads)
    x = qkv.view(rows, heads + 2 * kv_heads, dim)
    qk = x[:, : heads + kv_heads]
    half = dim // 2
    rotated = qk * cos[:, None] + torch.cat((qk[..., half:], qk[..., :half]), -1) * sin[:, None]
    assert torch.equal(rotated_q, rotated[:, :heads]), "rotated q"
    assert torch.equal(written[0, :, :, column], rotated[:, heads:]), "rotated k in the cache column"
    assert torch.equal(written[1, :, :, column], x[:, heads + kv_heads :]), "v in the cache column"
    others = torch.arange(columns, device=device) != column
    assert torch.equal(written[:, :, :, others], cache[:, :, :, others]), "no other column written"
    in_place = x.clone()
    assert kernels.rotate(in_place, cos, sin, heads + kv_heads) is in_place
    assert torch.equal(in_place[:, : heads + kv_heads], rotated), "the prefill's q and k rotated in place"
    assert torch.equal(in_place[:, heads + kv_heads :], x[:, heads + kv_heads :]), "v left as it was"

    width = 96
    hidden, delta = torch.randn(rows, width, dtype=dtype, device=device), torch.randn(rows, width, dtype=dtype, device=device)
    weight = torch.randn(width, dtype=dtype, device=device)
    summed = hidden + delta
    normed = kernels.add_rms_norm(hidden, delta, weight, 1e-6)
    assert torch.equal(hidden, summed), "the residual is added in place"
    reference = weight * F.rms_norm(summed.float(), (width,), eps=1e-6).to(dtype)
    torch.testing.assert_close(normed, reference, msg="add + RMSNorm")
    torch.testing.assert_close(kernels.add_rms_norm(summed.clone(), None, weight, 1e-6), reference, msg="RMSNorm alone")

    gate_up = torch.randn(rows, 2 * 300, dtype=dtype, device=device)
    gate, up = gate_up.chunk(2, -1)
    torch.testing.assert_close(kernels.silu_and_mul(gate_up, block=128), F.silu(gate) * up, msg="SiLU and mul")


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kernels_match_pytorch_in_the_interpreter(dtype: str) -> None:
    run_interpreted(f"import torch; from tests.test_kernels import check_kernels; check_kernels('cpu', torch.{dtype})", timeout=300)


@pytest.mark.skipif(not GPU, reason="needs a GPU Triton can compile for")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_match_pytorch_on_the_gpu(dtype: torch.dtype) -> None:
    check_kernels("cuda", dtype)


@pytest.mark.skipif(not GPU, reason="needs a GPU Triton can compile for")
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_fused_and_pytorch_decode_steps_agree(name: str) -> None:
    """The same prompts through both step paths (without batch invariance: the same matmuls): the same greedy
    tokens in float32."""
    chat = load_chat_model(load_registry()[name], Path("/nonexistent"), "float32", torch.device("cuda"))
    ids = torch.randint(3, chat.model.config.vocab_size, (6, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[1:, :7] = 0  # left padding
    outs = [StaticDecoder(chat.model, DecoderOptions(kernels=k, batch_invariant=False)).generate(ids, mask, max_new_tokens=64, stop_ids=[], pad_id=0) for k in ("triton", "torch")]
    assert torch.equal(*outs)


@pytest.mark.skipif(not GPU, reason="needs a GPU Triton can compile for")
@pytest.mark.parametrize("rows, invariant", [(None, False), (4, False), (4, True)])
def test_one_graph_serves_every_width_with_the_same_pieces(rows: int | None, invariant: bool) -> None:
    """A call whose rows grow through many column buckets captures a graph per width with the same attention
    pieces (one here: many rows, one piece; 4 rows, pieces of 64 columns; batch invariance, pieces of 256),
    not one per column bucket, and gives the tokens of graphs captured at every bucket's own width."""
    chat = load_chat_model(load_registry()["tiny-qwen2"], Path("/nonexistent"), "float32", torch.device("cuda"))
    processors = torch.cuda.get_device_properties(0).multi_processor_count
    kv_heads = chat.model.config.num_key_value_heads
    rows = rows or -(-2 * processors // kv_heads)
    ids = torch.randint(3, chat.model.config.vocab_size, (rows, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[1:, :7] = 0
    buckets = {round_columns(40 + step) for step in range(1, 400)}
    outs, captured = [], []
    for widest in (True, False):
        decoder = StaticDecoder(chat.model, DecoderOptions(batch_invariant=invariant, reuse_kv=False))
        if not widest:  # every step at its own column bucket, as before kernels.widest_same_pieces
            decoder.forward.step_columns = lambda rows, columns, capacity: columns
        outs.append(decoder.generate(ids, mask, max_new_tokens=400, stop_ids=[], pad_id=0))
        captured.append(len(decoder.graphs.captured))
    capacity = decoder.cache.layers[0].shape[3]
    widths = {kernels.widest_same_pieces(rows, kv_heads, columns, capacity, processors, invariant) for columns in buckets}
    assert captured == [len(widths), len(buckets)]
    if invariant or rows > 4 or processors >= 28:  # 4 rows: pieces of 64 columns at every width up to 448
        assert len(widths) == 1
    assert torch.equal(*outs)


def test_a_kernel_choice_that_cannot_run_is_refused() -> None:
    chat = load_chat_model(load_registry()["tiny-llama"], Path("/nonexistent"), "float32", torch.device("cpu"))
    with pytest.raises(ValueError, match="kernels=triton cannot run .* on cpu: (not a CUDA device|triton is not installed)"):
        StaticDecoder(chat.model, DecoderOptions(kernels="triton"))
    with pytest.raises(ValueError, match="unknown decode kernels 'fast'; choose one of auto, triton, torch"):
        StaticDecoder(chat.model, DecoderOptions(kernels="fast"))
    assert not StaticDecoder(chat.model, DecoderOptions(kernels="auto")).forward.use_kernels
    with pytest.raises(ConfigError, match="debate.kernels"):
        checked_config(["debate.kernels=fast"])
