"""Train a fully connected network from the Hydra configs in conf/.

python scripts/train.py model=relu optim=adam
python scripts/train.py -m model=sigmoid,relu optim=sgd,adam
"""

import logging
import math
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dltips.errors import Interrupted, UserError
from dltips.runs import finished_metrics
from dltips.sweep import record_failure, threads_per_job
from dltips.train import train

log = logging.getLogger("dltips")

# hydra.sweep.dir is `sweep.resume` when that is set, a new timestamped dir otherwise
OmegaConf.register_new_resolver(
    "if_null", lambda value, default: default if value is None else value
)


def objective(metrics: dict, cfg: DictConfig) -> float:
    """The best value of the monitored validation metric: what a sweeper optimizes."""
    monitor = cfg.trainer.early_stopping.monitor
    best = [
        h[monitor] for h in metrics.get("history", []) if h["epoch"] == metrics.get("best_epoch")
    ]
    return best[0] if best else math.nan


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once. In a sweep, a failing job is recorded and the sweep goes on."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN

    if multirun:
        threads = threads_per_job(hc.launcher.get("n_jobs"))
        if threads and not cfg.trainer.num_threads:  # train() applies an explicit setting
            torch.set_num_threads(threads)
        if cfg.sweep.resume:
            done = finished_metrics(run_dir)
            if done:
                log.info("Already %s, skipped: %s", done["status"], run_dir)
                return objective(done, cfg)
            if (run_dir / "checkpoints" / "last.pt").is_file():  # an interrupted job continues
                cfg = OmegaConf.merge(cfg, {"trainer": {"resume": str(run_dir)}})

    try:
        return objective(train(cfg, run_dir), cfg)
    except Interrupted as err:  # stops a sweep too: the user asked for it (already logged)
        raise SystemExit(128 + err.signum) from None
    except Exception as err:
        if not multirun:
            if isinstance(err, UserError):
                raise SystemExit(f"error: {err}") from None
            raise
        if isinstance(err, UserError):
            log.error("Job failed: %s", err)
        else:
            log.exception("Job failed")
        record_failure(run_dir, err)
        return math.nan


if __name__ == "__main__":
    main()
