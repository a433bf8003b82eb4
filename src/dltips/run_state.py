"""One run of a training group: its state (data, model, early stopping, history) and its
outputs (checkpoints, TensorBoard events, metrics.json, log lines).

dltips.train's epoch loop drives the runs; each `Run` writes exactly what a single run
writes, whether it trains alone or in a batched group.
"""

import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dltips.checkpoint import (
    atomic_save,
    atomic_write_json,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
)
from dltips.console import config_line, data_line, model_line
from dltips.data import DataSplits, load_dataset
from dltips.early_stopping import EarlyStopping
from dltips.errors import CheckpointError, ConfigError, OutputError
from dltips.losses import check_criterion
from dltips.models import layer_names, linear_layers
from dltips.pruning import TrialPruning
from dltips.resume import check_same_run, override_arg, resumed_with, rng_state
from dltips.runs import finished_metrics, run_status
from dltips.schema import keys_where
from dltips.stacked import MemberOptimizer
from dltips.step import EpochSums, evaluate
from dltips.tensorboard_log import STATUS, key_hparams, log_epoch, log_hparams, open_writer

log = logging.getLogger("dltips.train")  # the loop's logger: hydra.verbose=dltips.train

# optim keys that build the optimizer rather than set a run's hyperparameters: given to the
# constructor (fitted to the device by device_options), never per param group
OPTIMIZER_WIDE = tuple(k.removeprefix("optim.") for k in keys_where("optimizer_wide"))


@dataclass
class Job:
    """One run to train: its config, its dir, the override that continues it, its log, the
    overrides it was given (what its config line shows) and its TensorBoard run's name."""

    cfg: DictConfig
    run_dir: Path
    resume_hint: str | None = None  # default: trainer.resume=<run dir>
    log: logging.Logger = log
    pruning: TrialPruning | None = None  # a trial of an Optuna search that may be pruned
    overrides: list[str] | None = None  # the command's (hydra.overrides.task); None: Python
    label: str | None = None  # a sweep job's TensorBoard run: tensorboard_log.run_label


# marks a log line that every run of a batched group logs alike (its data, its network):
# each run's train.log gets it, the console once per group (see the batched launcher)
SAME_IN_GROUP = {"same_in_group": True}


def detached_copy(obj: Any) -> Any:
    """`obj` with every tensor copied to the CPU and every dict and list copied: a run's
    state as it is now, unchanged by the training that goes on, for a thread to write."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [detached_copy(v) for v in obj]
    return obj


def written_dir(job: Job) -> Path:
    """The dir a job's run writes: the run that trainer.resume continues, else its own."""
    resume = job.cfg.trainer.resume
    return (resolve_resume(resume)[1] or job.run_dir) if resume else job.run_dir


class Run:
    """One run of a group: its data, model, early stopping, history and outputs."""

    def __init__(
        self,
        job: Job,
        device: torch.device,
        bf16: bool,
        started: float,
        raw_data: dict[str, torch.Tensor],
    ) -> None:
        cfg, self.log = job.cfg, job.log
        self.cfg, self.device, self.bf16, self.started = cfg, device, bf16, started
        self.run_dir = Path(written_dir(job))  # with trainer.resume, the run it continues
        self.resumed, self.ckpt_path = None, None
        if cfg.trainer.resume:  # every check before anything is written
            self.ckpt_path, _ = resolve_resume(cfg.trainer.resume)
            self.resumed = load_checkpoint(self.ckpt_path)
            check_same_run(self.resumed, cfg, self.ckpt_path)
        # result-defining settings this run has trained with since it started otherwise
        self.resumed_with = resumed_with(self.resumed, cfg) if self.resumed else {}
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume_hint = job.resume_hint or override_arg("trainer.resume", self.run_dir)
        self.pruning, self.overrides, self.label = job.pruning, job.overrides, job.label

        # data: the group's decoded data set, split, and moved to the device in one go
        torch.manual_seed(cfg.seed)
        self.data: DataSplits = load_dataset(cfg.data, cfg.seed, raw_data).to(device)
        # batches drawn on the device; a batched run draws its dropout masks from its own seed
        self.shuffle = torch.Generator(device=device).manual_seed(cfg.seed)
        self.dropout_rng = torch.Generator(device=device).manual_seed(cfg.seed)
        try:
            model = instantiate(
                cfg.model, in_features=self.data.in_features, num_classes=self.data.num_classes
            )
            self.model = model.to(device)
            self.criterion = instantiate(cfg.loss.criterion)
        except Exception as err:  # e.g. an argument the class does not take: +model.foo=1
            cause = err.__cause__ or err
            raise ConfigError(f"Cannot build the model, optimizer or loss: {cause}") from err
        with torch.no_grad():  # a loss for other targets fails here, not at the first step
            x, y = self.data.x_train[:2], self.data.y_train[:2]
            check_criterion(self.criterion, self.model.eval()(x), y)
        self.model.train()  # eval above draws no dropout mask; a CUDA graph captures this mode
        self.stopper = EarlyStopping(**cfg.trainer.early_stopping)
        self.names = layer_names(self.model)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.train_seconds: list[float] = []  # each epoch's training pass, resumed ones too
        self.earlier_wall_seconds = 0.0  # of the processes that trained this run before
        self.status = "completed"
        self.active = True
        # with trainer.checkpoint_every > 1: the last epoch's and the best epoch's states
        # (copies) that are not on disk yet; the next save, the end or a stop writes them
        self.unsaved: dict[str, Any] | None = None
        self.unsaved_best: dict[str, Any] | None = None
        self.writes: Executor | None = None  # the group's checkpoint writer (see `opened`)
        self.writing: Future | None = None  # this run's save in progress
        self.result: dict[str, Any] = {}
        self.optimizer: MemberOptimizer | None = None  # the group's; this run is `index`
        self.index = 0  # its row in the group's stacked weights
        self.member = 0  # its job's place in the group
        self.config = OmegaConf.to_container(cfg, resolve=True)  # for every checkpoint

    @property
    def batched(self) -> bool:
        """Whether this run trains in a group with others."""
        return len(self.optimizer.params) > 1

    def optim_settings(self) -> dict[str, Any]:
        """This run's optimizer hyperparameters (lr, betas, ...), for its param group."""
        settings = OmegaConf.to_container(self.cfg.optim, resolve=True)
        return {k: v for k, v in settings.items() if k not in OPTIMIZER_WIDE}

    def restore(self) -> None:
        """Load a resumed run's checkpoint into the fresh model, early stopping and RNGs
        (the optimizer's state is loaded for the whole group at once)."""
        if self.resumed is None:
            return
        ckpt = self.resumed
        try:
            self.model.load_state_dict(ckpt["model"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"Checkpoint {self.ckpt_path} does not fit the configured model: "
                f"{str(err).strip().splitlines()[0]}..."
            ) from err
        self.stopper.load_state_dict(ckpt["early_stopping"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.shuffle.set_state(ckpt["rng"]["shuffle"])
        if "dropout" in ckpt["rng"]:
            self.dropout_rng.set_state(ckpt["rng"]["dropout"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if self.device.type == "mps" and "mps" in ckpt["rng"]:
            torch.mps.set_rng_state(ckpt["rng"]["mps"])
        self.start_epoch = int(ckpt["epoch"])
        self.history = ckpt["history"]
        self.train_seconds = list(ckpt.get("epoch_seconds", []))
        self.earlier_wall_seconds = float(ckpt.get("wall_seconds", 0.0))

    def nothing_to_do(self) -> dict[str, Any] | None:
        """A resumed run that had finished: its metrics, left as they are; else None."""
        max_epochs = self.cfg.trainer.max_epochs
        if self.resumed is None:
            return None
        done = finished_metrics(self.run_dir)
        if done and (self.start_epoch >= max_epochs or self.stopper.should_stop):
            why = (
                "stopped early" if self.stopper.should_stop else f"trainer.max_epochs={max_epochs}"
            )
            self.log.info(
                "Nothing to do: %s has trained %d epochs (%s); its files are left as they are. "
                "Raise trainer.max_epochs to train further.",
                self.run_dir,
                self.start_epoch,
                why,
            )
            self.active, self.result = False, done
            self.optimizer.freeze(self.index)  # its group trains without it
            return done
        self.log.info(
            "Resumed from %s at epoch %d; writing to %s",
            self.ckpt_path,
            self.start_epoch,
            self.run_dir,
        )
        return None

    def open(self) -> None:
        """Log the setup, save epoch 0 (a new run) and open the TensorBoard writer."""
        self.log.info(config_line(self.overrides, self.run_dir))
        data = data_line(self.cfg.data, self.data)
        self.log.info(data, extra=SAME_IN_GROUP)
        line = model_line(self.model, str(self.device), self.cfg.model.get("params"))
        self.log.info(line, extra=SAME_IN_GROUP)
        remove_stale_temporaries(self.ckpt_dir)
        if self.resumed is None:  # so that even an interrupted first epoch can be resumed
            atomic_save(self.state(0), self.ckpt_dir / "last.pt")
        try:
            self.writer = open_writer(self.run_dir, self.start_epoch + 1, self.label)
        except OSError as err:
            raise OutputError(f"Cannot write TensorBoard events to {self.run_dir}: {err}") from err

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs: tensors and plain values only."""
        rng = rng_state(self.shuffle, self.device)
        if self.batched:  # a batched run draws dropout masks from its own stream
            rng["dropout"] = self.dropout_rng.get_state()
        # copies of what training goes on changing, since a thread writes them meanwhile; a
        # batched run's weights are views of the group's stacked tensors, which torch.save
        # would write whole. An epoch's history entry and the config never change.
        return {
            "epoch": epoch,
            "model": detached_copy(self.model.state_dict()),
            "optimizer": detached_copy(self.optimizer.member_state(self.index)),
            "early_stopping": self.stopper.state_dict(),
            "history": list(self.history),
            "epoch_seconds": list(self.train_seconds),
            "wall_seconds": self.earlier_wall_seconds + time.perf_counter() - self.started,
            "rng": rng,
            "config": self.config,
            "resumed_with": self.resumed_with,
        }

    def end_epoch(
        self,
        epoch: int,
        sums: EpochSums,
        val: tuple[float, float],
        seconds: float,
        took: float,
    ) -> None:
        """Log the epoch's training sums and validation (loss, accuracy), check for
        divergence and early stopping, save the checkpoints. `seconds` is the epoch's
        training time (the group's, in a group), `took` that plus validation (logged)."""
        max_epochs = self.cfg.trainer.max_epochs
        # a NaN or infinite loss ends the run; the weights it reports predate that step
        if sums.first_bad_step is not None:
            self.status = "diverged"
            self.log.error(
                "The loss became %s at epoch %d, step %d: training diverged. Try a "
                "lower learning rate (optim.lr=%g now) or trainer.grad_clip.",
                sums.bad_loss,
                epoch,
                sums.first_bad_step,
                self.cfg.optim.lr,
            )
            self.finish()
            return

        metrics = {"train/loss": sums.loss, "train/acc": sums.correct / len(self.data.y_train)}
        self.train_seconds.append(seconds)
        metrics["val/loss"], metrics["val/acc"] = val
        self.history.append(
            {
                "epoch": epoch,
                **metrics,
                **{f"grad_norm/{n}": g for n, g in zip(self.names, sums.grad_norms)},
            }
        )
        improved = self.stopper.update(metrics, epoch)

        self.log.info(
            "epoch %d/%d  %s  (%.2fs)%s",
            epoch,
            max_epochs,
            "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            took,
            "  *best" if improved else "",
        )
        lr = self.optimizer.settings[self.index]["lr"]
        log_epoch(self.writer, epoch, {**self.history[-1], "train/lr": lr})
        every = self.cfg.trainer.checkpoint_every
        if epoch % every == 0 or epoch >= max_epochs or self.stopper.should_stop:
            self.save(self.state(epoch), improved)
        else:  # kept until the next save; a stop, the run's end or the next due epoch writes it
            self.unsaved = self.state(epoch)
            if improved:
                self.unsaved_best = self.unsaved

        if self.stopper.should_stop:
            self.log.info(
                "Early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                self.stopper.monitor,
                self.stopper.patience,
                self.stopper.best,
                self.stopper.best_epoch,
            )
            self.finish()
        # a trial of an Optuna search: the study's pruner compares this epoch with the others'
        elif self.pruning is not None and self.pruning.should_prune(
            epoch, metrics[self.stopper.monitor]
        ):
            self.status = "pruned"
            self.log.info(
                "Pruned at epoch %d: %s %.4f",
                epoch,
                self.stopper.monitor,
                metrics[self.stopper.monitor],
            )
            self.finish()

    def save(self, state: dict[str, Any], improved: bool) -> None:
        """Write `state` as last.pt, and best.pt: a hard link to it (or a copy) when its epoch
        improved, else the best epoch's state kept since the last save, if any.

        A thread writes them while the next epoch trains; a run's writes go in order, one
        at a time, and a failed one shows at its next save or at its end (`wait`).
        """
        self.wait()
        best = None if improved else self.unsaved_best  # an earlier best, not linked
        self.writing = self.writes.submit(self._write, state, improved, best)
        self.unsaved = self.unsaved_best = None

    def _write(self, state: dict[str, Any], improved: bool, best: dict[str, Any] | None) -> None:
        # the epochs' TensorBoard events first: resuming from last.pt drops those after it
        self.writer.flush()
        if best is not None:
            atomic_save(best, self.ckpt_dir / "best.pt")
        also = self.ckpt_dir / "best.pt" if improved else None
        atomic_save(state, self.ckpt_dir / "last.pt", also=also)

    def wait(self) -> None:
        """Return once this run's last save is on disk; raise its error, if it failed."""
        writing, self.writing = self.writing, None
        if writing is None:
            return
        try:
            writing.result()
        except OutputError as err:
            raise OutputError(
                f"{err}\n  Free space, then continue with {self.resume_hint}"
            ) from err

    def flush(self) -> None:
        """Write the epochs that trainer.checkpoint_every kept in memory, and wait until every
        save is on disk (a stop, the end)."""
        if self.unsaved is not None:
            self.save(self.unsaved, improved=self.unsaved is self.unsaved_best)
        self.wait()

    def finish(self) -> None:
        """Freeze the run and write its final metrics: the reported weights, evaluated in
        eval mode over every split."""
        self.active = False
        self.flush()  # a diverged or pruned run's last completed epoch, its best epoch
        self.optimizer.freeze(self.index)  # no further updates in a group
        # The reported weights are one checkpoint's, named in metrics.json, so that eval.py
        # and predict.py use the same: the best epoch's with restore_best, else the last
        # completed epoch's. A diverged run's weights went on updating after the bad step:
        # its checkpoints hold the ones before it (epoch 0's if it diverged in epoch 1).
        best, last = self.ckpt_dir / "best.pt", self.ckpt_dir / "last.pt"
        reported = best if self.stopper.restore_best and best.is_file() else last
        self.model.load_state_dict(load_checkpoint(reported)["model"])
        final = {}
        for split, x, y in (
            ("train", self.data.x_train, self.data.y_train),
            ("val", self.data.x_val, self.data.y_val),
            ("test", self.data.x_test, self.data.y_test),
        ):
            final[f"{split}/loss"], final[f"{split}/acc"] = evaluate(
                self.model, x, y, self.criterion, self.bf16
            )
        epochs_trained = len(self.history)
        max_epochs = self.cfg.trainer.max_epochs
        seconds = self.train_seconds
        result = {
            "status": self.status,
            **final,
            "checkpoint": reported.relative_to(self.run_dir).as_posix(),  # these weights
            "best_epoch": self.stopper.best_epoch,
            "epochs_trained": epochs_trained,
            "stopped_early": self.stopper.should_stop and epochs_trained < max_epochs,
            "wall_seconds": self.earlier_wall_seconds + time.perf_counter() - self.started,
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
            "epoch_seconds": seconds,
            "device": str(self.device),
            "num_params": self.num_params,
            "num_threads": torch.get_num_threads(),
            "history": self.history,
        }
        if self.resumed_with:  # labels for summaries: see dltips.resume.DEFINES_RESULTS
            result["resumed_with"] = self.resumed_with
        if self.batched:
            result["batch"] = {"members": len(self.optimizer.params), "member": self.member}
        self.result = _json_safe(result)
        atomic_write_json(self.result, self.run_dir / "metrics.json")
        hparams = {**key_hparams(self.cfg), STATUS: run_status(self.result)}
        if self.cfg.model.get("params") is not None:  # the widths it chose, not the file's
            widths = [layer.in_features for layer in linear_layers(self.model)[1:]]
            hparams["model/width"] = str(widths)
        log_hparams(self.writer, hparams, final, step=epochs_trained)
        self.log.info(
            "Final (%s, best epoch %d of %d):  train/acc %.4f  val/acc %.4f  test/acc %.4f",
            self.status,
            self.stopper.best_epoch,
            epochs_trained,
            final["train/acc"],
            final["val/acc"],
            final["test/acc"],
        )
        self.log.info("Outputs in %s", self.run_dir)


@contextmanager
def opened(runs: list[Run]) -> Iterator[None]:
    """Open the outputs of every run that will train, with a thread that writes their
    checkpoints; at the end, close their TensorBoard writers and finish every write."""
    active = [run for run in runs if run.active]
    writes = ThreadPoolExecutor(1, thread_name_prefix="dltips-checkpoints")
    try:
        for run in active:
            run.writes = writes
            run.open()
        yield
    finally:
        writes.shutdown()  # every write done (they flush the TensorBoard writers first)
        for run in active:
            if hasattr(run, "writer"):
                run.writer.close()


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
