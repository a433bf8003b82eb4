"""The search: an Optuna study kept in the sweep dir, asked for `n_jobs` trials at a time;
trial N runs as job N (dir N) through whatever launcher is configured, and the study is
told the value its job returns (NaN or a job that raised: a failed trial; a job that its
pruner stopped: a pruned trial).

With sweep.resume=<sweep dir> the study continues: finished trials (complete, pruned,
failed) count towards n_trials and are not run again, interrupted ones continue in their
own job dirs, and new trials get new numbers, hence new dirs.
"""

import logging
import math
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from dltips.early_stopping import metric_mode
from dltips.preflight import PreflightError, settings_of
from dltips.pruning import PRUNED_AT, open_storage, sqlite_path, storage_url
from hydra_plugins.dltips_optuna_sweeper._search_space import search_space, trial_overrides

log = logging.getLogger(__name__)


class OptunaSearch:
    """What the sweeper does; the arguments are hydra.sweeper's keys (config.py)."""

    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
    ) -> None:
        self.sampler, self.pruner = sampler, pruner
        self.direction = str(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.resume = OmegaConf.select(config, "sweep.resume")

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        try:
            return self.search(arguments)
        except PreflightError:  # a new sweep dir that the checks left empty goes
            new = self.resume is None and self.sweep_dir.is_dir()
            if new and not any(self.sweep_dir.iterdir()):
                self.sweep_dir.rmdir()
            raise

    def search(self, arguments: list[str]) -> list[JobReturn]:
        self.check_settings()
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise PreflightError(
                "hparams_search: the search space is empty. Give hydra.sweeper.params keys a "
                "choice(...), range(...) or interval(...)."
            )
        study = self.open_study(space, fixed)
        trials = study.get_trials(deepcopy=False)
        # interrupted trials (the sweep was stopped) run again in their own dirs: the job
        # skips a run that finished and continues one that has a checkpoint
        again = [t for t in trials if not t.state.is_finished()]
        new = max(0, self.n_trials - len(trials))
        log.info(
            "Study %s (%s, %s, %s, %s): %d finished trials, %d to continue, %d new",
            study.study_name,
            study.direction.name.lower(),
            type(self.sampler).__name__,
            type(self.pruner).__name__,
            self.url,
            len(trials) - len(again),
            len(again),
            new,
        )
        returns: list[JobReturn] = []
        for start in range(0, len(again), self.n_jobs):
            batch = [(t.number, t.params) for t in again[start : start + self.n_jobs]]
            returns += self.run_batch(study, batch, space, fixed)
        while new > 0:
            asked = [study.ask(fixed_distributions=space) for _ in range(min(new, self.n_jobs))]
            returns += self.run_batch(study, [(t.number, t.params) for t in asked], space, fixed)
            new -= len(asked)
        self.save_results(study)
        return returns

    def check_settings(self) -> None:
        """Refuse, before any trial, settings that cannot work: a direction that contradicts
        the monitored metric, fewer than one trial at a time."""
        if self.n_jobs < 1:
            raise PreflightError(
                f"hydra.sweeper.n_jobs={self.n_jobs}: the trials handed to the launcher at a "
                f"time, at least 1 (hydra.launcher.n_jobs says how many run at once)."
            )
        if self.direction not in ("minimize", "maximize"):
            raise PreflightError(
                f"hydra.sweeper.direction={self.direction}: must be minimize or maximize "
                f"(one objective: each job returns its best monitored metric)."
            )
        monitor = OmegaConf.select(self.config, "trainer.early_stopping.monitor")
        if monitor is None:
            return
        try:
            mode = metric_mode(
                monitor, OmegaConf.select(self.config, "trainer.early_stopping.mode")
            )
        except ValueError:
            return  # the job's config check reports it
        wanted = "maximize" if mode == "max" else "minimize"
        if self.direction != wanted:
            raise PreflightError(
                f"hydra.sweeper.direction={self.direction} contradicts "
                f"trainer.early_stopping.monitor={monitor}: each trial returns its best "
                f"{monitor}, and each epoch's {monitor} is what the pruner compares. Use "
                f"hydra.sweeper.direction={wanted}, or monitor another metric."
            )

    def open_study(self, space: dict[str, BaseDistribution], fixed: dict[str, str]) -> optuna.Study:
        """A new study, or with sweep.resume the sweep's own one, checked to be the same search."""
        if self.storage is None:
            raise PreflightError(
                "hydra.sweeper.storage=null: the jobs reach the study through its storage. "
                "Leave it out (sqlite:///<sweep dir>/optuna.db) or give a database URL."
            )
        self.url = storage_url(self.storage, self.config.hydra.runtime.cwd)
        recorded = {
            "search_space": {k: repr(d) for k, d in space.items()},
            "fixed": settings_of([f"{k}={v}" for k, v in fixed.items()]),
        }
        names = self.existing_studies()
        if self.resume is None:
            if self.study_name in names:
                raise PreflightError(
                    f"{self.url} already holds the study {self.study_name}. Continue it with "
                    f"the same command plus sweep.resume=<its sweep dir>, or give another "
                    f"hydra.sweeper.study_name."
                )
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=open_storage(self.url),
                sampler=self.sampler,
                pruner=self.pruner,
                direction=self.direction,
            )
            for key, value in recorded.items():
                study.set_user_attr(key, value)
            monitor = OmegaConf.select(self.config, "trainer.early_stopping.monitor")
            if monitor:  # what each trial's value is, for plots
                study.set_user_attr("objective", f"best {monitor}")
            # how the search was started (a resume leaves it as it was)
            OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
            return study

        if self.study_name not in names and not (self.study_name is None and len(names) == 1):
            raise PreflightError(
                f"sweep.resume={self.resume}: no study {self.study_name or ''} to continue in "
                f"{self.url}. Is it the sweep dir of an Optuna search? Nothing was changed."
            )
        study = optuna.load_study(
            study_name=self.study_name, storage=open_storage(self.url), pruner=self.pruner
        )
        self.check_same_search(study, recorded)
        self.check_job_dirs(study)
        # a seeded sampler starts its sequence anew: seeded as before, it would draw the
        # first trials' parameters again. Seed + trials so far draws new ones, reproducibly.
        sampler_cfg = self.config.hydra.sweeper.sampler
        if sampler_cfg.get("seed") is not None:
            self.sampler = instantiate(sampler_cfg, seed=sampler_cfg.seed + len(study.trials))
        study.sampler = self.sampler
        return study

    def existing_studies(self) -> list[str]:
        """The studies in the storage; none when its sqlite file is not there (yet), which
        asking the storage would create."""
        path = sqlite_path(self.url)
        if path is not None and not path.is_file():
            return []
        return optuna.get_all_study_names(open_storage(self.url))

    def check_same_search(self, study: optuna.Study, recorded: dict[str, Any]) -> None:
        """A resumed study must search the same space with the same fixed overrides."""
        old = study.user_attrs
        changes = []
        if study.direction.name.lower() != self.direction:
            changes.append(
                f"hydra.sweeper.direction: {study.direction.name.lower()} -> {self.direction}"
            )
        for part in ("search_space", "fixed"):
            before, now = old.get(part, {}), recorded[part]
            for key in dict.fromkeys([*before, *now]):
                if before.get(key) != now.get(key):
                    changes.append(f"{key}: {_shown(before.get(key))} -> {_shown(now.get(key))}")
        if changes:
            raise PreflightError(
                f"sweep.resume={self.resume}: this command searches otherwise than the study "
                f"{study.study_name} it continues:\n    " + "\n    ".join(changes) + "\n"
                f"  Repeat the original command (see {self.sweep_dir / 'multirun.yaml'}); only "
                f"hydra.sweeper.n_trials, n_jobs, the sampler, the pruner and how jobs run may "
                f"change. Nothing was changed."
            )

    def check_job_dirs(self, study: optuna.Study) -> None:
        """Refuse job dirs that no trial owns: a new trial would train in them."""
        if OmegaConf.to_container(self.config.hydra.sweep)["subdir"] != "${hydra.job.num}":
            return
        numbers = {t.number for t in study.get_trials(deepcopy=False)}
        strays = sorted(
            int(p.name)
            for p in self.sweep_dir.iterdir()
            if p.name.isdigit() and p.is_dir() and int(p.name) not in numbers
        )
        if strays:
            raise PreflightError(
                f"sweep.resume={self.resume}: job dirs {', '.join(map(str, strays))} belong to "
                f"no trial of the study {study.study_name} ({len(numbers)} trials), and new "
                f"trials would be run in them. Is {self.url} this sweep's study? Nothing was "
                f"changed."
            )

    def run_batch(
        self,
        study: optuna.Study,
        batch: list[tuple[int, dict[str, Any]]],
        space: dict[str, BaseDistribution],
        fixed: dict[str, str],
    ) -> list[JobReturn]:
        """Launch trials as jobs with their own numbers, then tell the study how each ended."""
        overrides = [trial_overrides(space, params, fixed) for _, params in batch]
        try:  # a trial that cannot be composed fails here, not in a launched job
            for o in overrides:
                self.hydra_context.config_loader.load_sweep_config(self.config, o)
        except Exception:
            for number, _ in batch:
                study.tell(number, state=TrialState.FAIL)
            raise
        returns: list[JobReturn] = []
        # the launcher numbers its jobs from initial_job_idx: one call per consecutive run
        runs: list[list[int]] = []
        for i, (number, _) in enumerate(batch):
            if runs and batch[runs[-1][-1]][0] == number - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            returns += self.launcher.launch(
                [overrides[i] for i in run], initial_job_idx=batch[run[0]][0]
            )
        pruned = {
            t.number: t.user_attrs[PRUNED_AT]
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if PRUNED_AT in t.user_attrs
        }
        raised = []
        for (number, _), ret in zip(batch, returns):
            if ret.status != JobStatus.COMPLETED:
                raised.append(ret)
                study.tell(number, state=TrialState.FAIL)
                log.warning("Trial %d failed: %s", number, ret._return_value)
            elif number in pruned:
                study.tell(number, state=TrialState.PRUNED)
            elif _is_finite(ret.return_value):
                study.tell(number, float(ret.return_value))
            else:  # a failed or unfinished job (NaN), recorded in its metrics.json
                study.tell(number, state=TrialState.FAIL)
        if raised and len(raised) / len(returns) > self.max_failure_rate:
            log.error(
                "%d of %d jobs raised (hydra.sweeper.max_failure_rate=%s)",
                len(raised),
                len(returns),
                self.max_failure_rate,
            )
            raised[0].return_value  # raises the job's own exception  # noqa: B018
        return returns

    def save_results(self, study: optuna.Study) -> None:
        """optimization_results.yaml in the sweep dir, as hydra-optuna-sweeper writes it."""
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("No trial of study %s completed: no best trial", study.study_name)
            return
        best = study.best_trial
        log.info("Best trial %d: value %s, parameters %s", best.number, best.value, best.params)
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _shown(value: Any) -> str:
    return "(not set)" if value is None else str(value)
