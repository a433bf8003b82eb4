"""Train a fully connected network from the Hydra configs in conf/.

python scripts/train.py model=relu optim=adam
python scripts/train.py -m model=sigmoid,relu optim=sgd,adam
python scripts/train.py --help     # the config groups, their options, examples
"""

import signal
import sys

# Ctrl-C before training starts (imports take seconds) quits quietly with status 130;
# during training, dltips catches it to save a checkpoint first.
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

from dltips.startup import imports_without_garbage_collection  # noqa: E402

with imports_without_garbage_collection():  # 0.5 s faster (see its docstring)
    import hydra
    from omegaconf import DictConfig

    from dltips.task import batchable, check_command_line, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@batchable  # hydra/launcher=batched trains its sweep jobs together
def main(cfg: DictConfig) -> float:
    """Train once; in a sweep, a failing job is recorded and the sweep goes on."""
    return run(cfg)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])  # a value of the wrong type: one line, nothing written
    main()
