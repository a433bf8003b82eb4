"""Sweeps: the Hydra callback that summarizes them, failure records, threads per job."""

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dltips.checkpoint import atomic_write_json
from dltips.early_stopping import metric_mode
from dltips.pruning import search_storage, study_summary
from dltips.runs import DONE, status_counts, summarize
from dltips.tensorboard_log import log_sweep_hparams, pass_swept_keys

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
    """Hydra callback: each job told what its sweep varies (its TensorBoard run's name) when
    a multirun starts; summary.csv, summary.md and the TensorBoard HParams experiment (the
    swept keys first) in the sweep dir when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        pass_swept_keys(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        es = config.trainer.early_stopping
        try:
            log_sweep_hparams(sweep_dir)
        except Exception as err:  # the runs' own events are intact; only the table's order
            log.error("Could not write the HParams experiment in %s: %s", sweep_dir, err)
        try:
            runs = summarize(sweep_dir, monitor=es.monitor, mode=metric_mode(es.monitor, es.mode))
            search = search_storage(config)  # an Optuna search: its best trial, pruned trials
            if search:
                with (sweep_dir / "summary.md").open("a") as f:
                    f.write("\n" + study_summary(*search))
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.error("Could not write the sweep summary in %s: %s", sweep_dir, err)
            return
        statuses = runs["runs"]["status"]
        log.info(
            "Sweep of %d runs: %s. Summary: %s",
            len(statuses),
            status_counts(statuses),
            sweep_dir / "summary.md",
        )
        failed, done = int((statuses == "failed").sum()), int(statuses.isin(DONE).sum())
        if done == 0:  # nothing to compare: the command failed, whatever the jobs' reasons
            unfinished = int((statuses == "unfinished").sum())  # e.g. skipped: in use
            counts = f"{failed} of {len(statuses)} failed" + (
                f", {unfinished} unfinished" if unfinished else ""
            )
            raise SystemExit(
                f"error: no job of the sweep completed ({counts}). "
                f"Their errors are in {sweep_dir / 'summary.md'} and each job's train.log."
            )
        if failed:
            log.warning(
                "%d of %d jobs failed; their errors are in %s and each job's train.log.",
                failed,
                len(statuses),
                sweep_dir / "summary.md",
            )
