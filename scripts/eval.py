"""Evaluate a trained checkpoint on a split of its data: eval.json and a confusion matrix.

python scripts/eval.py ckpt=outputs/2026-11-25/12-03-06
python scripts/eval.py -m ckpt=outputs/2026-11-25/12-03-06 data.test_noise_std=0,0.5,1
"""

import signal
import sys

# Ctrl-C (imports take seconds) quits quietly with status 130, leaving no output dir behind
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

from dltips.startup import imports_without_garbage_collection  # noqa: E402

with imports_without_garbage_collection():  # 0.5 s faster (see its docstring)
    import hydra
    from omegaconf import DictConfig

    from dltips.evaluation import run_eval


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    """Evaluate once (each job of a sweep evaluates the same way); the accuracy."""
    return run_eval(cfg)


if __name__ == "__main__":
    main()
