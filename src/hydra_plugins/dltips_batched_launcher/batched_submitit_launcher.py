"""Batched sweeps through submitit: each group of hydra/launcher=batched as one SLURM job.

`python scripts/train.py -m hydra/launcher=batched_submitit_slurm hydra.launcher.partition=gpu
hydra.launcher.gpus_per_node=1 hydra.launcher.gpu_mem_gb=80 seed=0,1,2,3 optim.lr=0.01,0.1`

The sweep's jobs are grouped here by the local batched launcher's rules (dltips.group), each
group sized for the nodes the launcher asks for (`mem_gb` on CPU nodes, `gpu_mem_gb` on GPU
ones) or by `max_members`, never by this machine. The groups go out as one submitit array
job, a task per group; each task sets its jobs up and trains them as hydra/launcher=batched
does (BatchedLauncher.launch_batched), so each job gets the same files. SLURM's SIGUSR2
(before the time limit, or on preemption) stops a group after its current step, every run's
last epoch in its checkpoints; submitit requeues the group, which continues its runs with
`sweep.resume`. A task function that does not batch runs as with Hydra's submitit launcher,
each job its own submitit job. `batched_submitit_local` does the same with local processes.
"""

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import (
    BaseQueueConf,
    LocalQueueConf,
    SlurmQueueConf,
)
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.dltips_batched_launcher.batched_launcher import BatchedLauncher

log = logging.getLogger(__name__)

GB = 1024**3  # SLURM's --mem=8G and mem_gb=8 are 8 GiB


@dataclass
class BatchedSlurmConf(SlurmQueueConf):
    _target_: str = (
        "hydra_plugins.dltips_batched_launcher.batched_submitit_launcher.BatchedSlurmLauncher"
    )
    max_members: int | None = None  # runs per group at most; null: what fits in a node
    gpu_mem_gb: float | None = None  # a GPU node's GPU memory: sizes groups with gpus_per_node
    # dltips' defaults, those of conf/hydra/launcher/slurm.yaml
    cpus_per_task: int | None = 2
    gpus_per_node: int | None = 0
    mem_gb: int | None = 8  # the job's memory; sizes groups on CPU nodes
    array_parallelism: int = 16
    max_num_timeout: int = 3  # requeues after the time limit (a preemption always requeues)


@dataclass
class BatchedLocalConf(LocalQueueConf):
    _target_: str = (
        "hydra_plugins.dltips_batched_launcher.batched_submitit_launcher.BatchedLocalLauncher"
    )
    max_members: int | None = None
    gpu_mem_gb: float | None = None
    gpus_per_node: int | None = 0
    mem_gb: int | None = 8


ConfigStore.instance().store(
    group="hydra/launcher", name="batched_submitit_slurm", node=BatchedSlurmConf, provider="dltips"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="batched_submitit_local", node=BatchedLocalConf, provider="dltips"
)


class BatchedSubmititLauncher(BaseSubmititLauncher):
    def __init__(
        self, max_members: int | None = None, gpu_mem_gb: float | None = None, **params: Any
    ) -> None:
        super().__init__(**params)  # submitit's settings, as Hydra's submitit launcher takes them
        self.max_members, self.gpu_mem_gb = max_members, gpu_mem_gb

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if self.batches() and self.max_members is None:
            self.node_memory(config)  # a setting that sizing needs is missing: stop now

    def batches(self) -> bool:
        return getattr(self.task_function, "prepare_job", None) is not None

    def node_memory(self, cfg: DictConfig) -> tuple[str, int]:
        """The type of the device a run of `cfg` trains on in the nodes this launcher asks
        for, and its memory in bytes: gpu_mem_gb on GPU nodes, mem_gb on CPU nodes."""
        from dltips.preflight import PreflightError

        gpus = self.params.get("gpus_per_node") or 0
        if gpus and str(cfg.trainer.device) != "cpu":
            if self.gpu_mem_gb is None:
                raise PreflightError(
                    f"hydra.launcher.gpus_per_node={gpus}: set hydra.launcher.gpu_mem_gb to "
                    f"the memory of the nodes' GPUs (e.g. 80 for an H100), or "
                    f"hydra.launcher.max_members to the runs per group, to size the groups."
                )
            return "cuda", int(self.gpu_mem_gb * GB)
        if not self.params.get("mem_gb"):
            raise PreflightError(
                "hydra.launcher.mem_gb is not set: set it to the memory each job asks for "
                "(GB), or hydra.launcher.max_members to the runs per group, to size the groups."
            )
        return "cpu", int(self.params["mem_gb"] * GB)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        if not self.batches():  # as Hydra's submitit launcher: each job a submitit job
            return list(super().launch(job_overrides, initial_job_idx))
        from dltips.group import describe

        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        groups = self.groups(job_overrides, numbers)
        log.info("Batched %s", describe(groups, numbers))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        submitted = self.executor(sweep_dir).submit_array(
            [
                SubmittedGroup(
                    self,
                    [list(job_overrides[i]) for i in group],
                    [numbers[i] for i in group],
                    sweep_dir,
                    Singleton.get_state(),
                )
                for group in groups
            ]
        )
        log.info(
            "Submitted %d groups as job %s; submitit's logs in %s, each run's train.log in its dir",
            len(groups),
            submitted[0].job_id.split("_")[0],
            Path(self.params["submitit_folder"]).parent,  # the folder of its <job id> folders
        )
        returns: list[Any] = [None] * len(job_overrides)
        for group, job in zip(groups, submitted):
            for i, ret in zip(group, job.results()[0]):  # one task per job: results()[0]
                returns[i] = ret
        return returns

    def groups(self, job_overrides: Any, numbers: list[int]) -> list[list[int]]:
        """The indices of the jobs in each group: equal group keys (dltips.group), capped
        by max_members or by what fits in the nodes. Each job's config is checked where it
        trains: one that fails there trains alone, and its group's other jobs together."""
        from dltips.group import group_caps, group_jobs, group_key

        keys, cfgs = [], {}
        for overrides, num in zip(job_overrides, numbers):
            task_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with read_write(task_cfg), open_dict(task_cfg):  # what the task gets, as run_job
                del task_cfg["hydra"]
            try:
                keys.append(group_key(task_cfg))
            except Exception:  # a config that cannot be resolved fails alone, on its node
                keys.append(f"alone {num}")
            cfgs.setdefault(keys[-1], task_cfg)
        cap = self.max_members
        if cap is None:
            valid = {k: cfg for k, cfg in cfgs.items() if not k.startswith("alone")}
            cap = group_caps(valid, self.node_memory)
        return group_jobs(keys, cap)

    def executor(self, sweep_dir: Path) -> Any:
        """submitit's executor with this launcher's settings, made as Hydra's submitit
        launcher makes it in its launch (inline there, so not reusable)."""
        import submitit

        specific = {"max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in specific},
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in shared else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in specific | {"submitit_folder"}
            }
        )
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        return executor


class BatchedSlurmLauncher(BatchedSubmititLauncher):
    _EXECUTOR = "slurm"


class BatchedLocalLauncher(BatchedSubmititLauncher):
    _EXECUTOR = "local"


class SubmittedGroup:
    """What one submitit job runs: a group of jobs, set up and trained on its node as
    hydra/launcher=batched trains them. submitit calls `checkpoint` on SLURM's SIGUSR2 and
    requeues what it returns."""

    def __init__(
        self,
        launcher: BatchedSubmititLauncher,
        job_overrides: list[list[str]],
        numbers: list[int],
        sweep_dir: Path,
        singleton_state: dict[type, Singleton],
    ) -> None:
        self.launcher, self.job_overrides, self.numbers = launcher, job_overrides, numbers
        self.sweep_dir, self.singleton_state = sweep_dir, singleton_state

    def __call__(self) -> list[JobReturn]:
        """Each job's JobReturn, in the group's order."""
        Singleton.set_state(self.singleton_state)
        setup_globals()
        config = self.launcher.config
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        local = BatchedLauncher(max_members=len(self.numbers))  # sized by the submitter
        local.setup(
            hydra_context=self.launcher.hydra_context,
            task_function=self.launcher.task_function,
            config=config,
        )
        try:
            return local.launch_batched(self.job_overrides, self.numbers)
        except SystemExit as stop:  # dltips.task.train_jobs: a stop signal ended training
            if stop.code != 128 + signal.SIGUSR2:
                raise
        # SIGUSR2 stopped the group after a step, every run's last epoch written (dltips
        # .signals): submitit's handler gets it now, calls checkpoint() and requeues
        signal.raise_signal(signal.SIGUSR2)
        raise SystemExit(128 + signal.SIGUSR2)  # no submitit handler here: an exit as any

    def checkpoint(self) -> Any:
        """The group again, its jobs continued from their checkpoints (sweep.resume)."""
        import submitit

        from dltips.resume import hydra_override

        resume = hydra_override("sweep.resume", self.sweep_dir)
        resumed = [
            o if any(x.startswith("sweep.resume=") for x in o) else [*o, resume]
            for o in self.job_overrides
        ]
        again = SubmittedGroup(
            self.launcher, resumed, self.numbers, self.sweep_dir, self.singleton_state
        )
        return submitit.helpers.DelayedSubmission(again)
