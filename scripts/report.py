"""Run the lecture and tips presets and write a page of tables and plots.

python scripts/report.py --data fashion_mnist          # the full report: docs/RESULTS.md
python scripts/report.py                               # every section on MNIST (as the presets)
python scripts/report.py lecture depth --set trainer.max_epochs=5   # page in its runs dir
python scripts/report.py --from-runs --data fashion_mnist           # only rewrite the page

Only the full report (`make report`) writes docs/RESULTS.md, whose notes describe it; any
other settings write RESULTS.md into the runs dir, unless --out names the page.
"""

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from dltips.report import (
    DOCS_PAGE,
    FULL_REPORT,
    SECTIONS,
    default_runs_dir,
    images_dir,
    report_page,
    run_section,
    write_report,
)


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
        "--runs",
        type=Path,
        help="where the sweeps go (default: outputs/report/<data>, plus the --set overrides)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the page (default: docs/RESULTS.md for the full report, `{FULL_REPORT}`; "
        "RESULTS.md in the runs dir for any other settings)",
    )
    parser.add_argument(
        "--from-runs",
        action="store_true",
        help="run nothing: write the page from the runs already in --runs",
    )
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s: %(message)s")  # skipped runs, one line each
    if args.out and args.out.suffix != ".md":  # its plots go into a folder of its stem's name
        parser.error(f"--out {args.out}: give a Markdown page, ending in .md")
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    extra = list(args.set)
    if args.data:
        extra.insert(0, f"data={args.data}")
        if args.data == "mnist_5k" and not any(s.startswith("data.train_size=") for s in extra):
            extra.insert(1, "data.train_size=null")  # it has 3,500 training images, not 10,000
    runs_dir = args.runs or default_runs_dir(args.data, args.set)
    out = args.out or report_page(args.sections, args.data, args.set, runs_dir)
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
    try:
        write_report(sections, runs_dir, out, command.strip(), extra=extra)
    except FileNotFoundError as err:
        what_to_do = (
            "run the same command without --from-runs to train them, "
            "or point --runs at the folder that holds them"
            if args.from_runs
            else "every job failed: see the log above"
        )
        raise SystemExit(f"error: {err}. Nothing was written: {what_to_do}.") from None
    print(f"Wrote {out} (plots in {images_dir(out)}/)")
    if args.out is None and out != DOCS_PAGE:
        print(
            f"Not docs/RESULTS.md: that page is the full report, "
            f"`{FULL_REPORT}`. Add --out docs/RESULTS.md to write there anyway."
        )


if __name__ == "__main__":
    main()
