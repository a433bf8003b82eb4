"""A Hydra launcher that trains the jobs of a sweep that share a model shape together.

`python scripts/train.py -m hydra/launcher=batched seed=0,1,2,3 optim.lr=0.01,0.1`

Every job is set up as Hydra's basic launcher sets it up (its dir, `.hydra/`, train.log,
callbacks), then the jobs that can share one batched model (dltips.group) train as one
group with dltips.train.train_group, the same loop a single run uses. Each job gets the
files a sequential sweep writes; a job that fits no group trains alone.
"""

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
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
        self.composed = ComposedConfigs(hydra_context.config_loader)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from dltips.config import validate
        from dltips.group import (
            CPU_MAX_PARAMS,
            cpu_too_large,
            describe,
            group_jobs,
            group_key,
            memory_cap,
        )
        from dltips.task import prepare_job, train_jobs
        from dltips.train import Job

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs, batched where they share a model", len(job_overrides))

        # 1. set every job up as the basic launcher does; keep what it needs to train
        returns, jobs = [], []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            config = self.composed.get(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = num

            def prepare(cfg: DictConfig) -> Any:
                hc = HydraConfig.get()
                return prepare_job(
                    cfg,
                    Path(hc.runtime.output_dir),
                    Path(hc.sweep.dir),
                    list(hc.overrides.task),
                )

            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=prepare,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            returns.append(ret)
            if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, Job):
                jobs.append((i, num, ret._return_value))
        self.composed.clear()
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
        if cap is None:  # each shape's own: what fits in memory, or 1 where batching is slower
            valid = {k: job for (_, _, job), k in zip(jobs, keys) if not k.startswith("alone")}
            cap = {key: memory_cap(job.cfg) for key, job in valid.items()}
            if any(cpu_too_large(job.cfg) for job in valid.values()):
                log.info(
                    "On the CPU, networks of more than %s parameters train one by one: "
                    "batched, they train no faster (hydra.launcher.max_members=K batches them)",
                    f"{CPU_MAX_PARAMS:,}",
                )
        groups = group_jobs(keys, cap)
        log.info("Batched %s", describe(groups, [num for _, num, _ in jobs]))

        # 3. train each group; each job's log lines go to its own train.log
        for group in groups:
            members = [jobs[g] for g in group]
            with job_logs([job for _, _, job in members], [num for _, num, _ in members]):
                objectives = train_jobs([job for _, _, job in members])
            for (i, _, _), value in zip(members, objectives):
                returns[i].return_value = value
                returns[i].status = JobStatus.COMPLETED
        return returns


class ComposedConfigs:
    """Each job's config, composed once per launch where the sweeper already composed it.

    Hydra's sweepers compose every job's config to check a batch before they launch it
    (the basic sweeper's `validate_batch_is_legal`, dltips' Optuna sweeper likewise) and
    throw the result away; the launcher would compose it again, about 15 YAML files and
    75 ms per job. This remembers what the shared config loader composes until the launch
    that follows, and the launcher takes a copy of it. A config no sweeper composed (or a
    job's duplicate) is composed as before.
    """

    def __init__(self, loader: ConfigLoader) -> None:
        self.configs: dict[tuple[int, tuple[str, ...]], DictConfig] = {}
        compose = loader.load_sweep_config
        earlier = getattr(compose, "composed", None)  # a launcher set up before on this loader
        self.compose = earlier.compose if earlier else compose

        def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> Any:
            config = self.compose(master_config, sweep_overrides)
            self.configs[id(master_config), tuple(sweep_overrides)] = config
            return config

        load_sweep_config.composed = self
        loader.load_sweep_config = load_sweep_config  # the instance the sweeper holds too

    def get(self, master_config: DictConfig, overrides: list[str]) -> DictConfig:
        """A job's config: a copy of the one the sweeper composed (which is then let go, so a
        large sweep holds each config once), or a fresh composition."""
        config = self.configs.pop((id(master_config), tuple(overrides)), None)
        if config is None:
            return self.compose(master_config, overrides)
        return copy.deepcopy(config)

    def clear(self) -> None:
        self.configs.clear()


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
