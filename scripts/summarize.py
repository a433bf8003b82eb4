"""Write summary.csv and summary.md for a folder of runs (a sweep, finished or not).

python scripts/summarize.py outputs/multirun/2026-11-25/11-17-18
"""

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from dltips.runs import markdown_table, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a sweep dir, or any folder holding run dirs")
    parser.add_argument("--monitor", help="metric to sort by (default: the runs' monitor)")
    parser.add_argument(
        "--mode",
        choices=["min", "max"],
        help="min or max (default: the runs' mode, or the metric's: */acc max, */loss min)",
    )
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s: %(message)s")  # skipped runs, one line each
    if not args.dir.is_dir():
        parser.error(f"{args.dir} is not a directory")

    monitor, mode = args.monitor, args.mode
    configs = sorted(args.dir.rglob(".hydra/config.yaml"))
    if configs and not monitor:  # the sweep's own monitor, and its mode (null: the metric's)
        early_stopping = OmegaConf.load(configs[0]).trainer.early_stopping
        monitor, mode = early_stopping.get("monitor"), mode or early_stopping.get("mode")
    try:
        tables = summarize(args.dir, monitor=monitor or "val/loss", mode=mode)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(markdown_table(tables["runs"]))
    print(f"\nWrote {args.dir / 'summary.csv'} and {args.dir / 'summary.md'}")


if __name__ == "__main__":
    main()
