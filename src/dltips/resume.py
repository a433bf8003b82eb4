"""Resuming a run: which run dir it continues, whether the checkpoint's settings match, the hint.

A resume never changes what defines a run. Settings that only say how long or where to
train (RESUMABLE) may differ and are logged; any other difference is refused before
anything is written.
"""

import logging
import re
import shlex
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dltips.errors import CheckpointError

log = logging.getLogger(__name__)

# keys (or key prefixes ending in ".") that may change when a run continues
RESUMABLE = (
    "trainer.max_epochs",
    "trainer.device",
    "trainer.num_threads",
    "trainer.flush_denormal",
    "trainer.checkpoint_every",
    "trainer.resume",
    "trainer.early_stopping.patience",
    "trainer.early_stopping.min_delta",
    "trainer.early_stopping.restore_best",
    "trainer.early_stopping.mode",  # the same monitor implies the same direction
    "data.root",  # where the files are, not what they are
    "data.download",
    "sweep.resume",
    "lecture.",  # a preset's description (its published numbers), not a setting
)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: every leaf of a nested config under its dotted key."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): 'key: old -> new' for every setting that differs."""
    old, new = flatten(saved), flatten(current)
    refused, allowed = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        change = f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        (allowed if key.startswith(RESUMABLE) else refused).append(change)
    return refused, allowed


def check_same_run(ckpt: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse to continue a checkpoint whose run was defined by other settings."""
    refused, allowed = config_changes(ckpt["config"], OmegaConf.to_container(cfg, resolve=True))
    if refused:
        raise CheckpointError(
            f"Checkpoint {path} was written by a run with other settings; continuing it with "
            f"these would mix two experiments:\n    "
            + "\n    ".join(refused)
            + "\n  Resume with the same settings as the run that wrote it (its "
            ".hydra/config.yaml), or start a new run without trainer.resume. Only "
            "trainer.max_epochs, trainer.device, trainer.num_threads, the early-stopping "
            "patience and the data location may change on resume."
        )
    allowed = [c for c in allowed if not c.startswith(("trainer.resume:", "sweep.resume:"))]
    if allowed:
        log.info("Resuming with changed settings: %s", "; ".join(allowed))


def rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state the loop draws from, so a resumed run continues identically."""
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def hydra_override(key: str, path: Path | str) -> str:
    """`key="path"` as Hydra's override parser reads it back verbatim: a double-quoted value,
    with backslashes before a quote or at the end escaped."""
    value = re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), str(path))
    return f'{key}="{value}"'


def override_arg(key: str, path: Path | str) -> str:
    """`key="path"` as one shell word, safe to paste: spaces, quotes, non-ASCII characters."""
    return shlex.quote(hydra_override(key, path))
