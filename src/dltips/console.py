"""What a run prints when it starts: the overrides it was given, its data and its model,
each in one line (the full config is in the run's .hydra/config.yaml)."""

import os
import shlex
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

from dltips.data import DataSplits


def shown_path(path: Path) -> str:
    """`path` relative to where the command was started, when it is below it."""
    start = Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()
    path = Path(os.path.abspath(path))
    return str(path.relative_to(start)) if path.is_relative_to(start) else str(path)


def config_line(overrides: list[str] | None, run_dir: Path) -> str:
    """'Config: experiment=quick model.width=32  (full config: <run>/.hydra/config.yaml)':
    the overrides the command gave this run (Hydra's hydra.overrides.task), as typed; None
    for a run that train() was given from Python."""
    full = Path(run_dir) / ".hydra" / "config.yaml"
    where = f"full config: {shown_path(full)}" if full.is_file() else ""
    if overrides is None:
        given = "as given to train()"
    elif not overrides:
        given = "the defaults"
    else:
        return f"Config: {shlex.join(overrides)}" + (f"  ({where})" if where else "")
    return f"Config: {given}" + (f" ({where})" if where else "")


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
    if cfg.get("bootstrap"):
        subset += "a bootstrap resample: drawn with replacement, "
    return (
        f"Data {cfg.name}: {n_train:,} train ({subset}{per_class} per class) / "
        f"{len(data.y_val):,} val / {len(data.y_test):,} test images, {data.in_features} "
        f"features, {data.num_classes} classes, batches of {batch_size:,} "
        f"({steps:,} step{'s' * (steps != 1)} per epoch)"
    )


def model_line(model: nn.Module, device: str, budget: int | None = None) -> str:
    """'Model: 784-100-100-10 ReLU MLP, 89,610 parameters, on cpu'; with a budget
    (model.params), how far the count is from it."""
    params = sum(p.numel() for p in model.parameters())
    text = f"Model: {describe_model(model)}, {params:,} parameters"
    if budget is not None:
        text += f" (model.params={budget:,}: widths chosen, {(params - budget) / budget:+.2%})"
    return f"{text}, on {device}"


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
