"""The sweeper's config and its options, registered in Hydra's ConfigStore.

hydra/sweeper=dltips_optuna picks the sweeper; hydra/sweeper/sampler=<tpe | random | cmaes |
nsgaii | qmc | gp> and hydra/sweeper/pruner=<none | median | hyperband> pick its parts.
Each option names an Optuna class as `_target_`, with that class's own defaults.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10  # random trials before TPE takes over
    n_ei_candidates: int = 24
    multivariate: bool | None = None
    group: bool = False
    constant_liar: bool = True  # trials of a batch that still run count as bad: no repeats


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    n_startup_trials: int = 1
    sigma0: float | None = None
    consider_pruned_trials: bool = False
    restart_strategy: str | None = None
    popsize: int | None = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class NopPrunerConf:
    """No pruning: every trial trains to its end (or its early stop)."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    """Stop a trial whose best value so far is worse than the median of the finished trials'
    values at the same epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # finished trials before any trial is pruned
    n_warmup_steps: int = 0  # epochs of each trial that are never pruned
    interval_steps: int = 1
    n_min_trials: int = 1  # trials that reached an epoch before it can prune there


@dataclass
class HyperbandPrunerConf:
    """Successive halving in several brackets (epochs are its resource)."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs every trial gets
    max_resource: Any = "${trainer.max_epochs}"  # epochs of a trial that is never stopped
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class DltipsOptunaSweeperConf:
    """The keys of hydra-optuna-sweeper, plus `pruner`."""

    _target_: str = "hydra_plugins.dltips_optuna_sweeper.sweeper.DltipsOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: Any = MISSING
    pruner: Any = MISSING
    # minimize | maximize: the value each job returns (dltips: the best monitored metric),
    # so it must agree with trainer.early_stopping.monitor (max for */acc, min for */loss)
    direction: str = "minimize"
    # the study: the sweeper and every job reach it here, whichever process or machine
    # runs the job; a relative sqlite path is taken from the directory the command ran in
    storage: str = "sqlite:///${hydra.sweep.dir}/optuna.db"
    study_name: str | None = None
    n_trials: int = 20  # trials in the study, a resumed study's finished trials included
    n_jobs: int = 2  # trials handed to the launcher at a time
    # jobs whose task raised (not those that returned NaN) allowed per batch before the
    # search stops with their error
    max_failure_rate: float = 0.0
    # key: choice(...) | range(...) | interval(...) | tag(log, interval(...)) | a fixed value
    params: dict[str, Any] | None = None


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="dltips_optuna", node=DltipsOptunaSweeperConf)
for name, node in {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
    "qmc": QMCSamplerConf,
    "gp": GPSamplerConf,
}.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node)
for name, node in {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "hyperband": HyperbandPrunerConf,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node)
