"""The training loop: `train(cfg, run_dir) -> metrics`, read top to bottom.

`train_group` trains K same-shaped runs at once (a batched sweep): one step trains all of
them (dltips.step), one epoch loop drives them, and each `Run` writes exactly what a
single run writes. A single run is a group of one, so there is one loop, not two.
"""

import ctypes
import logging
import math
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
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
    sole_writer,
)
from dltips.config import resolve_device, validate
from dltips.console import config_line, data_line, model_line
from dltips.data import DataSplits, load_dataset, read_cached
from dltips.early_stopping import EarlyStopping
from dltips.errors import CheckpointError, ConfigError, Interrupted, OutputError
from dltips.losses import check_criterion
from dltips.models import layer_names
from dltips.pruning import TrialPruning
from dltips.resume import check_same_run, override_arg, resumed_with, rng_state
from dltips.runs import finished_metrics, run_status
from dltips.schema import keys_where
from dltips.signals import catch_stop_signals
from dltips.stacked import MemberOptimizer, StackedMLP, member_losses
from dltips.step import (
    EpochSums,
    GraphedEpoch,
    TrainStep,
    batch_sizes,
    device_options,
    epoch_batches,
    run_epoch,
    supports_capture,
)
from dltips.tensorboard_log import STATUS, key_hparams, log_epoch, log_hparams, open_writer

log = logging.getLogger(__name__)
# optim keys that build the optimizer rather than set a run's hyperparameters: given to the
# constructor (fitted to the device by device_options), never per param group
OPTIMIZER_WIDE = tuple(k.removeprefix("optim.") for k in keys_where("optimizer_wide"))


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
    return _loss_and_accuracy(model, criterion, x, y, bf16, chunk)[0]


def evaluate_stacked(
    stack: StackedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    criteria: list[nn.Module],
    bf16: bool,
    chunk: int = 40_000,
) -> list[tuple[float, float]]:
    """Each member's (mean loss, accuracy) over (K, N, features) inputs x and (K, N)
    labels y: what `evaluate` gives for each member's model, in one pass and one sync."""
    rows = max(1, chunk // len(y))  # about `chunk` samples of all members at a time
    losses = partial(member_losses, criteria)
    return _loss_and_accuracy(stack.forward, losses, x, y, bf16, rows)


@torch.no_grad()
def _loss_and_accuracy(forward, loss_of, x, y, bf16: bool, rows: int) -> list[tuple[float, float]]:
    """(mean loss, accuracy) over all of x, y, `rows` samples at a time, read in one sync:
    of one model (x (N, features), y (N,)) or of each of K members (x (K, N, features),
    y (K, N)). `loss_of(logits, y)` is the mean loss of a chunk (per member: (K,))."""
    n = y.shape[-1]
    loss_sum = torch.zeros(y.shape[:-1], device=x.device)
    correct = torch.zeros(y.shape[:-1], device=x.device, dtype=torch.long)
    for i in range(0, n, rows):
        xb, yb = x[..., i : i + rows, :], y[..., i : i + rows]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(xb)
            loss_sum += loss_of(logits, yb).float() * yb.shape[-1]
        correct += (logits.argmax(dim=-1) == yb).sum(dim=-1)
    packed = torch.stack([loss_sum / n, correct.to(loss_sum.dtype)], dim=-1)
    return [(loss, right / n) for loss, right in packed.view(-1, 2).tolist()]  # the sync


@dataclass
class Job:
    """One run to train: its config, its dir, the override that continues it, its log."""

    cfg: DictConfig
    run_dir: Path
    resume_hint: str | None = None  # default: trainer.resume=<run dir>
    log: logging.Logger = log
    pruning: TrialPruning | None = None  # a trial of an Optuna search that may be pruned


# marks a log line that every run of a batched group logs alike (its data, its network):
# each run's train.log gets it, the console once per group (see the batched launcher)
SAME_IN_GROUP = {"same_in_group": True}


def detached_copy(obj: Any) -> Any:
    """`obj` with every tensor cloned and every dict and list copied: a run's state as it
    is now, unchanged by the training that goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [detached_copy(v) for v in obj]
    return obj


@cache  # a setting of the process: once is enough
def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks for reuse, whatever their size (Linux; a no-op
    elsewhere).

    By default it maps blocks of more than 128 KiB (at most 32 MiB, as it adapts) afresh
    from the OS and hands them back when freed, and every page of a new mapping costs a
    page fault when first written. A batched group frees and allocates buffers of 10 MB and
    more at every step (its gathered batch, its weight gradients): 32 runs of 784-128-128-10
    took about a million page faults in 10 epochs, and the first layer's weight-gradient
    product 3.3 ms instead of 1.8; 128 runs gather a 40 MB batch per step. Here every block
    comes from malloc's heap, where a freed one is reused, and the heap keeps up to 1 GiB
    of free memory. A group trained about 10% faster at 32 runs and 20 to 35% faster at 128,
    a single run about 5% (docs/PERFORMANCE.md); the numbers it computes are the same.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    libc.mallopt(m_mmap_max, 0)  # no block through mmap, unless the heap cannot grow
    libc.mallopt(m_trim_threshold, 1 << 30)


def train(cfg: DictConfig, run_dir: Path, resume_hint: str | None = None) -> dict[str, Any]:
    """Train the configured network; write checkpoints, TensorBoard events and metrics.json.

    `resume_hint` is the override that continues this run after an interruption (in a
    sweep, `sweep.resume=<sweep dir>`); by default `trainer.resume=<run dir>`.
    """
    return train_group([Job(cfg, Path(run_dir), resume_hint)])[0]


def train_group(jobs: list[Job]) -> list[dict[str, Any]]:
    """Train K runs that differ only in per-run settings (seed, lr, dropout, ...) together.

    Each run gets its own data split and shuffle, initialization, early stopping and
    outputs; a run that stops early or diverges is frozen (no further updates to its weights
    or optimizer state) while the others go on.
    Returns each run's metrics, in the jobs' order.
    """
    for job in jobs:
        validate(job.cfg)  # every config error, before anything slow
    # one process writes a run dir at a time: a run resumed while it still trains (a sweep
    # resumed twice) is refused before it logs or writes anything there
    with sole_writer([written_dir(job) for job in jobs]):
        return train_locked(jobs)


def written_dir(job: Job) -> Path:
    """The dir a job's run writes: the run that trainer.resume continues, else its own."""
    resume = job.cfg.trainer.resume
    return (resolve_resume(resume)[1] or job.run_dir) if resume else job.run_dir


def train_locked(jobs: list[Job]) -> list[dict[str, Any]]:
    """train_group, once its configs are valid and it holds its runs' dirs."""
    first = jobs[0].cfg
    # What a process does once happens before the runs' clock starts: charged to whichever
    # run of a sweep comes first, it would make that run's setting look slow. torch's
    # optimizers import torch._dynamo when the first one is built (0.8 s on a 2-core CPU,
    # 6 s on a GPU host); a data set is downloaded or decoded into its cache once, then read
    # from there once per process (the runs of a group share one data set).
    startup = Phases()
    import torch._dynamo  # noqa: F401

    startup.mark("torch._dynamo import (once per process)")
    raw_data = read_cached(first.data)
    startup.mark("data set (once per process)")
    started = time.perf_counter()
    device = resolve_device(first.trainer.device)
    if device.type == "cuda":  # start the CUDA context now, so the start-up split shows it
        torch.zeros(1, device=device)
    startup.mark("device")
    if first.trainer.num_threads:
        torch.set_num_threads(first.trainer.num_threads)
    # denormal floats (below ~1e-38) are 10-100x slower on CPUs; weights and gradients that
    # underflow there can make an epoch 2-3x slower. As zeros they change nothing visible.
    torch.set_flush_denormal(bool(first.trainer.flush_denormal))
    if device.type == "cpu":
        keep_freed_memory()
    bf16 = str(first.trainer.precision) == "bf16"
    if device.type == "cuda":  # TF32: float32 matmuls on tensor cores, 10 mantissa bits
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = first.trainer.tf32
    graphed = device.type == "cuda" and first.trainer.cuda_graphs in ("auto", True)
    optimizer_class = get_class(first.optim._target_)
    if graphed and (len(jobs) > 1 or not supports_capture(optimizer_class)):
        log.info(
            "%s cannot step inside a CUDA graph: training eagerly",
            optimizer_class.__name__ if len(jobs) == 1 else "A batched group",
        )
        graphed = False
    options = device_options(optimizer_class, device, first.optim.get("fused"), graphed)

    # each run: resume checks, data, model, loss, early stopping (every check before writing)
    runs = [Run(job, device, bf16, started, raw_data) for job in jobs]
    for k, run in enumerate(runs):
        run.member = k
    # runs with equal optimizer settings side by side: each such block of the stacked
    # weights steps as one param group (dltips.stacked); results go back in the jobs' order
    runs.sort(key=lambda run: repr(run.optim_settings()))
    in_order = sorted(runs, key=lambda run: run.member)  # the jobs' order: logs, results
    startup.mark("data, model and loss")
    # K > 1: the runs' weights become one stacked tensor per layer, each run's layers views
    # of its row; a single run keeps its own parameters (see dltips.stacked)
    stack = StackedMLP([run.model for run in runs]) if len(runs) > 1 else None
    params = stack.member_params if stack else [list(runs[0].model.parameters())]
    # torch's optimizer, each run with its own hyperparameters (equal ones share a group)
    try:
        optim_partial = instantiate(first.optim)  # optim is a partial
        optimizer = MemberOptimizer(
            lambda groups: optim_partial(params=groups, **options),
            params,
            [run.optim_settings() for run in runs],
            stack,
        )
    except Exception as err:  # e.g. an argument the class does not take: +optim.foo=1
        cause = err.__cause__ or err
        raise ConfigError(f"Cannot build the model, optimizer or loss: {cause}") from err
    startup.mark("optimizer")
    for k, run in enumerate(runs):
        run.optimizer, run.index = optimizer, k
    if any(run.resumed is not None for run in runs):
        try:
            optimizer.load([run.resumed and run.resumed["optimizer"] for run in runs])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"Checkpoint {runs[err.member].ckpt_path} does not fit the configured "
                f"optimizer: {str(err).strip().splitlines()[0]}"
            ) from err
    for run in runs:
        run.restore()
    finished = [run.nothing_to_do() for run in runs]
    if all(finished):
        return [run.result for run in in_order]

    start_epoch = next(run.start_epoch for run in runs if run.active)
    max_epochs = first.trainer.max_epochs
    n_train, batch_size = len(runs[0].data.y_train), first.data.batch_size
    if len(runs) == 1:
        x_train, y_train = runs[0].data.x_train, runs[0].data.y_train
        shuffle = runs[0].shuffle
    else:  # (K, N, features): each run's own split, gathered per step in one go
        x_train = torch.stack([run.data.x_train for run in runs])
        y_train = torch.stack([run.data.y_train for run in runs])
        shuffle = [run.shuffle for run in runs]
    step = TrainStep(
        [run.model for run in runs],
        optimizer.torch if stack is None else optimizer,
        [run.criterion for run in runs],
        steps_per_epoch=len(batch_sizes(n_train, batch_size)),
        l1=[run.cfg.loss.l1 for run in runs],
        grad_clip=[run.cfg.trainer.grad_clip for run in runs],
        bf16=bf16,
        dropout=[run.cfg.model.dropout for run in runs],
        generators=[run.dropout_rng for run in runs] if len(runs) > 1 else None,
        stack=stack,
    )
    x_val, y_val = runs[0].data.x_val, runs[0].data.y_val
    if stack is not None:  # every run's validation split, evaluated in one pass
        x_val = torch.stack([run.data.x_val for run in runs])
        y_val = torch.stack([run.data.y_val for run in runs])
    epoch_graph = None
    if graphed:  # after any resume: the graph captures the state training continues from
        captured = time.perf_counter()
        epoch_graph = GraphedEpoch(step, x_train, y_train, batch_size, shuffle)
        log.info(
            "Captured an epoch (%d steps) as one CUDA graph in %.1fs",
            len(epoch_graph.sizes),
            time.perf_counter() - captured,
        )
        startup.mark("CUDA graph capture")
    if len(runs) > 1:
        for run in in_order:
            run.log.info(
                "Training %d runs together as one batched model", len(runs), extra=SAME_IN_GROUP
            )
    # on a terminal, a bar over the epoch's batches (none in logs); a CUDA-graphed epoch is
    # one replay, so there the bar counts epochs
    progress = tqdm(
        desc="epochs" if graphed else f"epoch {start_epoch + 1}/{max_epochs}",
        unit="epoch" if graphed else "batch",
        initial=start_epoch if graphed else 0,
        total=max_epochs if graphed else len(batch_sizes(n_train, batch_size)),
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    on_step = None if progress.disable else progress.update  # counts steps: no GPU sync
    with logging_redirect_tqdm(), catch_stop_signals() as stop, opened(in_order), progress:
        startup.mark("outputs")
        log.debug("Start-up took %s", startup)  # shown with hydra.verbose=dltips.train
        for epoch in range(start_epoch + 1, max_epochs + 1):
            active = [run for run in runs if run.active]
            if not active:  # every run stopped early or diverged
                break
            epoch_started = time.perf_counter()
            for run in runs:
                run.model.train()
            if epoch_graph is not None:  # the whole epoch in one replay
                sizes = epoch_graph()
                progress.update()
            else:
                step.reset()
                progress.set_description(f"epoch {epoch}/{max_epochs}", refresh=False)
                progress.reset()
                batches = epoch_batches(n_train, batch_size, shuffle)
                sizes = run_epoch(step, x_train, y_train, batches, stop, on_step)
            if stop.signum:  # the partial epoch is dropped: last.pt has the one before
                message = (
                    f"Stopped by {stop.name} during epoch {epoch}, step {len(sizes)}. "
                    f"checkpoints/last.pt holds epoch {epoch - 1}; to continue, run the same "
                    f"command plus {runs[0].resume_hint}"
                )
                for run in in_order:  # in train.log too, where a cluster job's user looks
                    if run.active:
                        run.flush()  # the epochs trainer.checkpoint_every kept in memory
                        run.log.warning(message)
                raise Interrupted(stop.signum, message)
            epoch_sums = step.read(sizes)  # the CPU waits for the GPU here, once per epoch
            seconds = time.perf_counter() - epoch_started
            # every run's validation loss and accuracy: K runs in one pass, one sync
            if stack is None:
                val = [evaluate(runs[0].model, x_val, y_val, runs[0].criterion, bf16)]
            else:
                val = evaluate_stacked(stack, x_val, y_val, step.criteria, bf16)
            took = time.perf_counter() - epoch_started  # with validation: what the log shows
            for run in in_order:  # epoch_sums and val are in the stack's order (run.index)
                if run.active:
                    run.end_epoch(epoch, epoch_sums[run.index], val[run.index], seconds, took)
            logged = [
                r.history[-1] for r in active if r.history and r.history[-1]["epoch"] == epoch
            ]
            if logged:
                progress.set_postfix(val_acc=f"{logged[0]['val/acc']:.4f}")

        for run in in_order:  # the runs still training when max_epochs is reached
            if run.active:
                run.finish()
    return [run.result for run in in_order]


class Phases:
    """Where start-up time goes: seconds between successive marks, named by the mark."""

    def __init__(self) -> None:
        self.last, self.seconds = time.perf_counter(), {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = now - self.last, now

    def __str__(self) -> str:
        total = sum(self.seconds.values())
        return f"{total:.2f}s: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())


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
        self.pruning = job.pruning

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
        self.log.info(config_line(self.cfg, self.run_dir))
        data = data_line(self.cfg.data, self.data)
        self.log.info(data, extra=SAME_IN_GROUP)
        self.log.info(model_line(self.model, str(self.device)), extra=SAME_IN_GROUP)
        remove_stale_temporaries(self.ckpt_dir)
        if self.resumed is None:  # so that even an interrupted first epoch can be resumed
            atomic_save(self.state(0), self.ckpt_dir / "last.pt")
        try:
            self.writer = open_writer(self.run_dir, self.start_epoch + 1)
        except OSError as err:
            raise OutputError(f"Cannot write TensorBoard events to {self.run_dir}: {err}") from err

    def state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs: tensors and plain values only."""
        rng = rng_state(self.shuffle, self.device)
        model = self.model.state_dict()
        if self.batched:  # a batched run draws dropout masks from its own stream
            rng["dropout"] = self.dropout_rng.get_state()
            # its weights are views of the group's stacked tensors, which torch.save would
            # write whole: copies hold just this run's
            model = {k: v.clone() for k, v in model.items()}
        return {
            "epoch": epoch,
            "model": model,
            "optimizer": self.optimizer.member_state(self.index),
            "early_stopping": self.stopper.state_dict(),
            "history": self.history,
            "epoch_seconds": self.train_seconds,
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
            self.unsaved = detached_copy(self.state(epoch))
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
        improved, else the best epoch's state kept since the last save, if any."""
        try:
            if self.unsaved_best is not None and not improved:
                atomic_save(self.unsaved_best, self.ckpt_dir / "best.pt")
            best = self.ckpt_dir / "best.pt" if improved else None
            atomic_save(state, self.ckpt_dir / "last.pt", also=best)
        except OutputError as err:
            raise OutputError(
                f"{err}\n  Free space, then continue with {self.resume_hint}"
            ) from err
        self.unsaved = self.unsaved_best = None

    def flush(self) -> None:
        """Write the epochs that trainer.checkpoint_every kept in memory (a stop, the end)."""
        if self.unsaved is not None:
            self.save(self.unsaved, improved=self.unsaved is self.unsaved_best)

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
    """Open the outputs of every run that will train; close their TensorBoard writers."""
    active = [run for run in runs if run.active]
    try:
        for run in active:
            run.open()
        yield
    finally:
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
