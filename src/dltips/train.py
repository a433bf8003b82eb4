"""The training loop: `train(cfg, run_dir) -> metrics`, read top to bottom: set-up, the
epoch loop, the finish.

`train_group` trains K same-shaped runs at once (a batched sweep): one step trains all of
them (dltips.step), one epoch loop drives them, and each `Run` (dltips.run_state) writes exactly
what a single run writes. A single run is a group of one, so there is one loop, not two.
The process's settings (threads, denormals, TF32, malloc) are the entry point's:
dltips.process.configure_process, called before training.
"""

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dltips.checkpoint import sole_writer
from dltips.config import resolve_device, validate
from dltips.data import read_cached
from dltips.errors import CheckpointError, ConfigError, Interrupted
from dltips.run_state import SAME_IN_GROUP, Job, Run, opened, written_dir
from dltips.signals import catch_stop_signals
from dltips.stacked import MemberOptimizer, StackedMLP
from dltips.step import (
    GraphedEpoch,
    TrainStep,
    batch_sizes,
    captures_graphs,
    device_options,
    epoch_batches,
    evaluate,
    evaluate_stacked,
    run_epoch,
    supports_capture,
)

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    run_dir: Path,
    resume_hint: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train the configured network; write checkpoints, TensorBoard events and metrics.json.

    `resume_hint` is the override that continues this run after an interruption (in a
    sweep, `sweep.resume=<sweep dir>`); by default `trainer.resume=<run dir>`. `overrides`
    are the command line's (its config line shows them); None when called from Python.
    """
    return train_group([Job(cfg, Path(run_dir), resume_hint, overrides=overrides)])[0]


def train_group(jobs: list[Job]) -> list[dict[str, Any]]:
    """Train K runs that differ only in per-run settings (seed, lr, dropout, ...) together.

    Each run gets its own data split and shuffle, initialization, early stopping and
    outputs; a run that stops early or diverges is frozen (no further updates to its weights
    or optimizer state) while the others go on.
    Returns each run's metrics, in the jobs' order.
    """
    for job in jobs:
        validate(job.cfg, job.overrides)  # every config error, before anything slow
    # one process writes a run dir at a time: a run resumed while it still trains (a sweep
    # resumed twice) is refused before it logs or writes anything there
    with sole_writer([written_dir(job) for job in jobs]):
        return train_locked(jobs)


def train_locked(jobs: list[Job]) -> list[dict[str, Any]]:
    """train_group, once its configs are valid and it holds its runs' dirs."""
    first = jobs[0].cfg
    # the runs' clock starts here: the first job of a sweep also pays what a process does
    # once (decoding the data set into its cache, torch's optimizers importing torch._dynamo)
    started = time.perf_counter()
    startup = Phases()
    raw_data = read_cached(first.data)  # the runs of a group share one data set
    startup.mark("data set")
    device = resolve_device(first.trainer.device)
    if device.type == "cuda":  # start the CUDA context now, so the start-up split shows it
        torch.zeros(1, device=device)
    startup.mark("device")
    bf16 = str(first.trainer.precision) == "bf16"
    graphed = captures_graphs(device, first.trainer.cuda_graphs)
    optimizer_class = get_class(first.optim._target_)
    if graphed and not supports_capture(optimizer_class):
        log.info("%s cannot step inside a CUDA graph: training eagerly", optimizer_class.__name__)
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
        # on the CPU only in tests, which patch captures_graphs: the graph's eager twin
        eager = device.type != "cuda"
        epoch_graph = GraphedEpoch(step, x_train, y_train, batch_size, shuffle, eager=eager)
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
            frozen = len(optimizer.frozen)
            for run in in_order:  # epoch_sums and val are in the stack's order (run.index)
                if run.active:
                    run.end_epoch(epoch, epoch_sums[run.index], val[run.index], seconds, took)
            still = sum(run.active for run in runs)
            if epoch_graph is not None and len(optimizer.frozen) > frozen and still:
                # a member stopped or diverged: the graph steps the old param groups, with
                # its rows; a new one steps the others only (see GraphedEpoch)
                captured = time.perf_counter()
                epoch_graph.capture()
                log.info(
                    "%d of %d runs still train: re-captured the epoch in %.1fs",
                    still,
                    len(runs),
                    time.perf_counter() - captured,
                )
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
