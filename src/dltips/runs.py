"""The table of runs: every run dir under a folder, its settings and metrics, as one DataFrame."""

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from dltips.early_stopping import metric_mode
from dltips.schema import keys_where

if TYPE_CHECKING:  # pandas takes ~0.3 s to import: only the tables below need it
    import pandas as pd

log = logging.getLogger(__name__)

# every monitor early stopping accepts is a column, so a summary can sort by it
METRIC_COLUMNS = ["train/loss", "train/acc", "val/acc", "test/acc", "val/loss", "test/loss"]
# A run's status, as every table, plot and the console show it, in this order. "stopped
# early" is a completed run that early stopping ended before trainer.max_epochs (metrics.json:
# status completed, stopped_early true); "unfinished" is a run without metrics.json (yet).
STATUSES = ("completed", "stopped early", "diverged", "pruned", "failed", "unfinished")
# statuses whose final metrics are a result of their setting: the only ones a mean pools
# (a diverged run reports its last good epoch, a pruned one an early epoch)
USABLE = ("completed", "stopped early")
DONE = (*USABLE, "diverged", "pruned")  # statuses a resumed sweep does not run again
# overrides that say how to run, not what: never a column of the summary
NOT_SETTINGS = keys_where("shown", False)
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
            **metrics.get("resumed_with", {}),  # settings changed on resume label the run
        }
        row["status"] = run_status(metrics or None)
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


def run_status(metrics: dict[str, Any] | None) -> str:
    """A run's status (one of STATUSES) from its metrics.json contents (None: unfinished)."""
    if metrics is None:
        return "unfinished"
    if metrics["status"] == "completed" and metrics.get("stopped_early"):
        return "stopped early"
    return metrics["status"]


def status_counts(statuses: Iterable[str]) -> str:
    """'2 completed, 1 diverged': the count of each status, in the order of STATUSES."""
    counts = Counter(statuses)
    order = [*STATUSES, *sorted(set(counts) - set(STATUSES))]  # a status of a newer version
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


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

    root = Path(root)
    if monitor not in METRIC_COLUMNS:
        raise ValueError(f"cannot sort by {monitor!r}: choose one of {', '.join(METRIC_COLUMNS)}")
    mode = metric_mode(monitor, mode)
    runs = collect_runs(root)
    if runs.empty:
        raise FileNotFoundError(no_runs_message(root, runs))
    varying, common = split_settings(runs)
    # usable runs by the monitor, then the others status by status (a pruned trial's
    # early-epoch value is no rank among finished runs)
    rank = runs["status"].map(lambda s: 0 if s in USABLE else 1 + _status_index(s))
    ranked = runs.assign(_rank=rank).sort_values(
        ["_rank", monitor], ascending=[True, mode == "min"], na_position="last", kind="stable"
    )
    columns = ["run", *varying, "status", *METRIC_COLUMNS, "best_epoch", "epochs", "seconds"]
    if ranked["error"].astype(bool).any():
        columns.append("error")
    table = ranked[columns]
    table.to_csv(root / "summary.csv", index=False)

    seeds = None
    if "seed" in varying:
        seeds = seed_table(runs, [k for k in varying if k != "seed"])

    lines = [
        f"# Summary of {root}",
        "",
        f"{len(runs)} runs ({status_counts(runs['status'])}); "
        f"sorted by final `{monitor}` ({'lowest' if mode == 'min' else 'highest'} first), "
        f"{' and '.join(USABLE)} runs first. Written {datetime.now():%Y-%m-%d %H:%M}.",
        "",
    ]
    if common:
        lines += [
            "Overrides shared by every run: " + " ".join(f"`{k}={v}`" for k, v in common.items()),
            "",
        ]
    lines += [markdown_table(table), ""]
    if seeds is not None:
        lines += [
            "## Mean ± std over seeds",
            "",
            f"Over the {' and '.join(USABLE)} runs only; `runs` says how many of the "
            "setting's runs that is, `left out` why the others are not in the mean.",
            "",
            markdown_table(seeds.drop(columns=["n", "of"])),
            "",
        ]
    (root / "summary.md").write_text("\n".join(lines))
    return {"runs": table, "seeds": seeds}


def _status_index(status: str) -> int:
    return STATUSES.index(status) if status in STATUSES else len(STATUSES)


SEED_METRICS = ("train/acc", "val/acc", "test/acc", "val/loss", "epochs", "seconds")


def seed_table(
    runs: "pd.DataFrame", by: list[str], metrics: Iterable[str] = SEED_METRICS
) -> "pd.DataFrame":
    """Per setting of `by` (runs that differ only in the seed, or in no key of `by`): mean ± std
    of each of `metrics` over its USABLE runs only.

    Columns: the keys of `by`; `runs`, "2 of 3" (usable runs of all the setting's runs);
    `left out`, the statuses of the others ("1 diverged", "" when none); `n` and `of` as
    numbers; then per metric "mean ± std" (4 decimals, 1 for epochs and seconds; "" when no
    run is usable, the std 0 for one run). This is the one rule of every mean in dltips.
    """
    import pandas as pd

    metrics = list(metrics)
    groups = runs.groupby(list(by), sort=False, dropna=False) if by else [((), runs)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        good = group[group["status"].isin(USABLE)]
        row = dict(zip(by, key))
        row["runs"] = f"{len(good)} of {len(group)}"
        row["left out"] = status_counts(group.loc[~group["status"].isin(USABLE), "status"])
        row["n"], row["of"] = len(good), len(group)
        for c in metrics:
            values = pd.to_numeric(good[c]).dropna()
            digits = 1 if c in ("epochs", "seconds") else 4
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            row[c] = f"{values.mean():.{digits}f} ± {std:.{digits}f}" if len(values) else ""
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
