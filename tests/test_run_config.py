"""The config tree: every key a knob() field of the part that owns it, each section checking itself, one flag
for what changes results, and a submitter that names no stage and no backend."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from pipeline.config import ConfigError
from pipeline.debate.settings import DebateSettings
from pipeline.launch import LAUNCHERS
from pipeline.launch.slurm import SlurmSettings
from pipeline.run_config import RunConfig
from pipeline.shards import Unit
from pipeline.stages import RUN_ONLY_WHEN, STAGES, build_config, load_config, run_only_keys
from tests.conftest import ROOT


def test_the_config_is_built_once_into_typed_frozen_sections() -> None:
    config = build_config(load_config(["stage=debate", "models=tiny", "debate.max_rounds=2", "cluster=debug", "limit=3"]))
    assert isinstance(config, RunConfig) and isinstance(config.debate, DebateSettings)
    assert (config.debate.max_rounds, config.limit, config.models.a, config.cluster.kind) == (2, 3, "tiny-llama", "debug")
    assert config.debate.baselines.vote_models == ("a", "b") and config.progress.refresh_s == 1.0
    with pytest.raises(AttributeError):
        config.nonesuch  # noqa: B018 - a section that is not there is no silent None
    with pytest.raises(Exception):
        config.limit = 4  # type: ignore[misc]


def test_the_backends_are_the_launchers_each_with_its_own_section(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(LAUNCHERS) == ["local", "debug", "slurm"]
    with pytest.raises(ConfigError, match=r"^cluster\.kind=k8s: not one of local, debug, slurm$"):
        load_config(["cluster.kind=k8s"])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"^cluster=slurm: no 'sbatch' on PATH"):
        load_config(["cluster=slurm"])
    with pytest.raises(ConfigError, match=r"^cluster\.max_requeues=-1: must be a whole number >= 0$"):
        load_config(["cluster=slurm", "cluster.max_requeues=-1"])


def test_a_slurm_section_checks_what_spans_its_fields(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    config = build_config(load_config(["cluster=v100"]))
    assert isinstance(config.cluster, SlurmSettings) and config.cluster.gpus_per_node == 1 and config.cluster.constraint == "v100"
    with pytest.raises(ConfigError, match=r"^cluster\.signal_delay_s=120 with cluster\.timeout_min=2: SLURM may send"):
        load_config(["cluster=slurm", "cluster.timeout_min=2"])


def test_what_changes_results_is_one_flag_on_each_field() -> None:
    """The resume check and the fingerprint skip exactly the keys whose knob() says results=False, and those
    whose knob() says run_only_when=batch_invariant where the config sets debate.batch_invariant=true."""
    always = {"run_id", "results_dir", "wait", "paths", "wandb", "progress", "cluster"}
    batching = {"debate.batch_size", "debate.vote_batch_rows", "debate.refill", "debate.cuda_graphs", "debate.reuse_kv", "debate.prefill_tokens", "debate.devices"}
    assert run_only_keys(load_config([])) == run_only_keys(load_config(["debate.batch_invariant=false"])) == always
    assert run_only_keys(load_config(["debate.batch_invariant=true"])) == always | batching
    assert RUN_ONLY_WHEN == {key: "debate.batch_invariant" for key in batching}
    schema = STAGES["debate"].schema
    assert schema is not None

    def fingerprint(*overrides: str) -> str:
        return schema(build_config(load_config(["stage=debate", *overrides])), None).fingerprint

    assert fingerprint("debate.prefill_tokens=64", "progress.refresh_s=5", "debate.batch_invariant=true") == fingerprint("debate.batch_invariant=true")
    assert fingerprint("debate.prefill_tokens=64") != fingerprint()
    assert fingerprint("progress.refresh_s=5") == fingerprint()
    assert fingerprint("debate.kernels=torch") != fingerprint()
    # A setting added later counts only when changed from what earlier runs did: debate.vote_batch_rows came in the
    # ninth session at null, the default until the sixteenth, and debate.refill in the sixteenth (off: what runs did);
    # a run made with those keeps the fingerprint runs had before the keys existed, so they still resume, and today's
    # default vote batching (1536) is in it.
    assert fingerprint("debate.vote_batch_rows=null", "debate.refill=false") == fingerprint("debate.vote_batch_rows=null") == "75afd029c54a33a4"
    assert fingerprint("debate.batch_invariant=true") == "c0038856c7eb9937"
    assert fingerprint() == fingerprint("debate.vote_batch_rows=1536", "debate.refill=false") != fingerprint("debate.vote_batch_rows=null")
    assert fingerprint("debate.refill=true") != fingerprint()


def test_no_eval_is_batch_invariant_so_its_batching_is_in_the_fingerprint() -> None:
    """The eval stage's decoders pick their kernels by the batch's shape (lm-eval's generate, EVAL_DECODER), so
    its batch and chunk sizes change responses on a GPU: in the records' fingerprint when set, compared on
    resume; at their defaults the fingerprint is the one runs made before had."""
    schema = STAGES["eval"].schema
    assert schema is not None
    unit = Unit("a/gsm8k", 0, 1, (0,))

    def fingerprint(*overrides: str) -> str:
        return schema(build_config(load_config(["stage=eval", *overrides])), unit).fingerprint

    base = fingerprint()
    for setting in ("eval.batch_size=4", "eval.max_batch_size=8", "eval.cpu_batch_size=2", "eval.chunk_size=16"):
        assert fingerprint(setting) != base, setting
        assert setting.split("=")[0] not in run_only_keys(load_config(["stage=eval", setting]))
    assert fingerprint("eval.batch_size=auto", "eval.chunk_size=128") == base
    # The settings that count only when changed (only_when_changed on their fields) leave the fingerprints of
    # runs made before them as they were: pinned here, as the first runs had them.
    assert base == "6ba5a65f3eef11cf" and fingerprint("eval.engine=static") == "839e3f3adf80d6d6"
    assert fingerprint("eval.max_gen_toks=512", "eval.apply_chat_template=true") == "5fb59bfeb37af98d"
    assert fingerprint("eval.num_fewshot=4") == "8741c111ed6cb7ac"
    # A vendored task's YAML is the project's own, and a part's model is named, not the run's list of models.
    assert fingerprint("eval.include_path=configs/lm_eval_tasks") == fingerprint("eval.models=[a]") == base


def test_help_lists_every_section_and_marks_the_run_only_keys() -> None:
    def help_of(*topic: str) -> str:
        done = subprocess.run([sys.executable, str(ROOT / "jobs" / "submit.py"), "--help", *topic], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "--help run | --help debate | --help eval | --help train | --help local | --help debug | --help slurm" in help_of()
    slurm = help_of("slurm")
    assert slurm.startswith("cluster.*: A real SLURM cluster through submitit.") and "cluster.signal_delay_s=120" in slurm
    debate = help_of("debate").split("\n  debate.")
    assert [entry.split("=")[0] for entry in debate if "run-only with debate.batch_invariant=true, else it changes results" in " ".join(entry.split())] == \
        ["batch_size", "vote_batch_rows", "refill", "cuda_graphs", "reuse_kv", "prefill_tokens", "devices"]
    assert not [entry for entry in debate if "run-only: changes no result" in " ".join(entry.split())]
    assert "paths.min_free_mib=200" in help_of("run")


def test_the_submitter_names_no_stage_and_no_backend() -> None:
    """submit.py reads the Stage objects and the launcher; a stage's or a backend's name in it is a table
    that belongs to them."""
    names = set(STAGES) | set(LAUNCHERS)
    tree = ast.parse((ROOT / "pipeline" / "submit.py").read_text(encoding="utf-8"))
    named = sorted({node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names})
    assert named == []
