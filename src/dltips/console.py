"""What a run prints when it starts: what its config changes, its data and its model, each
in one line (the full config is in the run's .hydra/config.yaml)."""

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dltips.config import CONF_DIR
from dltips.data import DataSplits
from dltips.resume import flatten
from dltips.schema import keys_where

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it

# a preset's description for the report (lecture), not a setting
NOT_SETTINGS = tuple(k.rstrip(".") for k in keys_where("description"))


@lru_cache(maxsize=1)  # once per process: a batched group prints this line for every run
def default_choices() -> dict[str, str | None]:
    """The option train.yaml's defaults list picks in each group: {'model': 'relu', ...}."""
    train = OmegaConf.load(CONF_DIR / "train.yaml")
    entries = [(k, v) for d in train.defaults if isinstance(d, DictConfig) for k, v in d.items()]
    return {k: v for k, v in entries if "/" not in k}  # not `override hydra/...`


@lru_cache(maxsize=32)
def _composed(overrides: tuple[str, ...]) -> dict[str, Any]:
    """The train config with only these group choices, resolved (composing takes ~0.3 s)."""
    if GlobalHydra.instance().is_initialized():  # inside scripts/train.py: its own conf/
        cfg = compose("train", overrides=list(overrides))
    else:  # train() called from Python
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def run_choices(run_dir: Path) -> dict[str, str | None] | None:
    """The option each config group got in this run (hydra.runtime.choices), from the run's
    .hydra/hydra.yaml (each job of a batched group has its own) or the running Hydra job."""
    recorded = Path(run_dir) / ".hydra" / "hydra.yaml"
    if recorded.is_file():  # plain YAML that Hydra wrote: libyaml reads it in 1 ms, not 20
        with open(recorded, encoding="utf-8") as f:
            return dict(yaml.load(f, Loader=SafeLoader)["hydra"]["runtime"]["choices"])
    if HydraConfig.initialized():
        return dict(HydraConfig.get().runtime.choices)
    return None


def _show(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, str):
        return json.dumps(value) if not value or " " in value else value
    return json.dumps(value, separators=(",", ":"))


def config_changes(cfg: DictConfig, run_dir: Path) -> list[str]:
    """What differs from the defaults, as overrides: the group options first (model=sigmoid),
    then each setting that differs from those options' own values (model.depth=4), which
    is also everything an experiment preset sets."""
    choices, defaults = run_choices(run_dir), default_choices()
    groups = [] if choices is None else [g for g in defaults if choices.get(g) != defaults[g]]
    # presets (experiment=..., groups that are no key of the config) first; the base has
    # only the other groups' options, so that what a preset sets is shown
    groups.sort(key=lambda g: g in cfg)
    try:
        base = _composed(tuple(f"{g}={choices[g]}" for g in groups if g in cfg))
    except Exception:  # conf/ not found (train() called from another Hydra app)
        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    old, new = (
        {k: v for k, v in flatten(c).items() if k.split(".")[0] not in NOT_SETTINGS}
        for c in (base, OmegaConf.to_container(cfg, resolve=True))
    )
    changes = [f"{g}={choices[g]}" for g in groups]
    for key in new:
        if key not in old:
            changes.append(f"+{key}={_show(new[key])}")
        elif new[key] != old[key]:
            changes.append(f"{key}={_show(new[key])}")
    changes += [f"~{key}" for key in old if key not in new]
    return changes


def shown_path(path: Path) -> str:
    """`path` relative to where the command was started, when it is below it."""
    start = Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()
    path = Path(os.path.abspath(path))
    return str(path.relative_to(start)) if path.is_relative_to(start) else str(path)


def config_line(cfg: DictConfig, run_dir: Path) -> str:
    """'Config: model=sigmoid model.depth=4 (...; full config: <run>/.hydra/config.yaml)'."""
    changes = config_changes(cfg, run_dir)
    full = Path(run_dir) / ".hydra" / "config.yaml"
    where = f"; full config: {shown_path(full)}" if full.is_file() else ""
    if not changes:
        return f"Config: the defaults{f' ({where[2:]})' if where else ''}"
    return f"Config: {' '.join(changes)}  (the rest as default{where})"


def data_line(cfg: DictConfig, data: DataSplits) -> str:
    """'Data mnist_5k: 3,500 train (350 per class) / 500 val / 1,000 test images, 784
    features, 10 classes, batches of 100 (35 steps per epoch)'; a subset says which."""
    n_train, batch_size = len(data.y_train), cfg.batch_size
    steps = -(-n_train // batch_size)
    counts = data.y_train.bincount(minlength=data.num_classes).tolist()
    low, high = min(counts), max(counts)
    per_class = f"{low:,}" if low == high else f"{low:,}-{high:,}"
    subset = ""
    if cfg.train_size is not None:
        seed = cfg.get("subset_seed")
        subset = "the first N, " if seed is None else f"subset_seed={seed}, "
    return (
        f"Data {cfg.name}: {n_train:,} train ({subset}{per_class} per class) / "
        f"{len(data.y_val):,} val / {len(data.y_test):,} test images, {data.in_features} "
        f"features, {data.num_classes} classes, batches of {batch_size:,} "
        f"({steps:,} step{'s' * (steps != 1)} per epoch)"
    )


def model_line(model: nn.Module, device: str) -> str:
    """'Model: 784-100-100-10 ReLU MLP, 89,610 parameters, on cpu'."""
    params = sum(p.numel() for p in model.parameters())
    return f"Model: {describe_model(model)}, {params:,} parameters, on {device}"


def describe_model(model: nn.Module) -> str:
    """'784-100-100-10 ReLU MLP' for a build_mlp network, else the model's class name."""
    layers = list(model) if isinstance(model, nn.Sequential) else []
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    others = [m for m in layers if not isinstance(m, nn.Linear | nn.Dropout)]
    if not linears:
        return type(model).__name__
    # a hidden layer's width is the next layer's input (a maxout layer outputs width * pieces)
    sizes = [m.in_features for m in linears] + [linears[-1].out_features]
    if not others:  # no hidden layer
        return f"{'-'.join(map(str, sizes))} linear model"
    extras = [f"{others[0].pieces} pieces per unit"] if hasattr(others[0], "pieces") else []
    extras += [f"dropout {m.p:g}" for m in layers[:3] if isinstance(m, nn.Dropout)]
    text = f"{'-'.join(map(str, sizes))} {type(others[0]).__name__} MLP"
    return text + (f" ({', '.join(extras)})" if extras else "")
