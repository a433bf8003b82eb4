"""TensorBoard logging: per-epoch scalars, per-layer gradient norms, HParams."""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def open_writer(run_dir: Path, first_epoch: int) -> SummaryWriter:
    """A writer on the run dir; on resume, events at or after `first_epoch` are dropped."""
    return SummaryWriter(log_dir=str(run_dir), purge_step=first_epoch if first_epoch > 1 else None)


def log_epoch(writer: SummaryWriter, epoch: int, scalars: dict[str, float]) -> None:
    """One point per tag at step `epoch` (train/loss, val/acc, train/lr, grad_norm/hidden1...)."""
    for tag, value in scalars.items():
        if tag != "epoch":
            writer.add_scalar(tag, value, epoch)
    writer.flush()


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def key_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's main hyperparameters as flat str/int/float/bool values for the HParams tab."""
    width = cfg.model.width
    values = {
        "model/activation": _short(cfg.model.activation._target_),
        "model/depth": cfg.model.depth,
        "model/width": str(list(width)) if isinstance(width, ListConfig) else width,
        "model/dropout": cfg.model.dropout,
        "model/init": cfg.model.init,
        "optim": _short(cfg.optim._target_),
        "optim/lr": cfg.optim.lr,
        "optim/weight_decay": cfg.optim.get("weight_decay", 0.0),
        "optim/momentum": cfg.optim.get("momentum", 0.0),
        "optim/nesterov": cfg.optim.get("nesterov", False),
        "loss": _short(cfg.loss.criterion._target_),
        "loss/l1": cfg.loss.l1,
        "data": cfg.data.name,
        "data/batch_size": cfg.data.batch_size,
        "data/train_size": cfg.data.train_size,
        "data/normalize": cfg.data.normalize,
        "data/test_noise_std": cfg.data.test_noise_std,
        "trainer/max_epochs": cfg.trainer.max_epochs,
        "trainer/patience": cfg.trainer.early_stopping.patience,
        "trainer/precision": str(cfg.trainer.precision),
        "seed": cfg.seed,
    }
    # the HParams plugin takes only str, int, float and bool
    return {k: "none" if v is None else v for k, v in values.items()}


def log_hparams(
    writer: SummaryWriter, hparam_values: dict[str, Any], final: dict[str, float], step: int
) -> None:
    """Fill the HParams tab of this run (not a sub-run) with its hyperparameters and metrics.

    The metrics are also written as scalars `final/<name>`, which is where the plugin reads
    their values from.
    """
    metric_tags = {f"final/{k}": v for k, v in final.items()}
    experiment, session_start, session_end = hparams(hparam_values, metric_tags)
    for summary in (experiment, session_start, session_end):
        writer.file_writer.add_summary(summary)
    log_epoch(writer, step, metric_tags)
