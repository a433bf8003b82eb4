"""Run the lecture and tips presets and write docs/RESULTS.md with tables and plots.

python scripts/report.py                               # every section, data as preset (MNIST)
python scripts/report.py --data fashion_mnist          # offline, Debian's Fashion-MNIST
python scripts/report.py lecture depth --set trainer.max_epochs=5
python scripts/report.py --from-runs                   # only rewrite the page
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from dltips.report import SECTIONS, run_section, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sections",
        nargs="*",
        default=list(SECTIONS),
        help=f"which sections (default: all): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--data",
        help="data set for every run: mnist (as the presets), "
        "fashion_mnist or mnist_5k (which also sets data.train_size=null)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every run, e.g. --set trainer.max_epochs=5",
    )
    parser.add_argument(
        "--runs", type=Path, help="where the sweeps go (default: outputs/report/<data>)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument(
        "--from-runs",
        action="store_true",
        help="run nothing: write the page from the runs already in --runs",
    )
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    extra = list(args.set)
    if args.data:
        extra.insert(0, f"data={args.data}")
        if args.data == "mnist_5k" and not any(s.startswith("data.train_size=") for s in extra):
            extra.insert(1, "data.train_size=null")  # it has 3,500 training images, not 10,000
    runs_dir = args.runs or Path("outputs/report") / (args.data or "mnist")
    sections = [SECTIONS[s] for s in args.sections]
    if not args.from_runs:
        for section in sections:
            try:
                run_section(section, runs_dir / section.name, extra)
            except subprocess.CalledProcessError as err:
                raise SystemExit(
                    f"error: the {section.name} sweep failed ({err}); "
                    f"see the log above. Finished jobs are kept: run again to resume."
                ) from None
    # the command that made the runs: --from-runs only rewrites the page
    command = "python scripts/report.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--from-runs"
    )
    out = write_report(sections, runs_dir, args.out, command.strip())
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
