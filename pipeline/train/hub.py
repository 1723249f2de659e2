"""``train.push_to_hub``: the finished adapter folder to a hub model repo, as ``hf upload`` would send it.

The token is never handled here: huggingface_hub takes it from ``HF_TOKEN`` (or its own login) itself, so
it never passes through the config, the job's pickles or a log line. ``HF_ENDPOINT`` points it at another
server (the tests' stand-in). A failed push costs one warning line: the adapter stays in the run folder,
and ``hf upload <repo> <folder>`` sends it later.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

# What stays behind: resumable state, wandb's offline run, the job's own bookkeeping.
LOCAL_ONLY = ["checkpoints/*", "checkpoints/**", "wandb/*", "wandb/**", "batch.json"]


def hub_repo(repo_id: str, model: str, models: list[str]) -> str:
    """The repo one adapter goes to: ``repo_id``, or ``<repo_id>-<model>`` when the run trains two models."""
    return repo_id if len(models) == 1 else f"{repo_id}-{model}"


def check_repo_id(key: str, repo: str) -> None:
    """A repo id the hub takes (huggingface_hub's own check: owner/name, letters, digits, '-', '_', '.', no
    '--' or '..', at most 96 characters) and an environment that lets the push out (huggingface_hub's own
    reading of ``HF_HUB_OFFLINE``: 1, true, yes, on): refused at submit rather than after training."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"{key}={repo}: not a hub repo id ({err})") from None
    if repo.count("/") != 1:
        raise ConfigError(f"{key}={repo}: give a hub repo id, owner/name (letters, digits, '-', '_', '.'), or null")
    offline = os.environ.get("HF_HUB_OFFLINE")
    if constants._is_true(offline):  # huggingface_hub's own parsing of its flag
        raise ConfigError(f"{key}={repo}: HF_HUB_OFFLINE={offline} (the suite's default is 1) blocks the push; "
                          "submit with HF_HUB_OFFLINE=0 and the token in HF_TOKEN")


def push_adapter(folder: Path, repo: str, run_id: str) -> str | None:
    """Creates the repo if needed and uploads the folder; its commit URL, or None (with a warning) on failure."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, ignore_patterns=LOCAL_ONLY,
                                   commit_message=f"gsm8k-slurm run {run_id}: ORPO LoRA adapter {folder.name}")
    except Exception as err:  # network, auth, offline mode, a refused repo name: each is one line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        log.warning("train.push_to_hub: %s not pushed to %s (%s: %s); it stays in %s", folder.name, repo, type(err).__name__, detail[:200], folder)
        return None
    log.info("%s: pushed to %s", folder.name, commit.commit_url)
    return str(commit.commit_url)
