"""`dltips.run`: one training run from Python (a notebook), with the outputs of scripts/train.py."""

import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import run_job
from hydra.types import HydraContext, RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from dltips.errors import UserError
from dltips.task import check_not_a_sweep, remove_unstarted
from dltips.train import train

# the repo's conf/, next to src/: there for an editable install (`pip install -e .`)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def run(overrides: list[str] | None = None) -> dict:
    """Train once as `python scripts/train.py *overrides` does; the run's metrics.

    The run writes what the command writes: its dir outputs/DATE/TIME under the working dir
    (or `hydra.run.dir=...`) with .hydra/, train.log, TensorBoard events, checkpoints and
    metrics.json; the returned dict is that metrics.json. A bad config raises
    dltips.errors.UserError and leaves no run dir. Sweeps (-m) run from the command line.

    The configs are read from the repo's conf/, found from this file's path: dltips must be
    installed from a checkout with `pip install -e .` (a copy in site-packages has no conf/).
    """
    if not (CONF_DIR / "train.yaml").is_file():
        raise FileNotFoundError(
            f"dltips.run needs the repo's configs at {CONF_DIR}; install dltips from a "
            f"checkout of the repo with `pip install -e .`."
        )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # job_name names the log file train.log, as scripts/train.py's does
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        cfg = compose("train", overrides=list(overrides or []), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.RUN
        # as Hydra.run does: the start checks claim the run dir, then run_job writes .hydra/
        # and train.log there and calls the task
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name="train")
        context = HydraContext(GlobalHydra.instance().config_loader(), callbacks)
        try:
            result = run_job(train_in_run_dir, cfg, "hydra.run.dir", None, context)
        finally:  # the notebook's later log lines go where they went before, not to train.log
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:], root.level = handlers, level
        callbacks.on_run_end(config=cfg, config_name="train", job_return=result)
    return result.return_value  # raises the run's exception if it failed


class Callbacks:
    """The config's `hydra.callbacks` (dltips.preflight's start checks, a user's own), built
    with instantiate and called as Hydra's command line calls them (its class for that is
    internal): in config order at a start, in reverse order at an end; run_job calls the
    job's. A callback's exception is raised, where the command line only warns."""

    def __init__(self, cfg: DictConfig) -> None:
        self.callbacks = [instantiate(c) for c in cfg.hydra.callbacks.values()]

    def on_run_start(self, **kwargs: Any) -> None:
        for callback in self.callbacks:
            callback.on_run_start(**kwargs)

    def on_job_start(self, **kwargs: Any) -> None:
        for callback in self.callbacks:
            callback.on_job_start(**kwargs)

    def on_job_end(self, **kwargs: Any) -> None:
        for callback in reversed(self.callbacks):
            callback.on_job_end(**kwargs)

    def on_run_end(self, **kwargs: Any) -> None:
        for callback in reversed(self.callbacks):
            callback.on_run_end(**kwargs)


def train_in_run_dir(cfg: DictConfig) -> dict:
    """scripts/train.py's task for one run, with its metrics returned and errors raised."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        check_not_a_sweep(hc)
        return train(cfg, run_dir)
    except UserError:
        remove_unstarted(run_dir)
        raise
