"""PNG comparisons of a sweep: val/acc curves, final metrics against each swept key (seeds pooled).

python scripts/plot.py outputs/multirun/2026-11-25/11-17-18
"""

import argparse
import logging
from pathlib import Path

from dltips.optuna_plots import plot_search
from dltips.plots import plot_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a sweep dir, or any folder holding run dirs")
    parser.add_argument("--out", type=Path, help="where to write the PNGs (default: DIR)")
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s: %(message)s")  # skipped runs, one line each
    if not args.dir.is_dir():
        parser.error(f"{args.dir} is not a directory")
    try:
        # an Optuna search (optuna.db in DIR) adds its history and parameter importances
        for path in [*plot_sweep(args.dir, args.out), *plot_search(args.dir, args.out)]:
            print(f"Wrote {path}")
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
