"""The table of runs: every run dir under a folder, its settings and metrics, as one DataFrame."""

import json
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from dltips.early_stopping import metric_mode

if TYPE_CHECKING:  # pandas takes ~0.3 s to import: only the tables below need it
    import pandas as pd

log = logging.getLogger(__name__)

# every monitor early stopping accepts is a column, so a summary can sort by it
METRIC_COLUMNS = ["train/loss", "train/acc", "val/acc", "test/acc", "val/loss", "test/loss"]
DONE = ("completed", "diverged", "pruned")  # statuses a resumed sweep does not run again
# overrides that say how to run, not what: never a column of the summary
NOT_SETTINGS = ("trainer.resume", "sweep.resume", "trainer.device", "trainer.num_threads")
# what train() writes into metrics.json, by type (a failed job writes only status and error)
NUMBER_KEYS = (*METRIC_COLUMNS, "wall_seconds", "seconds_per_epoch")  # or null
INTEGER_KEYS = ("best_epoch", "epochs_trained")


class BadMetrics(ValueError):
    """A metrics.json that is there but not as dltips writes it (truncated, hand-edited)."""


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run's metrics.json; None when it has none (yet).

    Raises BadMetrics, naming the file, when it is there but cannot be read, is not valid
    JSON or not an object, or holds a value of the wrong type.
    """
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BadMetrics(f"{path}: cannot be read ({err.strerror or err})") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise BadMetrics(f"{path}: not valid JSON ({err})") from err
    problem = _metrics_problem(metrics)
    if problem:
        raise BadMetrics(f"{path}: {problem}")
    return metrics


def _metrics_problem(metrics: Any) -> str | None:
    """What makes parsed metrics.json contents unusable, or None when they are fine."""
    if not isinstance(metrics, dict):
        return f"not a JSON object but {_show(metrics)}"
    if not isinstance(metrics.get("status"), str):
        return f"'status' is {_show(metrics.get('status'))}, not a string"
    for key in ("error", "checkpoint"):
        if not isinstance(metrics.get(key, ""), str):
            return f"'{key}' is {_show(metrics[key])}, not a string"
    for key in NUMBER_KEYS:
        if metrics.get(key) is not None and not _is_number(metrics[key]):
            return f"'{key}' is {_show(metrics[key])}, not a number or null"
    for key in INTEGER_KEYS:
        if key in metrics and not _is_integer(metrics[key]):
            return f"'{key}' is {_show(metrics[key])}, not an integer"
    history = metrics.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(h, dict)
        and _is_integer(h.get("epoch"))
        and all(v is None or _is_number(v) for v in h.values())
        for h in history
    ):
        return "'history' is not a list of objects with an integer epoch and numeric values"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as it reads in JSON, cut short: it goes into a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a run that completed or diverged; None if it must (re)run.

    A damaged metrics.json counts as not finished, with a warning: the run is done again.
    """
    try:
        metrics = read_metrics(run_dir)
    except BadMetrics as err:
        log.warning("%s; the run counts as not finished", err)
        return None
    return metrics if metrics and metrics["status"] in DONE else None


def settings_of(overrides: list[str]) -> dict[str, str]:
    """{key: value} of a run's override strings, without the ones that say how to run it."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    settings = {k.lstrip("+~"): v for k, v in pairs}
    return {k: v for k, v in settings.items() if k not in NOT_SETTINGS}


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run was started with (its .hydra/overrides.yaml), or None."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else None


def collect_runs(root: Path) -> "pd.DataFrame":
    """One row per run dir under `root` (a dir with .hydra/ or metrics.json), any status.

    A run without metrics.json is `unfinished`. A run whose metrics.json is damaged is left
    out with a warning naming the file; `.attrs["skipped"]` lists those files.
    """
    import pandas as pd

    root = Path(root)
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    dirs |= {p.parent for p in root.rglob("metrics.json")}
    rows, skipped = [], []
    for run_dir in sorted(dirs, key=lambda p: _natural_key(p.relative_to(root))):
        try:
            metrics = read_metrics(run_dir) or {}
        except BadMetrics as err:
            log.warning("Skipped %s; fix the file or train the run again.", err)
            skipped.append(run_dir / "metrics.json")
            continue
        row = {
            "run": run_dir.relative_to(root).as_posix() or ".",
            **settings_of(recorded_overrides(run_dir) or []),
        }
        row["status"] = metrics.get("status", "unfinished")
        row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
        row["best_epoch"] = metrics.get("best_epoch")
        row["epochs"] = metrics.get("epochs_trained")
        row["seconds"] = metrics.get("wall_seconds")
        row["error"] = metrics.get("error", "")
        rows.append(row)
    runs = pd.DataFrame(rows)
    if not runs.empty:  # integers stay integers next to a failed run's empty cells
        runs = runs.astype({"best_epoch": "Int64", "epochs": "Int64"})
    runs.attrs["skipped"] = skipped
    return runs


def no_runs_message(
    root: Path, runs: "pd.DataFrame", what: str = "runs (folders with metrics.json or .hydra/)"
) -> str:
    """Why a table of runs is empty: nothing there, or only damaged metrics.json files."""
    skipped = runs.attrs.get("skipped", [])
    if not skipped:
        return f"No {what} under {root}"
    return (
        f"No {what} under {root} that can be read: {len(skipped)} skipped for a damaged "
        "metrics.json (see the warnings above). Fix those files or train the runs again"
    )


def _natural_key(path: Path) -> list[tuple[int, int, str]]:
    """Job 2 before job 10; a numbered folder before a named one at the same level, so any
    two paths compare (a folder of runs may hold sweeps' `0/` beside a `baseline/`)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def split_settings(runs: "pd.DataFrame") -> tuple[list[str], dict[str, str]]:
    """(override keys that vary between runs, override values that all runs share)."""

    fixed = {"run", "status", "best_epoch", "epochs", "seconds", "error", *METRIC_COLUMNS}
    keys = [c for c in runs.columns if c not in fixed]
    # a key set in some runs and absent (NaN) in others varies too
    varying = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    common = {k: str(runs[k].iloc[0]) for k in keys if k not in varying and runs[k].notna().all()}
    return varying, common


def summarize(root: Path, monitor: str = "val/loss", mode: str | None = None) -> dict[str, Any]:
    """Write summary.csv and summary.md for the runs under `root`; return the tables.

    Sorted by `monitor`, best first; `mode` None follows the metric (*/acc max, */loss min).
    """
    import pandas as pd

    root = Path(root)
    if monitor not in METRIC_COLUMNS:
        raise ValueError(f"cannot sort by {monitor!r}: choose one of {', '.join(METRIC_COLUMNS)}")
    mode = metric_mode(monitor, mode)
    runs = collect_runs(root)
    if runs.empty:
        raise FileNotFoundError(no_runs_message(root, runs))
    varying, common = split_settings(runs)
    done = runs["status"].isin(DONE)
    ranked = pd.concat(
        [
            runs[done].sort_values(monitor, ascending=mode == "min", na_position="last"),
            runs[~done],
        ]
    )
    columns = ["run", *varying, "status", *METRIC_COLUMNS, "best_epoch", "epochs", "seconds"]
    if ranked["error"].astype(bool).any():
        columns.append("error")
    table = ranked[columns]
    table.to_csv(root / "summary.csv", index=False)

    seeds = None
    if "seed" in varying and done.any():
        others = [k for k in varying if k != "seed"]
        seeds = seed_table(runs[done], others)

    counts = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    lines = [
        f"# Summary of {root}",
        "",
        f"{len(runs)} runs ({counts}); "
        f"sorted by final `{monitor}` ({'lowest' if mode == 'min' else 'highest'} first). "
        f"Written {datetime.now():%Y-%m-%d %H:%M}.",
        "",
    ]
    if common:
        lines += [
            "Overrides shared by every run: " + " ".join(f"`{k}={v}`" for k, v in common.items()),
            "",
        ]
    lines += [markdown_table(table), ""]
    if seeds is not None:
        lines += ["## Mean ± std over seeds", "", markdown_table(seeds), ""]
    (root / "summary.md").write_text("\n".join(lines))
    return {"runs": table, "seeds": seeds}


def seed_table(runs: "pd.DataFrame", by: list[str]) -> "pd.DataFrame":
    """Mean ± std of each metric over the seeds of every other combination of settings."""
    import pandas as pd

    values = ["train/acc", "val/acc", "test/acc", "val/loss", "epochs", "seconds"]
    numeric = runs.assign(**{c: pd.to_numeric(runs[c]) for c in values})
    groups = numeric.groupby(by, sort=False, dropna=False) if by else [((), numeric)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["seeds"] = len(group)
        for c in values:
            mean, std = group[c].mean(), group[c].std(ddof=1) if len(group) > 1 else 0.0
            row[c] = (
                f"{mean:.4f} ± {std:.4f}"
                if c not in ("epochs", "seconds")
                else f"{mean:.1f} ± {std:.1f}"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: "pd.DataFrame", digits: int = 4) -> str:
    """A DataFrame as a Markdown table: floats to `digits` places, NaN and NA as empty cells."""
    import pandas as pd

    def cell(v: Any) -> Any:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    return table.map(cell).to_markdown(index=False, disable_numparse=True)
