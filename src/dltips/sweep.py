"""Sweeps: the Hydra callback that summarizes them, failure records, threads per job."""

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dltips.checkpoint import atomic_write_json
from dltips.runs import summarize

log = logging.getLogger(__name__)


def record_failure(run_dir: Path, err: BaseException) -> None:
    """metrics.json of a job that raised: status failed and the error message."""
    message = f"{type(err).__name__}: {err}".strip()
    atomic_write_json({"status": "failed", "error": message}, Path(run_dir) / "metrics.json")


def threads_per_job(n_jobs: int | None, cores: int | None = None) -> int | None:
    """Torch threads for each of `n_jobs` parallel jobs so they share the cores, not fight."""
    if not n_jobs:
        return None
    cores = cores or os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)  # joblib: -1 means all cores
    return max(1, cores // parallel)


class SummaryCallback(Callback):
    """Hydra callback: summary.csv and summary.md in the sweep dir when a multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the dir exists before the sweeper starts: hparams_search=optuna keeps its study there
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        es = config.trainer.early_stopping
        try:
            summarize(sweep_dir, monitor=es.monitor, mode=es.mode)
            log.info("Sweep summary: %s", sweep_dir / "summary.md")
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.error("Could not write the sweep summary in %s: %s", sweep_dir, err)
