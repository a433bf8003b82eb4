"""The training loop: `train(cfg, run_dir) -> metrics`, read top to bottom."""

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dltips.checkpoint import (
    atomic_save,
    atomic_write_json,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
)
from dltips.config import resolve_device, validate
from dltips.data import load_dataset
from dltips.early_stopping import EarlyStopping
from dltips.errors import ConfigError, Interrupted, OutputError
from dltips.losses import check_criterion
from dltips.models import layer_names
from dltips.resume import check_same_run, override_arg, restore, rng_state
from dltips.runs import finished_metrics
from dltips.signals import catch_stop_signals
from dltips.step import (
    GraphedEpoch,
    TrainStep,
    batch_sizes,
    epoch_batches,
    run_epoch,
    supports_capture,
)
from dltips.tensorboard_log import key_hparams, log_epoch, log_hparams, open_writer

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    bf16: bool,
    chunk: int = 10_000,
) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` in eval mode over all of x, y."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(y), chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
            loss_sum += criterion(logits, yb).float() * len(yb)
        correct += (logits.argmax(dim=1) == yb).sum()
    return (loss_sum / len(y)).item(), correct.item() / len(y)


def train(cfg: DictConfig, run_dir: Path, resume_hint: str | None = None) -> dict[str, Any]:
    """Train the configured network; write checkpoints, TensorBoard events and metrics.json.

    `resume_hint` is the override that continues this run after an interruption (in a
    sweep, `sweep.resume=<sweep dir>`); by default `trainer.resume=<run dir>`.
    """
    started = time.perf_counter()
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    run_dir = Path(run_dir)
    resumed = None
    if cfg.trainer.resume:  # every check before anything is written
        ckpt_path, resumed_dir = resolve_resume(cfg.trainer.resume)
        resumed = load_checkpoint(ckpt_path)
        check_same_run(resumed, cfg, ckpt_path)
        run_dir = resumed_dir or run_dir  # keep writing into the run we continue
    ckpt_dir = run_dir / "checkpoints"
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    # denormal floats (below ~1e-38) are 10-100x slower on CPUs; weights and gradients that
    # underflow there can make an epoch 2-3x slower. As zeros they change nothing visible.
    torch.set_flush_denormal(bool(cfg.trainer.flush_denormal))
    bf16 = str(cfg.trainer.precision) == "bf16"
    if device.type == "cuda":  # TF32: float32 matmuls on tensor cores, 10 mantissa bits
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.trainer.tf32
    graphed = device.type == "cuda" and cfg.trainer.cuda_graphs in ("auto", True)
    optimizer_class = get_class(cfg.optim._target_)
    if graphed and not supports_capture(optimizer_class):
        log.info("%s cannot step inside a CUDA graph: training eagerly", optimizer_class.__name__)
        graphed = False
    capturable = {"capturable": True} if graphed and optimizer_class is not torch.optim.SGD else {}

    # data: decoded once (cached), split, and moved to the device in one go
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.data, seed=cfg.seed).to(device)
    shuffle = torch.Generator(device=device).manual_seed(cfg.seed)  # batches drawn on the device
    n_train, batch_size = len(data.y_train), cfg.data.batch_size

    try:
        model = instantiate(cfg.model, in_features=data.in_features, num_classes=data.num_classes)
        model = model.to(device)
        # optim is a _partial_; in a CUDA graph, optimizers keep their step count on the GPU
        optimizer = instantiate(cfg.optim)(params=model.parameters(), **capturable)
        criterion = instantiate(cfg.loss.criterion)
    except Exception as err:  # e.g. an argument the class does not take: +optim.foo=1
        cause = err.__cause__ or err
        raise ConfigError(f"Cannot build the model, optimizer or loss: {cause}") from err
    with torch.no_grad():  # a loss for other targets fails here, not at the first step
        check_criterion(criterion, model.eval()(data.x_train[:2]), data.y_train[:2])
    model.train()  # eval above draws no dropout mask; a CUDA graph captures this mode
    stopper = EarlyStopping(**cfg.trainer.early_stopping)
    names = layer_names(model)
    num_params = sum(p.numel() for p in model.parameters())
    history: list[dict[str, float]] = []
    start_epoch = 0
    train_seconds: list[float] = []  # the training pass of every epoch, resumed ones included
    earlier_wall_seconds = 0.0  # of the processes that trained this run before this one
    max_epochs = cfg.trainer.max_epochs

    if resumed is not None:
        start_epoch = restore(resumed, model, optimizer, stopper, shuffle, device, ckpt_path)
        history = resumed["history"]
        train_seconds = list(resumed.get("epoch_seconds", []))
        earlier_wall_seconds = float(resumed.get("wall_seconds", 0.0))
        done = finished_metrics(run_dir)
        if done and (start_epoch >= max_epochs or stopper.should_stop):
            why = "stopped early" if stopper.should_stop else f"trainer.max_epochs={max_epochs}"
            log.info(
                "Nothing to do: %s has trained %d epochs (%s); its files are left as they are. "
                "Raise trainer.max_epochs to train further.",
                run_dir,
                start_epoch,
                why,
            )
            return done
        log.info("Resumed from %s at epoch %d; writing to %s", ckpt_path, start_epoch, run_dir)

    log.info("Model (%d parameters) on %s:\n%s", num_params, device, model)
    log.info(
        "Data %s: %d train, %d val, %d test images",
        cfg.data.name,
        len(data.y_train),
        len(data.y_val),
        len(data.y_test),
    )

    def state(epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs: tensors and plain values only."""
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "early_stopping": stopper.state_dict(),
            "history": history,
            "epoch_seconds": train_seconds,
            "wall_seconds": earlier_wall_seconds + time.perf_counter() - started,
            "rng": rng_state(shuffle, device),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }

    resume_hint = resume_hint or override_arg("trainer.resume", run_dir)
    remove_stale_temporaries(ckpt_dir)
    if resumed is None:  # so that even an interrupted first epoch can be resumed
        atomic_save(state(0), ckpt_dir / "last.pt")
    try:
        writer = open_writer(run_dir, start_epoch + 1)
    except OSError as err:
        raise OutputError(f"Cannot write TensorBoard events to {run_dir}: {err}") from err
    status = "completed"
    progress = tqdm(
        range(start_epoch + 1, max_epochs + 1),
        desc="epochs",
        unit="epoch",
        initial=start_epoch,
        total=max_epochs,
        disable=not sys.stderr.isatty(),
    )

    step = TrainStep(
        model,
        optimizer,
        criterion,
        steps_per_epoch=len(batch_sizes(n_train, batch_size)),
        l1=cfg.loss.l1,
        grad_clip=cfg.trainer.grad_clip,
        bf16=bf16,
    )
    epoch_graph = None
    if graphed:  # after any resume: the graph captures the state training continues from
        captured = time.perf_counter()
        epoch_graph = GraphedEpoch(step, data.x_train, data.y_train, batch_size, shuffle)
        log.info(
            "Captured an epoch (%d steps) as one CUDA graph in %.1fs",
            len(epoch_graph.sizes),
            time.perf_counter() - captured,
        )
    with logging_redirect_tqdm(), catch_stop_signals() as stop, writer:
        for epoch in progress:
            if stopper.should_stop:  # a resumed run that had already stopped
                break
            epoch_started = time.perf_counter()
            model.train()
            if epoch_graph is not None:  # the whole epoch in one replay
                sizes = epoch_graph()
            else:
                step.reset()
                batches = epoch_batches(n_train, batch_size, shuffle)
                sizes = run_epoch(step, data.x_train, data.y_train, batches, stop)
            if stop.signum:  # the partial epoch is dropped: last.pt has the one before
                message = (
                    f"Stopped by {stop.name} during epoch {epoch}, step {len(sizes)}. "
                    f"checkpoints/last.pt holds epoch {epoch - 1}; to continue, run the same "
                    f"command plus {resume_hint}"
                )
                log.warning(message)  # in train.log too, where a cluster job's user looks
                raise Interrupted(stop.signum, message)
            sums = step.read(sizes)
            # a NaN or infinite loss ends the run; the weights it reports predate that step
            if sums.first_bad_step is not None:
                status = "diverged"
                log.error(
                    "The loss became %s at epoch %d, step %d: training diverged. Try a "
                    "lower learning rate (optim.lr=%g now) or trainer.grad_clip.",
                    sums.bad_loss,
                    epoch,
                    sums.first_bad_step,
                    cfg.optim.lr,
                )
                break

            metrics = {"train/loss": sums.loss, "train/acc": sums.correct / n_train}
            train_seconds.append(time.perf_counter() - epoch_started)
            metrics["val/loss"], metrics["val/acc"] = evaluate(
                model, data.x_val, data.y_val, criterion, bf16
            )
            history.append(
                {
                    "epoch": epoch,
                    **metrics,
                    **{f"grad_norm/{n}": g for n, g in zip(names, sums.grad_norms)},
                }
            )
            improved = stopper.update(metrics, epoch)

            log.info(
                "epoch %d/%d  %s  (%.2fs)%s",
                epoch,
                max_epochs,
                "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                time.perf_counter() - epoch_started,
                "  *best" if improved else "",
            )
            progress.set_postfix(val_acc=f"{metrics['val/acc']:.4f}")
            log_epoch(writer, epoch, {**history[-1], "train/lr": optimizer.param_groups[0]["lr"]})
            snapshot = state(epoch)
            try:
                if improved:
                    atomic_save(snapshot, ckpt_dir / "best.pt")
                atomic_save(snapshot, ckpt_dir / "last.pt")
            except OutputError as err:
                raise OutputError(f"{err}\n  Free space, then continue with {resume_hint}") from err

            if stopper.should_stop:
                log.info(
                    "Early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                    stopper.monitor,
                    stopper.patience,
                    stopper.best,
                    stopper.best_epoch,
                )
                break

        # final metrics: the reported weights, evaluated in eval mode over every split.
        # A diverged run's weights went on updating after the bad step: the last completed
        # epoch's (last.pt) or the best epoch's weights are reported instead.
        best = ckpt_dir / "best.pt"
        if stopper.restore_best and best.is_file():
            model.load_state_dict(load_checkpoint(best)["model"])
        elif status == "diverged":
            model.load_state_dict(load_checkpoint(ckpt_dir / "last.pt")["model"])
        final = {}
        for split, x, y in (
            ("train", data.x_train, data.y_train),
            ("val", data.x_val, data.y_val),
            ("test", data.x_test, data.y_test),
        ):
            final[f"{split}/loss"], final[f"{split}/acc"] = evaluate(model, x, y, criterion, bf16)
        epochs_trained = len(history)
        result = {
            "status": status,
            **final,
            "best_epoch": stopper.best_epoch,
            "epochs_trained": epochs_trained,
            "stopped_early": stopper.should_stop and epochs_trained < max_epochs,
            "wall_seconds": earlier_wall_seconds + time.perf_counter() - started,
            "seconds_per_epoch": sum(train_seconds) / len(train_seconds) if train_seconds else None,
            "epoch_seconds": train_seconds,
            "device": str(device),
            "num_params": num_params,
            "num_threads": torch.get_num_threads(),
            "history": history,
        }
        result = _json_safe(result)
        atomic_write_json(result, run_dir / "metrics.json")
        log_hparams(writer, key_hparams(cfg), final, step=epochs_trained)
    log.info(
        "Final (%s, best epoch %d of %d):  train/acc %.4f  val/acc %.4f  test/acc %.4f",
        status,
        stopper.best_epoch,
        epochs_trained,
        final["train/acc"],
        final["val/acc"],
        final["test/acc"],
    )
    log.info("Outputs in %s", run_dir)
    return result


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
