"""Train a fully connected network from the Hydra configs in conf/.

python scripts/train.py model=relu optim=adam
python scripts/train.py -m model=sigmoid,relu optim=sgd,adam
python scripts/train.py --help     # the config groups, their options, examples
"""

import atexit
import gc
import signal
import sys

# Start-up makes about 300,000 objects that live as long as the process (torch's and
# Hydra's modules, functions and classes). Python's garbage collector would walk them all
# a few times while they are imported and once more at exit: about 0.5 s of a 4 s run
# (docs/PERFORMANCE.md). So it is off during the imports, then they are frozen (left out
# of every later collection) and it is on again for what training makes; at exit the final
# collection is skipped, as the process's memory goes back to the OS anyway.
gc.disable()

# Ctrl-C before training starts (imports take seconds) quits quietly with status 130;
# during training, dltips catches it to save a checkpoint first.
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dltips.task import run  # noqa: E402

gc.freeze()
gc.enable()
atexit.register(gc.freeze)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once; in a sweep, a failing job is recorded and the sweep goes on."""
    return run(cfg)


if __name__ == "__main__":
    main()
