"""Classify images with a trained checkpoint: one line per image, class and probability.

python scripts/predict.py ckpt=outputs/2026-11-25/12-03-06 images=my_digits/
python scripts/predict.py ckpt=outputs/2026-11-25/12-03-06/checkpoints/best.pt images=x.npy
"""

import signal
import sys

# Ctrl-C (imports take seconds) quits quietly with status 130
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dltips.evaluation import run_predict  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Print each image's predicted class and its probability."""
    run_predict(cfg)


if __name__ == "__main__":
    main()
