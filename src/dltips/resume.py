"""Resuming a run: which run dir it continues, whether the checkpoint's settings match, the hint.

A resume never changes what defines a run. Settings that only say how long or where to
train (RESUMABLE) may differ and are logged; any other difference is refused before
anything is written.
"""

import dataclasses
import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from dltips.errors import CheckpointError
from dltips.schema import keys_where, nodes

log = logging.getLogger(__name__)

# keys (or key prefixes ending in ".") that may change when a run continues
RESUMABLE = keys_where("resumable")
# the RESUMABLE settings that change a run's results: a run resumed with another value is
# labelled with it (metrics.json "resumed_with"), so no summary pools it with runs without
DEFINES_RESULTS = keys_where("defines_results")
# every key's default (dltips.schema), where it has one
DEFAULTS = {k: f.default for k, f in nodes() if f.default not in (dataclasses.MISSING, MISSING)}


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
    # a key a later version added (model.params, data.bootstrap) had its default's meaning
    old |= {k: DEFAULTS[k] for k in new.keys() - old.keys() if k in DEFAULTS}
    refused, allowed = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        change = f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        (allowed if key.startswith(RESUMABLE) else refused).append(change)
    return refused, allowed


def check_same_run(ckpt: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse to continue a checkpoint whose run was defined by other settings."""
    saved = ckpt["config"]
    if "subset_seed" not in saved.get("data", {}):  # dltips 0.1: train_size took the first N
        saved = {**saved, "data": {**saved["data"], "subset_seed": None}}
        if saved["data"].get("train_size") is None:  # no subset: the key changes nothing
            saved["data"]["subset_seed"] = cfg.data.get("subset_seed")
    refused, allowed = config_changes(saved, OmegaConf.to_container(cfg, resolve=True))
    if refused:
        raise CheckpointError(
            f"Checkpoint {path} was written by a run with other settings; continuing it with "
            f"these would mix two experiments:\n    "
            + "\n    ".join(refused)
            + "\n  Resume with the same settings as the run that wrote it (its "
            ".hydra/config.yaml), or start a new run without trainer.resume. Only "
            "trainer.max_epochs, trainer.device, trainer.num_threads, the early-stopping "
            "patience and the data location may change on resume."
            + (
                " This run was written by dltips 0.1, whose data.train_size took the first "
                "images: add data.subset_seed=null to continue it on the same images."
                if any(c.startswith("data.subset_seed: None ->") for c in refused)
                else ""
            )
        )
    allowed = [c for c in allowed if not c.startswith(("trainer.resume:", "sweep.resume:"))]
    if allowed:
        log.info("Resuming with changed settings: %s", "; ".join(allowed))
    if any(c.startswith(DEFINES_RESULTS) for c in allowed):
        log.info(
            "Summaries and plots label this run with its new settings: its results are no "
            "longer pooled with runs trained without the change."
        )


def resumed_with(ckpt: dict[str, Any], cfg: DictConfig) -> dict[str, str]:
    """{key: value} of every result-defining setting this resume changes, and those earlier
    resumes of the run changed, values written as an override would write them."""
    old = flatten(ckpt["config"])
    new = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = {k: v for k, v in new.items() if k.startswith(DEFINES_RESULTS) and old.get(k, v) != v}
    return {**ckpt.get("resumed_with", {}), **{k: _override_value(v) for k, v in changed.items()}}


def _override_value(value: Any) -> str:
    """5 -> '5', None -> 'null', True -> 'true': a value as it reads in an override."""
    return value if isinstance(value, str) else json.dumps(value)


def rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every random state the loop draws from, so a resumed run continues identically."""
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def hydra_override(key: str, path: Path | str) -> str:
    """`key="path"` as Hydra's override parser reads it back verbatim: a double-quoted value,
    with backslashes before a quote or at the end escaped."""
    value = re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), str(path))
    return f'{key}="{value}"'


def override_arg(key: str, path: Path | str) -> str:
    """`key="path"` as one shell word, safe to paste: spaces, quotes, non-ASCII characters."""
    return shlex.quote(hydra_override(key, path))
