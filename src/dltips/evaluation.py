"""Evaluate and predict with a trained checkpoint (scripts/eval.py, scripts/predict.py).

The model is rebuilt from the checkpoint's own config (the resolved training config) and
its weights; the data comes from the checkpoint's data config, with the `data` keys given
on the command line in place of its own. Nothing is written into the run directory.
"""

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dltips.checkpoint import atomic_write_json, load_checkpoint
from dltips.config import resolve_device, validate
from dltips.data import load_dataset
from dltips.ensemble import (
    first_sizes,
    log_mean_exp,
    nll_and_accuracy,
    plot_ensemble,
    subset_accuracies,
    vote,
)
from dltips.errors import CheckpointError, ConfigError, DataError, UserError
from dltips.preflight import PreflightError, check_writable, claim_clock_named_dir, holds_a_run
from dltips.runs import USABLE, BadMetrics, collect_runs, read_metrics, status_counts
from dltips.runs import _natural_key as natural_key
from dltips.step import evaluate
from dltips.task import remove_unstarted

log = logging.getLogger(__name__)
SPLITS = ("test", "val", "train")
# what Hydra writes before the job starts: removed again when the command fails
HYDRA_FILES = {
    ".hydra/config.yaml",
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
    "eval.log",
    "multirun.yaml",
}
# preprocessing the model was trained with: kept when data=<option> picks another data set
PREPROCESSING = ("normalize", "test_noise_std")
CKPT_HINT = (
    "Give ckpt a run directory (the weights its metrics.json reports are used) or a .pt "
    "file from a run's checkpoints/ folder."
)


# --- the checkpoint and its model ---------------------------------------------------------


def resolve_ckpt(ckpt: Any) -> Path:
    """The checkpoint file for a `ckpt=` value: a .pt file, or the one whose weights a run
    dir's metrics.json reports (its `checkpoint`); never another file in its place."""
    if ckpt is None or str(ckpt) == "":
        raise ConfigError(
            "ckpt is not set: give ckpt=<run dir> (the weights its metrics.json reports) or "
            "ckpt=<checkpoint .pt file>."
        )
    path = Path(str(ckpt))
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(
            f"ckpt={ckpt}: no such run directory or checkpoint file. Run directories are "
            f"under outputs/DATE/TIME/ (or outputs/multirun/DATE/TIME/N/)."
        )
    last = path / "checkpoints" / "last.pt"
    try:
        metrics = read_metrics(path)
    except BadMetrics as err:
        raise CheckpointError(
            f"ckpt={ckpt}: {err}, so it does not say which weights the run reports. Name a "
            f"checkpoint instead: ckpt={last}"
        ) from None
    if metrics is None:
        if not (path / "checkpoints").is_dir():
            raise CheckpointError(
                f"ckpt={ckpt}: no metrics.json or checkpoints/ in this directory: not a run "
                f"directory. {CKPT_HINT}"
            )
        raise CheckpointError(
            f"ckpt={ckpt}: this run has not finished (no metrics.json), so it reports no "
            f"weights. Finish it with trainer.resume={ckpt}, or name a checkpoint: "
            f"ckpt={last} (its latest epoch)."
        )
    if metrics["status"] == "failed":
        raise CheckpointError(
            f"ckpt={ckpt}: this run failed ({metrics.get('error', 'see its train.log')}), so "
            f"it reports no weights. To use its last saved epoch anyway: ckpt={last}"
        )
    reported = reported_checkpoint(path, metrics)
    if not reported.is_file():
        others = [p for p in sorted(path.glob("checkpoints/*.pt")) if p != reported]
        instead = f"ckpt={others[-1]}" if others else "ckpt=<a .pt checkpoint>"
        raise CheckpointError(
            f"ckpt={ckpt}: its metrics.json reports the weights of "
            f"{reported.relative_to(path)}, which is missing. To use another checkpoint (its "
            f"numbers will not be metrics.json's), name it: {instead}"
        )
    return reported


def reported_checkpoint(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """The checkpoint whose weights a finished run's metrics.json reports.

    metrics.json names it (`checkpoint`). A run written before it did reported best.pt when
    trainer.early_stopping.restore_best was on (last.pt holds the config of the last
    process that trained it) and an epoch had been best; else last.pt.
    """
    if "checkpoint" in metrics:
        return run_dir / metrics["checkpoint"]
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if not last.is_file():
        raise CheckpointError(
            f"ckpt={run_dir}: checkpoints/last.pt is missing, and its config says which "
            f"weights this run (trained before metrics.json named its checkpoint) reports. "
            f"Name a checkpoint instead: ckpt={best}"
        )
    restore_best = load_ckpt(last)["config"]["trainer"]["early_stopping"]["restore_best"]
    return best if restore_best and metrics.get("best_epoch", 0) >= 1 else last


def weights_note(path: Path, epoch: int) -> tuple[str | None, str | None]:
    """(the status of the run that wrote checkpoint `path`, a warning about its weights).

    A diverged run's weights are said to be from before it diverged; a checkpoint other
    than the one the run reports is said to be so. (None, None) for a file outside a run.
    """
    if path.parent.name != "checkpoints":
        return None, None
    run_dir = path.parent.parent
    try:
        metrics = read_metrics(run_dir)
    except BadMetrics:
        return None, None
    if metrics is None:
        return None, None
    status = metrics["status"]
    if status == "diverged":
        at = metrics.get("epochs_trained", 0) + 1
        if epoch == 0:
            which = "its initial weights: no epoch finished"
        elif epoch == at - 1:
            which = "the last finite ones"
        elif epoch == metrics.get("best_epoch"):
            which = "its best epoch's"
        else:
            which = "an earlier epoch's"
        return status, (
            f"run {run_dir} diverged at epoch {at} (its loss became NaN or infinite): these "
            f"are its weights from epoch {epoch} ({which})."
        )
    if status in ("completed", "pruned"):
        try:
            reported = reported_checkpoint(run_dir, metrics)
        except UserError:
            return status, None
        # the same epoch of the same run is the same weights (best.pt and last.pt alike)
        if reported.is_file() and load_ckpt(reported)["epoch"] == epoch:
            return status, None
        if reported.resolve() != path.resolve():
            return status, (
                f"run {run_dir} reports the weights of {reported.relative_to(run_dir)} in its "
                f"metrics.json; these are {path.name}'s (epoch {epoch}), so the numbers "
                f"differ from metrics.json's."
            )
    return status, None


def load_ckpt(path: Path) -> dict[str, Any]:
    """load_checkpoint (weights_only), with advice for `ckpt=` instead of for a resume."""
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        # load_checkpoint's advice is about trainer.resume: keep what is wrong, advise ckpt=
        found = re.search(
            r"\s+(Give trainer\.resume|dltips did not write it: resume|Resume from)", str(err)
        )
        what = str(err)[: found.start()] if found else str(err)
        raise CheckpointError(f"{what} {CKPT_HINT}") from None


def build_model(
    saved: DictConfig, state: dict, in_features: int, num_classes: int, path: Path
) -> nn.Module:
    """The checkpoint's model, built from its own config with the given sizes, in eval mode."""
    try:
        model = instantiate(saved.model, in_features=in_features, num_classes=num_classes)
    except Exception as err:
        cause = err.__cause__ or err
        raise CheckpointError(f"Cannot build the model of {path} from its config: {cause}") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # sizes that differ: another data set shape
        detail = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"The weights in {path} do not fit a model for {in_features} inputs and "
            f"{num_classes} classes ({detail})."
        ) from err
    return model.eval()


def model_sizes(state: dict) -> tuple[int, int]:
    """(inputs, classes) of a model's state dict: its first and last weight matrices."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return weights[0].shape[1], weights[-1].shape[0]


@torch.no_grad()
def logits(
    model: nn.Module, x: torch.Tensor, bf16: bool, chunk: int = 10_000, dropout: bool = False
) -> torch.Tensor:
    """The model's float32 logits for all of x, `chunk` images at a time, in eval mode; with
    `dropout`, its dropout layers draw masks (MC dropout) while the rest stays in eval mode."""
    model.eval()
    for layer in model.modules():
        if isinstance(layer, nn.Dropout):
            layer.train(dropout)
    out = []
    for i in range(0, len(x), chunk):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x[i : i + chunk]).float())
    model.eval()
    return torch.cat(out)


def mc_dropout_log_probs(
    model: nn.Module, x: torch.Tensor, samples: int, bf16: bool, seed: int
) -> torch.Tensor:
    """Log of the mean softmax probabilities of `samples` passes with dropout on (MC
    dropout), the masks drawn from torch's RNG seeded with `seed` (the process's own RNG
    state is put back afterwards)."""
    devices = [] if x.device.type == "cpu" else [x.device.index or 0]  # CUDA's or MPS's too
    with torch.random.fork_rng(devices=devices, device_type=x.device.type):
        torch.manual_seed(seed)
        draws = [logits(model, x, bf16, dropout=True).log_softmax(dim=1) for _ in range(samples)]
    return log_mean_exp(torch.stack(draws))


# --- scripts/eval.py --------------------------------------------------------------------


def data_config(saved: DictConfig, chosen: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's data config with the `data` keys the command line gives in its place.

    `data=<option>` picks another data set (its files and splits; the images get the
    checkpoint's normalize and test_noise_std, as the model was trained); each
    `data.<key>=<value>` sets that key.
    """
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    chosen = OmegaConf.create(OmegaConf.to_container(chosen, resolve=True))
    data = OmegaConf.create(OmegaConf.to_container(saved.data))
    if "data" in keys:
        data = OmegaConf.merge(chosen, {k: data[k] for k in PREPROCESSING if k in data})
    for key in keys:
        if key.startswith("data."):
            OmegaConf.update(data, key[5:], OmegaConf.select(chosen, key[5:]), merge=False)
    return data


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; write eval.json and confusion_matrix.png to out_dir.
    With several runs in `ckpt` (a list, a sweep dir), evaluate their ensemble instead."""
    split = cfg.split
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: must be test, val or train.")
    if not is_integer(cfg.mc_samples) or cfg.mc_samples < 0:
        raise ConfigError(
            f"mc_samples={cfg.mc_samples}: must be an integer >= 0, the number of dropout "
            f"samples to average (0: no MC dropout)."
        )
    if not is_integer(cfg.seed):
        raise ConfigError(f"seed={cfg.seed}: must be an integer.")
    ensemble = ensemble_runs(cfg.ckpt)
    if ensemble is not None:
        return evaluate_ensemble(cfg, out_dir, overrides, *ensemble)
    device = resolve_device(cfg.trainer.device)
    path = resolve_ckpt(cfg.ckpt)
    ckpt = load_ckpt(path)
    status, warning = weights_note(path, ckpt["epoch"])
    saved = OmegaConf.create(ckpt["config"])
    data_cfg = data_config(saved, cfg.data, overrides)
    given = data_overrides(overrides)
    # every check of the training config applies to the changed data config too
    validate(OmegaConf.merge(saved, {"data": data_cfg}))

    data = load_dataset(data_cfg, seed=saved.seed)
    x, y = getattr(data, f"x_{split}").to(device), getattr(data, f"y_{split}").to(device)
    model = build_model(saved, ckpt["model"], data.in_features, data.num_classes, path)
    model = model.to(device)
    criterion = build_criterion(saved, path)
    bf16 = str(saved.trainer.precision) == "bf16"

    # loss and accuracy exactly as train() measures them; the confusion matrix from logits
    loss, acc = evaluate(model, x, y, criterion, bf16)
    n = data.num_classes
    confusion = confusion_matrix(y, logits(model, x, bf16).argmax(dim=1), n)
    per_class = per_class_acc(confusion)
    result = {
        "split": split,
        f"{split}/loss": finite_or_none(loss),
        f"{split}/acc": acc,
        "per_class_acc": per_class,
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
        "num_images": len(y),
        "checkpoint": str(path.resolve()),
        "epoch": ckpt["epoch"],
        "run_status": status,  # of the run that wrote the checkpoint; null outside a run
        "warning": warning,  # a diverged run's weights, or not the ones the run reports
        "data_overrides": given,
        "data": OmegaConf.to_container(data_cfg),
        "device": str(device),
    }

    noise = f", test_noise_std {data_cfg.test_noise_std}" if split == "test" else ""
    log.info("Checkpoint %s (epoch %d)", path, ckpt["epoch"])
    if warning:
        log.warning(warning)
    log.info("Data %s, %s split: %d images%s", data_cfg.name, split, len(y), noise)
    log.info("%s/acc %.4f  %s/loss %.4f", split, acc, split, loss)
    log.info("per-class acc:  %s", per_class_line(per_class))
    if cfg.mc_samples:
        result.update(mc_dropout(model, x, y, cfg, bf16, per_class))
    atomic_write_json(result, out_dir / "eval.json")
    diverged = ", of a diverged run" if status == "diverged" else ""
    title = f"{data_cfg.name} {split}{noise}: acc {acc:.4f} (epoch {ckpt['epoch']}{diverged})"
    plot_confusion(confusion, title).savefig(out_dir / "confusion_matrix.png", dpi=120)
    log.info("Outputs in %s", out_dir)
    return result


def mc_dropout(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DictConfig,
    bf16: bool,
    per_class: list[float | None],
) -> dict[str, Any]:
    """eval.json's MC dropout keys: the mean probabilities of cfg.mc_samples passes with
    dropout on, next to the weight-scaled (plain) evaluation's per-class accuracy."""
    split, samples = cfg.split, cfg.mc_samples
    if not any(isinstance(layer, nn.Dropout) for layer in model.modules()):
        log.warning("The model has no dropout layers: MC dropout equals the plain evaluation.")
    mean = mc_dropout_log_probs(model, x, samples, bf16, cfg.seed)
    loss, acc = nll_and_accuracy(mean, y)
    mc_per_class = per_class_acc(confusion_matrix(y, mean.argmax(dim=1), mean.shape[1]))
    log.info(
        "MC dropout (%d samples, seed %d): mc_dropout/%s/acc %.4f  mc_dropout/%s/loss %.4f",
        *(samples, cfg.seed, split, acc, split, loss),
    )
    log.info("per-class acc:  %s", per_class_line(mc_per_class))
    return {
        "mc_samples": samples,
        "seed": cfg.seed,
        f"mc_dropout/{split}/loss": finite_or_none(loss),
        f"mc_dropout/{split}/acc": acc,
        "per_class": {
            "weight_scaled": per_class,
            "mc_dropout": mc_per_class,
            "difference": [  # mc_dropout minus weight_scaled
                None if a is None else b - a for a, b in zip(per_class, mc_per_class)
            ],
        },
    }


def ensemble_runs(ckpt: Any) -> tuple[list[Path], list[dict[str, str]]] | None:
    """(the runs of an ensemble in run order, the runs of a sweep dir left out and their
    status) when `ckpt` is a list or a folder of runs that is no run itself; else None."""
    if OmegaConf.is_list(ckpt) or isinstance(ckpt, list | tuple):
        if len(ckpt) == 0:
            raise ConfigError("ckpt=[]: name the runs of the ensemble, ckpt=[<run>,<run>,...].")
        return sorted((Path(str(c)) for c in ckpt), key=natural_key), []
    if ckpt is None or str(ckpt) == "":
        return None
    root = Path(str(ckpt))
    if not root.is_dir() or holds_a_run(root):
        return None
    runs = collect_runs(root)
    if runs.empty or (runs["run"] == ".").all():
        return None
    runs = runs[runs["run"] != "."]
    usable = runs["status"].isin(USABLE)
    if not usable.any():
        raise CheckpointError(
            f"ckpt={ckpt}: none of its {len(runs)} runs completed "
            f"({status_counts(runs['status'])}), so it holds no members for an ensemble."
        )
    left_out = [
        {"run": str((root / r).resolve()), "status": s}
        for r, s in runs.loc[~usable, ["run", "status"]].values
    ]
    return [root / r for r in runs.loc[usable, "run"]], left_out


def evaluate_ensemble(
    cfg: DictConfig,
    out_dir: Path,
    overrides: list[str],
    runs: list[Path],
    left_out: list[dict[str, str]],
) -> dict[str, Any]:
    """The ensemble of `runs` (the mean of their softmax probabilities) on a split: write
    eval.json, ensemble.png and the ensemble's confusion_matrix.png to out_dir."""
    split = cfg.split
    if cfg.mc_samples:
        raise ConfigError(
            f"mc_samples={cfg.mc_samples} evaluates one run, not an ensemble of {len(runs)}: "
            f"give each run its own evaluation, e.g. python scripts/eval.py -m "
            f"ckpt={','.join(str(r) for r in runs[:2])} mc_samples={cfg.mc_samples}"
        )
    device = resolve_device(cfg.trainer.device)
    # every member's checkpoint and data config first: a mismatch stops before any data loads
    members = []
    for run in runs:
        path = resolve_ckpt(run)
        ckpt = load_ckpt(path)  # loaded again below: one member's weights in memory at a time
        saved = OmegaConf.create(ckpt["config"])
        data_cfg = data_config(saved, cfg.data, overrides)
        validate(OmegaConf.merge(saved, {"data": data_cfg}))
        classes = model_sizes(ckpt["model"])[1]
        members.append((run, path, saved, data_cfg, classes))
    first_run, _, _, first_data, first_classes = members[0]
    for run, _, _, data_cfg, classes in members[1:]:
        if (data_cfg.name, classes) != (first_data.name, first_classes):
            raise ConfigError(
                f"ckpt: the runs of an ensemble must share the data set and the number of "
                f"classes: {first_run} has {first_data.name} ({first_classes} classes), {run} "
                f"has {data_cfg.name} ({classes} classes)."
            )

    # each member sees the split as its own evaluation would (its normalization and seed);
    # the images under that must be the same ones, in the same order, for every member
    log_probs, rows, reference = [], [], None
    for run, path, saved, data_cfg, _ in members:
        plain = OmegaConf.merge(data_cfg, {"normalize": "none", "test_noise_std": 0.0})
        raw = load_dataset(plain, seed=saved.seed)
        images = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        if reference is None:
            reference = images
        elif not all(torch.equal(a, b) for a, b in zip(images, reference)):
            raise ConfigError(
                f"split={split}: {run} and {first_run} hold out different {split} images (another "
                f"seed, data.train_size or data.val_size): evaluate their ensemble on split=test."
            )
        ckpt = load_ckpt(path)
        data = load_dataset(data_cfg, seed=saved.seed)
        x, y = getattr(data, f"x_{split}").to(device), getattr(data, f"y_{split}").to(device)
        model = build_model(saved, ckpt["model"], data.in_features, data.num_classes, path)
        model = model.to(device)
        bf16 = str(saved.trainer.precision) == "bf16"
        loss, acc = evaluate(model, x, y, build_criterion(saved, path), bf16)
        log_probs.append(logits(model, x, bf16).log_softmax(dim=1))
        status, warning = weights_note(path, ckpt["epoch"])
        rows.append(
            {
                "run": str(run.resolve()),
                "checkpoint": str(path.resolve()),
                "epoch": ckpt["epoch"],
                "run_status": status,
                "warning": warning,
                f"{split}/acc": acc,
                f"{split}/loss": finite_or_none(loss),
            }
        )
    log_probs = torch.stack(log_probs)  # (members, images, classes)

    # the ensemble: the mean of the members' probabilities; its loss is their mean's NLL
    mean = log_mean_exp(log_probs)
    loss, acc = nll_and_accuracy(mean, y)
    vote_acc = (vote(log_probs) == y).sum().item() / len(y)
    first = []
    for k in first_sizes(len(runs)):
        k_loss, k_acc = nll_and_accuracy(log_mean_exp(log_probs[:k]), y)
        first.append({"members": k, f"{split}/acc": k_acc, f"{split}/loss": finite_or_none(k_loss)})
    subsets = subset_accuracies(log_probs, y, cfg.seed)
    confusion = confusion_matrix(y, mean.argmax(dim=1), first_classes)
    per_class = per_class_acc(confusion)
    result = {
        "split": split,
        f"{split}/loss": finite_or_none(loss),  # NLL of the mean probabilities
        f"{split}/acc": acc,  # argmax of the mean probabilities
        f"{split}/vote_acc": vote_acc,  # majority vote; a tie goes to the lowest class
        "per_class_acc": per_class,
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
        "num_images": len(y),
        "members": rows,
        "left_out": left_out,  # runs of a sweep dir that did not complete
        "first_members": first,  # the first 1, 2, 4, ... members (run order) and all
        "subsets": subsets,  # k random members, for ensemble.png
        "seed": cfg.seed,
        "data_overrides": data_overrides(overrides),
        "data": OmegaConf.to_container(first_data),  # the first member's
        "device": str(device),
    }

    noise = f", test_noise_std {first_data.test_noise_std}" if split == "test" else ""
    log.info("Ensemble of %d runs (the mean of their probabilities):", len(runs))
    for i, (run, row) in enumerate(zip(runs, rows), 1):
        log.info(
            "  %d. %s (epoch %d)  %s/acc %.4f", i, run, row["epoch"], split, row[f"{split}/acc"]
        )
        if row["warning"]:
            log.warning(row["warning"])
    if left_out:
        statuses = status_counts(r["status"] for r in left_out)
        log.info("Left out of %s (did not complete): %s", cfg.ckpt, statuses)
    log.info("Data %s, %s split: %d images%s", first_data.name, split, len(y), noise)
    log.info(
        "%s/acc %.4f  %s/loss %.4f  %s/vote_acc %.4f", split, acc, split, loss, split, vote_acc
    )
    log.info(
        "first k members:  %s",
        "  ".join(f"{row['members']}: {row[f'{split}/acc']:.4f}" for row in first),
    )
    log.info("per-class acc:  %s", per_class_line(per_class))
    atomic_write_json(result, out_dir / "eval.json")
    title = f"{first_data.name} {split}{noise}: ensemble of {len(runs)}, acc {acc:.4f}"
    plot_confusion(confusion, title).savefig(out_dir / "confusion_matrix.png", dpi=120)
    member_mean = sum(row[f"{split}/acc"] for row in rows) / len(rows)
    curve = [(row["members"], row[f"{split}/acc"]) for row in first]
    plot_ensemble(subsets, curve, member_mean, split, title).savefig(
        out_dir / "ensemble.png", dpi=120
    )
    log.info("Outputs in %s", out_dir)
    return result


def data_overrides(overrides: list[str]) -> list[str]:
    """The command line's `data` arguments (data=..., data.KEY=...)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] == "data"]


def build_criterion(saved: DictConfig, path: Path) -> nn.Module:
    """The checkpoint's loss, built from its config."""
    try:
        return instantiate(saved.loss.criterion)
    except Exception as err:
        raise CheckpointError(f"Cannot build the loss of {path}: {err.__cause__ or err}") from err


def confusion_matrix(y: torch.Tensor, predicted: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) counts on the CPU: rows the true class, columns the predicted one."""
    return torch.bincount(y * n + predicted, minlength=n * n).view(n, n).cpu()


def per_class_acc(confusion: torch.Tensor) -> list[float | None]:
    """Each class's accuracy from a confusion matrix; None for a class with no images."""
    support = confusion.sum(dim=1)
    return [None if s == 0 else c / s for c, s in zip(confusion.diag().tolist(), support.tolist())]


def per_class_line(per_class: list[float | None]) -> str:
    return "  ".join(f"{c}: {'-' if a is None else f'{a:.3f}'}" for c, a in enumerate(per_class))


def finite_or_none(value: float) -> float | None:
    """A loss for JSON: None where it is NaN or infinite (a diverged run's)."""
    return value if math.isfinite(value) else None


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plot_confusion(confusion: torch.Tensor, title: str) -> Figure:
    """A confusion matrix as a heat map with the count in each cell; rows are the true class."""
    n = len(confusion)
    fig = Figure(figsize=(1.5 + 0.55 * n, 1.0 + 0.5 * n), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    dark = confusion.max().item() / 2
    for t in range(n):
        for p in range(n):
            count = confusion[t, p].item()
            color = "white" if count > dark else "black"
            ax.text(p, t, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(n), [str(c) for c in range(n)])
    ax.set_yticks(range(n), [str(c) for c in range(n)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def run_eval(cfg: DictConfig) -> float:
    """What scripts/eval.py does: a user error prints `error: ...` and leaves no files."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        result = evaluate_checkpoint(cfg, out_dir, list(hc.overrides.task))
    except UserError as err:
        remove_unstarted(out_dir, HYDRA_FILES)
        raise SystemExit(f"error: {err}") from None
    except SystemExit:  # Ctrl-C (see scripts/eval.py)
        remove_unstarted(out_dir, HYDRA_FILES)
        raise
    return result[f"{cfg.split}/acc"]


class EvalChecks(Callback):
    """Before Hydra writes anything: an evaluation never writes into a run or over another."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        out_dir = claim_clock_named_dir(config, "run") or Path(config.hydra.run.dir)
        check_output_dir(out_dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = claim_clock_named_dir(config, "sweep") or Path(config.hydra.sweep.dir)
        check_output_dir(sweep_dir, "hydra.sweep.dir")
        for job in sweep_dir.iterdir():
            if job.is_dir():
                check_output_dir(job, "hydra.sweep.dir")


def check_output_dir(folder: Path, key: str) -> None:
    if holds_a_run(folder):
        raise PreflightError(
            f"{folder} holds a training run: an evaluation never writes into one. Leave out "
            f"{key} (evaluations go to outputs/eval/), or choose another directory."
        )
    if (folder / "eval.json").exists():
        raise PreflightError(f"{folder} already holds an evaluation: choose another {key}.")
    check_writable(folder, key)


# --- scripts/predict.py -----------------------------------------------------------------


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGES_HINT = "a folder of .png or .jpg images, one such image, or an .npy file"


def read_images(path: Path, side: int) -> tuple[list[str], torch.Tensor]:
    """(names, float pixels 0..255 (N, side*side)) of a folder of images, one image or an .npy."""
    if not path.exists():
        raise DataError(
            f"images={path}: no such file or folder. Give {IMAGES_HINT} of shape "
            f"(N, {side}, {side}), (N, {side * side}) or ({side}, {side})."
        )
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = [path]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(
                f"images={path}: the folder holds no .png or .jpg files. Give {IMAGES_HINT}."
            )
        return [p.name for p in files], read_image_files(files, side)
    if path.suffix.lower() != ".npy":
        raise DataError(
            f"images={path}: not a folder, an image or an .npy file. Give {IMAGES_HINT}."
        )
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"images={path}: cannot read it as an .npy array ({err}).") from err
    pixels = pixels_of_array(array, path, side)
    return [str(i) for i in range(len(pixels))], pixels


def pixels_of_array(array: np.ndarray, path: Path, side: int) -> torch.Tensor:
    """Float pixels 0..255 (N, side*side) of an array of images: integers 0..255 as they
    are, floats 0..1 (as torchvision's ToTensor gives them) times 255."""
    if array.shape in ((side, side), (side * side,)):  # one image
        array = array[None]
    if array.ndim not in (2, 3) or array.shape[1:] not in ((side, side), (side * side,)):
        raise DataError(
            f"images={path}: its array has shape {array.shape}; it must be (N, {side}, {side}) "
            f"or (N, {side * side}), N images of {side}x{side} pixels, or one image "
            f"({side}, {side})."
        )
    if len(array) == 0:
        raise DataError(f"images={path}: the array holds no images.")
    if np.issubdtype(array.dtype, np.integer):
        low, high, scale = 0, 255, 1.0
    elif np.issubdtype(array.dtype, np.floating):
        low, high, scale = 0, 1, 255.0
    else:
        raise DataError(
            f"images={path}: its array is {array.dtype}; give integer pixels 0..255 or float "
            f"pixels 0..1."
        )
    if not (np.isfinite(array).all() and array.min() >= low and array.max() <= high):
        raise DataError(
            f"images={path}: its {array.dtype} values lie in {array.min()}..{array.max()}; "
            f"{'integer pixels must be 0..255' if scale == 1 else 'float pixels must be 0..1'} "
            f"(or give {'float pixels 0..1' if scale == 1 else 'integer pixels 0..255'})."
        )
    pixels = torch.from_numpy(array.astype(np.float32)).reshape(len(array), -1)
    return pixels * scale


def read_image_files(files: list[Path], side: int) -> torch.Tensor:
    """Float pixels 0..255 (N, side*side) of image files; other modes and sizes converted
    with PIL."""
    from PIL import Image, UnidentifiedImageError

    images, converted = [], 0
    for file in files:
        try:
            with Image.open(file) as img:
                img.load()
                if img.mode != "L" or img.size != (side, side):
                    converted += 1
                    img = img.convert("L").resize((side, side), Image.Resampling.LANCZOS)
                images.append(np.asarray(img, dtype=np.uint8).reshape(-1))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"images: cannot read {file} as an image ({err}).") from err
    if converted:
        log.warning(
            "%d of %d images were not %dx%d grayscale: converted to grayscale and resized "
            "(the training digits are white on black, centered)",
            converted,
            len(files),
            side,
            side,
        )
    return torch.from_numpy(np.stack(images)).float()


def normalize_images(x: torch.Tensor, data: DictConfig, seed: int) -> torch.Tensor:
    """Pixels 0..255 normalized as the training data was (data.normalize of the checkpoint)."""
    if data.normalize == "unit":
        return x / 255
    if data.normalize == "standard":  # the training split's mean and std, as data.py has them
        plain = OmegaConf.merge(data, {"normalize": "none", "test_noise_std": 0.0})
        x_train = load_dataset(plain, seed=seed).x_train
        return (x - x_train.mean()) / x_train.std()
    return x


def predict_images(cfg: DictConfig) -> list[tuple[str, int, float]]:
    """(image name, predicted class, its probability) for each image of `cfg.images`."""
    device = resolve_device(cfg.trainer.device)
    path = resolve_ckpt(cfg.ckpt)
    ckpt = load_ckpt(path)
    saved = OmegaConf.create(ckpt["config"])
    in_features, num_classes = model_sizes(ckpt["model"])
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise CheckpointError(f"The model in {path} does not take square images.")
    if cfg.images is None or str(cfg.images) == "":
        raise ConfigError(
            "images is not set: give images=<folder of .png or .jpg files | image | .npy file>."
        )
    names, x = read_images(Path(str(cfg.images)), side)
    x = normalize_images(x, saved.data, saved.seed).to(device)
    model = build_model(saved, ckpt["model"], in_features, num_classes, path).to(device)
    warning = weights_note(path, ckpt["epoch"])[1]
    if warning:  # on stderr: stdout keeps only the table
        log.warning(warning)
    probs = logits(model, x, str(saved.trainer.precision) == "bf16").softmax(dim=1)
    best, classes = probs.max(dim=1)
    return list(zip(names, classes.tolist(), best.tolist()))


def run_predict(cfg: DictConfig) -> None:
    """What scripts/predict.py does: one line per image, or `error: ...`."""
    try:
        rows = predict_images(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    width = max(len("image"), *(len(name) for name, _, _ in rows))
    print(f"{'image':<{width}}  class  probability")
    for name, cls, prob in rows:
        print(f"{name:<{width}}  {cls:>5}  {prob:.4f}")
