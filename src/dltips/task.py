"""What scripts/train.py does with one composed config: a single run, or one job of a sweep.

A single run stops on a bad config with `error: ...` and leaves no run dir behind. A sweep
job that fails is recorded (status failed) and the sweep goes on; a resumed sweep skips
the jobs that finished and continues the interrupted ones in place.
"""

import logging
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

from dltips.config import check_override_types
from dltips.errors import ConfigError, Interrupted, RunInUse, UserError
from dltips.preflight import check_same_job, holds_a_run, sweep_jobs
from dltips.process import configure_process
from dltips.pruning import TrialPruning
from dltips.resume import override_arg
from dltips.run_state import Job
from dltips.runs import finished_metrics
from dltips.sweep import record_failure, threads_per_job
from dltips.tensorboard_log import job_swept_keys, run_label
from dltips.train import train, train_group

log = logging.getLogger("dltips")
STARTED = time.time()  # files of this invocation are newer
HYDRA_FILES = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log"}


def objective(metrics: dict, cfg: DictConfig) -> float:
    """The best value of the monitored validation metric: what a sweeper optimizes."""
    monitor = cfg.trainer.early_stopping.monitor
    best = [
        h[monitor] for h in metrics.get("history", []) if h["epoch"] == metrics.get("best_epoch")
    ]
    return best[0] if best else math.nan


def run(cfg: DictConfig) -> float:
    """Train once, in the run dir Hydra chose; the objective of the result."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        return sweep_job(cfg, run_dir, Path(hc.sweep.dir), list(hc.overrides.task))
    try:
        check_not_a_sweep(hc)
        configure_process(cfg)
        return objective(train(cfg, run_dir, overrides=list(hc.overrides.task)), cfg)
    except Interrupted as err:  # already logged, with the command that continues the run
        raise SystemExit(128 + err.signum) from None
    except UserError as err:
        remove_unstarted(run_dir)
        raise SystemExit(f"error: {err}") from None
    except SystemExit:  # Ctrl-C before training started (see scripts/train.py)
        remove_unstarted(run_dir)
        raise


def check_command_line(arguments: list[str]) -> None:
    """Stop with one `error:` line, before Hydra starts, when a command-line value has the
    wrong type for its key (`seed=abc`, a sweep's `seed=0,abc`): Hydra's own message takes
    seven lines, and a sweep would leave its dir behind. A command with Hydra's options
    (`--cfg job`, `-cn`; all but -m) is left to Hydra."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in arguments):
        return
    try:
        check_override_types([a for a in arguments if not a.startswith("-")])
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def check_not_a_sweep(hc: DictConfig) -> None:
    """Refuse a single run of a preset that defines a sweep (its hydra.sweeper.params): it
    would train one job with none of the swept values and look like the preset's result."""
    params = hc.sweeper.get("params") or {}
    given = {o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task}
    swept = [k for k in params if k not in given]
    if not swept:  # every swept key set on the command line: one point of the sweep
        return
    choices = hc.runtime.choices
    presets = [f"{g}={choices[g]}" for g in ("experiment", "hparams_search") if choices.get(g)]
    script, *args = sys.argv
    command = shlex.join(["python", script, "-m", *args])
    jobs = sweep_jobs(OmegaConf.create({"hydra": OmegaConf.to_container(hc)}))
    runs = f" ({len(jobs)} runs)" if jobs else ""
    message = (
        f"{' '.join(presets) or 'This config'} defines a sweep{runs} over "
        f"{', '.join(f'{k}={params[k]}' for k in swept)} (hydra.sweeper.params), and Hydra "
        f"runs a sweep only with -m. Nothing was trained.\n  Run the sweep:  {command}"
    )
    if jobs:  # a grid: its first job is a setting the user can train alone
        first = dict(o.split("=", 1) for o in jobs[0] if "=" in o)
        one = shlex.join(["python", script, *args, *(f"{k}={first[k]}" for k in swept)])
        message += f"\n  Or train one of its settings alone, giving each swept key:  {one}"
    raise ConfigError(message)


def batchable(task_function: TaskFunction) -> TaskFunction:
    """Declare `task_function` (scripts/train.py's main) dltips' training task: the batched
    launcher (hydra/launcher=batched) sets its jobs up with `prepare` and trains them
    together; any other launcher calls it as it is."""
    task_function.prepare_job = prepare
    return task_function


def prepare(cfg: DictConfig) -> Job | float:
    """A sweep job set up in the run dir Hydra chose, not trained: its Job, or its objective
    if there is nothing to train."""
    hc = HydraConfig.get()
    run_dir, sweep_dir = Path(hc.runtime.output_dir), Path(hc.sweep.dir)
    return prepare_job(cfg, run_dir, sweep_dir, list(hc.overrides.task))


def sweep_job(cfg: DictConfig, run_dir: Path, sweep_dir: Path, overrides: list[str]) -> float:
    """One job of a sweep: skipped when it finished before, failures recorded, not raised."""
    job = prepare_job(cfg, run_dir, sweep_dir, overrides)
    return train_jobs([job])[0] if isinstance(job, Job) else job


def prepare_job(
    cfg: DictConfig, run_dir: Path, sweep_dir: Path, overrides: list[str]
) -> Job | float:
    """What a sweep job needs before training: its Job, or its objective if there is
    nothing to train (finished before, or failed now)."""
    hc = HydraConfig.get()  # this job's, also in a batched sweep (set up job by job)
    threads = threads_per_job(hc.launcher.get("n_jobs"))
    if threads and not cfg.trainer.num_threads:  # configure_process applies an explicit one
        torch.set_num_threads(threads)
    if cfg.sweep.resume:
        check_same_job(run_dir, overrides, sweep_dir)  # also checked before launch
        done = finished_metrics(run_dir)
        if done:
            log.info("Already %s, skipped: %s", done["status"], run_dir)
            return objective(done, cfg)
        if (run_dir / "checkpoints" / "last.pt").is_file():  # an interrupted job continues
            cfg = OmegaConf.merge(cfg, {"trainer": {"resume": str(run_dir)}})
    elif holds_a_run(run_dir):
        raise SystemExit(f"error: {run_dir} already holds a run; resume the sweep instead.")
    pruning = TrialPruning.from_hydra(hc)  # None unless an Optuna search prunes
    hint = override_arg("sweep.resume", sweep_dir)
    label = run_label(job_swept_keys(hc), overrides)
    return Job(cfg, run_dir, hint, pruning=pruning, overrides=overrides, label=label)


def train_jobs(jobs: list[Job]) -> list[float]:
    """Train sweep jobs (together when there are several); each one's objective. A failure
    is recorded in each job's metrics.json and the sweep goes on."""
    try:
        configure_process(jobs[0].cfg)  # a group's runs share these settings (dltips.group)
        results = train_group(jobs)
    except Interrupted as err:  # stops the sweep too: the user asked for it (already logged)
        raise SystemExit(128 + err.signum) from None
    except RunInUse as err:  # nothing written: skip those jobs (no failure recorded in
        # their dirs, which another process is writing) and train the others
        busy = {d.resolve() for d in err.run_dirs}
        in_use = [job.run_dir.resolve() in busy for job in jobs]
        for job, skip in zip(jobs, in_use):
            if skip:
                job.log.error("Job skipped: %s", err)
        free = [job for job, skip in zip(jobs, in_use) if not skip]
        rest = iter(train_jobs(free) if free else [])
        return [math.nan if skip else next(rest) for skip in in_use]
    except Exception as err:
        for job in jobs:
            if isinstance(err, UserError):
                job.log.error("Job failed: %s", err)
            else:
                job.log.exception("Job failed")
            record_failure(job.run_dir, err)
        return [math.nan] * len(jobs)
    return [objective(metrics, job.cfg) for metrics, job in zip(results, jobs)]


def remove_unstarted(folder: Path, files: set[str] = HYDRA_FILES) -> None:
    """Delete what Hydra wrote for this command in `folder` (only `files`, only if newer
    than this process), then each folder above it up to the cwd that holds nothing else:
    a command that failed before training leaves no empty run dir behind."""
    # where the command was started (with hydra.job.chdir=true the cwd is the run dir)
    started_in = HydraConfig.get().runtime.cwd if HydraConfig.initialized() else Path.cwd()
    cwd, folder = Path(started_in).resolve(), folder.resolve()
    while cwd in folder.parents and folder.is_dir():
        found = [p for p in folder.rglob("*") if not p.is_dir()]
        if any(
            p.relative_to(folder).as_posix() not in files or p.stat().st_mtime < STARTED - 1
            for p in found
        ):
            return
        for p in found:
            p.unlink()
        for sub in sorted(folder.rglob("*"), reverse=True):  # empty folders, deepest first
            sub.rmdir()
        folder.rmdir()
        folder = folder.parent
