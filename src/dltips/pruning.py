"""Optuna searches (hparams_search=optuna) seen from dltips: a job's trial, reporting its
monitored metric every epoch and stopped when the study's pruner says so, and the study's
part of the sweep summary.

A job may run in another process or on another machine (joblib, SLURM): it reaches the
study through the storage in the sweep dir. Its Hydra config says where that is
(hydra.sweeper.storage, hydra.sweeper.study_name, hydra.sweeper.pruner), and its job
number (hydra.job.num) is its trial's number: the sweeper launches trial N as job N.
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dltips.runs import markdown_table

# optuna and sqlalchemy are imported inside the functions that use them: a run that is not
# part of a search never waits for them to load

SWEEPER = "hydra_plugins.dltips_optuna_sweeper.sweeper.DltipsOptunaSweeper"
PRUNED_AT = "pruned_at_epoch"  # trial user attribute: the job stopped it there


def sqlite_path(url: str) -> Path | None:
    """The database file of an sqlite URL; None for other databases."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def storage_url(url: str, cwd: str | Path) -> str:
    """`url` with a relative sqlite path made absolute against `cwd` (the directory the
    command ran in), so a job that runs elsewhere (hydra.job.chdir) finds the same file."""
    from sqlalchemy.engine import make_url

    path = sqlite_path(url)
    if path is None or path.is_absolute():
        return url
    return make_url(url).set(database=str(Path(cwd) / path)).render_as_string(hide_password=False)


def open_storage(url: str) -> Any:
    """Optuna's RDBStorage at `url`; with sqlite, a writer waits up to a minute for the lock
    that another job holds, instead of failing at once."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite_path(url) else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def is_search(hydra_cfg: DictConfig) -> bool:
    """Whether this Hydra config belongs to a dltips Optuna search."""
    return hydra_cfg.sweeper.get("_target_") == SWEEPER


class TrialPruning:
    """The trial a job trains: `should_prune(epoch, value)` reports the monitored metric and
    asks the study's pruner whether to stop here."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial  # an optuna.trial.Trial, RUNNING

    @classmethod
    def from_hydra(cls, hydra_cfg: DictConfig) -> "TrialPruning | None":
        """The trial of this job; None outside an Optuna search, or when it does not prune."""
        if not is_search(hydra_cfg) or hydra_cfg.sweeper.pruner is None:
            return None
        if hydra_cfg.sweeper.pruner.get("_target_") == "optuna.pruners.NopPruner":
            return None
        import optuna
        from hydra.utils import instantiate

        storage = open_storage(storage_url(hydra_cfg.sweeper.storage, hydra_cfg.runtime.cwd))
        study = optuna.load_study(
            study_name=hydra_cfg.sweeper.study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # a job never samples
            pruner=instantiate(hydra_cfg.sweeper.pruner),
        )
        number = int(hydra_cfg.job.num)
        study_id = storage.get_study_id_from_name(study.study_name)
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        except KeyError:
            raise RuntimeError(
                f"Job {number} has no trial {number} in study {study.study_name} "
                f"({hydra_cfg.sweeper.storage}): was it started by hand?"
            ) from None
        return cls(optuna.trial.Trial(study, trial_id))

    def should_prune(self, epoch: int, value: float) -> bool:
        """Report `value` (the monitored metric after `epoch`); True when the trial must stop."""
        self.trial.report(value, epoch)
        if not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_AT, epoch)  # the sweeper tells the study: pruned
        return True


def search_storage(config: DictConfig) -> tuple[str, str | None] | None:
    """(storage URL, study name) of a dltips Optuna search; None for any other sweep."""
    if not is_search(config.hydra):
        return None
    sweeper = config.hydra.sweeper
    return storage_url(sweeper.storage, config.hydra.runtime.cwd), sweeper.study_name


def load_study(url: str, study_name: str | None = None) -> Any | None:
    """The study at `url` (the only one there when `study_name` is None); None when its
    sqlite file is not there (opening it would create an empty one)."""
    import optuna

    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return None
    storage = open_storage(url)
    if study_name is None:  # the only one: Optuna would say so in a log line
        (study_name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=study_name, storage=storage)


def study_summary(url: str, study_name: str | None = None) -> str:
    """Markdown for summary.md: how many trials completed, were pruned or failed, and the
    best trial with its parameters; "" when there is no study at `url`."""
    from optuna.trial import TrialState

    study = load_study(url, study_name)
    if study is None:
        return ""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "unfinished",  # an interrupted search: resume it
    }
    counted = ", ".join(
        f"{counts[state]} {name}"
        for state, name in names.items()
        if counts[state] or state != TrialState.RUNNING
    )
    lines = [
        f"## Optuna study `{study.study_name}`",
        "",
        f"{len(trials)} trials ({counted}); {study.direction.name.lower()}; storage `{url}`.",
        "",
    ]
    if not counts[TrialState.COMPLETE]:
        return "\n".join([*lines, "No trial completed, so there is no best trial.", ""])
    best = study.best_trial
    import pandas as pd

    params = pd.DataFrame(
        {
            "parameter": list(best.params),
            "value": [f"{v:.4g}" if isinstance(v, float) else v for v in best.params.values()],
        }
    )
    lines += [
        f"Best trial: **{best.number}** (run `{best.number}`), value {best.value:.4f}, with",
        "",
        markdown_table(params),
        "",
    ]
    return "\n".join(lines)
