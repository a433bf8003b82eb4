"""A Hydra launcher that trains the jobs of a sweep that share a model shape together.

`python scripts/train.py -m hydra/launcher=batched seed=0,1,2,3 optim.lr=0.01,0.1`

A task function that declares how its jobs are set up to train (`prepare_job`, see
dltips.task.batchable) has each job set up as Hydra's basic launcher sets it up (its dir,
`.hydra/`, train.log), then the jobs that can share one batched model (dltips.group) train
as one group with dltips.train.train_group, the same loop a single run uses; Hydra's
`on_job_start` and `on_job_end` callbacks run around that training. Each job gets the files
a sequential sweep writes; a job that fits no group trains alone. Any other task function
runs job by job, as the basic launcher runs it.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.dltips_batched_launcher.batched_launcher.BatchedLauncher"
    max_members: int | None = None  # runs per group at most; null: what fits in memory


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="dltips"
)

JOB_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class NoCallbacks:
    """Hydra's callbacks, not called: while a job is only set up, not yet trained."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


class BatchedLauncher(Launcher):
    def __init__(self, max_members: int | None = None) -> None:
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if getattr(self.task_function, "prepare_job", None) is None:
            log.info("Launching %d jobs locally (not a task that batches)", len(job_overrides))
            return [
                self.run_alone(overrides, initial_job_idx + i)
                for i, overrides in enumerate(job_overrides)
            ]
        log.info("Launching %d jobs, batched where they share a model", len(job_overrides))
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        return self.launch_batched(job_overrides, numbers)

    def job_config(self, overrides: list[str], num: int) -> DictConfig:
        """A job's config, composed and numbered as the basic launcher does."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = num
        return config

    def run_alone(self, overrides: list[str], num: int) -> JobReturn:
        """One job of any task function, as Hydra's basic launcher runs it."""
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=self.job_config(list(overrides), num),
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch_batched(self, job_overrides: Any, numbers: list[int]) -> list[JobReturn]:
        """The jobs of a batched sweep (job numbers `numbers`), set up, grouped and trained
        in this process; one JobReturn per job, in their order. A submitit launcher's group
        (batched_submitit_launcher.py) runs this too, on its node."""
        from dltips.config import validate
        from dltips.group import describe, free_memory, group_caps, group_jobs, group_key
        from dltips.run_state import Job
        from dltips.task import train_jobs

        # 1. set every job up as the basic launcher runs it, with the task's prepare_job in
        # place of the task: nothing trains yet, so Hydra's callbacks wait for the training
        # (a job with nothing to train gets them at once)
        setup_only = HydraContext(
            config_loader=self.hydra_context.config_loader, callbacks=NoCallbacks()
        )
        returns, configs, jobs = [], [], []
        for i, (overrides, num) in enumerate(zip(job_overrides, numbers)):
            config = self.job_config(list(overrides), num)
            ret = run_job(
                hydra_context=setup_only,
                task_function=self.task_function.prepare_job,
                config=config,  # run_job sets its hydra.runtime.output_dir
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            returns.append(ret)
            configs.append(config)
            if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, Job):
                jobs.append((i, config.hydra.job.num, ret.return_value))
            else:  # skipped (finished before) or failed while set up
                self.on_job_start(config)
                self.on_job_end(config, ret)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

        # 2. group the jobs to train; a job whose config cannot be grouped trains alone
        keys = []
        for _, num, job in jobs:
            try:
                validate(job.cfg)
                keys.append(group_key(job.cfg))
            except Exception:  # a bad config fails alone: train() reports what is wrong
                keys.append(f"alone {num}")
        cap = self.max_members
        if cap is None:  # each shape's own: what fits in this machine's memory
            valid = {k: job.cfg for (_, _, job), k in zip(jobs, keys) if not k.startswith("alone")}
            cap = group_caps(valid, free_memory)
        groups = group_jobs(keys, cap)
        log.info("Batched %s", describe(groups, [num for _, num, _ in jobs]))

        # 3. train each group, Hydra's callbacks around it; each job's log lines go to its
        # own train.log
        for group in groups:
            members = [jobs[g] for g in group]
            with job_logs([job for _, _, job in members], [num for _, num, _ in members]):
                for i, _, _ in members:
                    self.on_job_start(configs[i])
                objectives = train_jobs([job for _, _, job in members])
                for (i, _, _), value in zip(members, objectives):
                    returns[i].return_value = value
                    self.on_job_end(configs[i], returns[i])
        return returns

    def on_job_start(self, config: DictConfig) -> None:
        """Hydra's on_job_start for a job, its config current as in run_job."""
        with current(config):
            self.hydra_context.callbacks.on_job_start(
                config=config, task_function=self.task_function
            )

    def on_job_end(self, config: DictConfig, ret: JobReturn) -> None:
        """Hydra's on_job_end for a job, given its return: its training's result."""
        with current(config):
            self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)


@contextmanager
def current(config: DictConfig) -> Iterator[None]:
    """A job's Hydra config as HydraConfig.get() while its callbacks run, as in run_job."""
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = before


class job_logs:
    """While a group trains: each job logs to its own train.log (and the console)."""

    def __init__(self, jobs: list[Any], numbers: list[int]) -> None:
        self.jobs, self.numbers = jobs, numbers
        self.root = logging.getLogger()

    def __enter__(self) -> "job_logs":
        # the last job's set-up left the root logger writing to that job's train.log
        self.files = [h for h in self.root.handlers if isinstance(h, logging.FileHandler)]
        for handler in self.files:
            self.root.removeHandler(handler)
        self.handlers = []
        once = OncePerGroup()
        for job, num in zip(self.jobs, self.numbers):
            job.log = logging.getLogger(f"dltips.train.job{num}")  # names the job on the console
            job.log.setLevel(logging.INFO)
            job.log.propagate = False
            console = logging.StreamHandler()
            console.addFilter(once)
            for handler in (logging.FileHandler(job.run_dir / "train.log"), console):
                handler.setFormatter(logging.Formatter(JOB_FORMAT))
                job.log.addHandler(handler)
                self.handlers.append((job.log, handler))
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        for handler in self.files:
            self.root.addHandler(handler)


class OncePerGroup(logging.Filter):
    """On the console, a line that the runs of a group log alike (marked `same_in_group`:
    "Training K runs together", the data, the network) shows once, from the first job that
    logs it; each run's train.log still has it. Other lines (epochs, results) show for every
    job."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "same_in_group", False):
            return True
        message = record.getMessage()
        if message in self.shown:
            return False
        self.shown.add(message)
        return True
