"""Train a fully connected network from the Hydra configs in conf/.

python scripts/train.py model=relu optim=adam
python scripts/train.py -m model=sigmoid,relu optim=sgd,adam
"""

import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dltips.errors import Interrupted, UserError
from dltips.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once; return the best value of the monitored validation metric (for sweepers)."""
    try:
        metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None  # the shell's convention: 130, 143
    monitor = cfg.trainer.early_stopping.monitor
    best = [h[monitor] for h in metrics["history"] if h["epoch"] == metrics["best_epoch"]]
    return best[0] if best else math.nan


if __name__ == "__main__":
    main()
