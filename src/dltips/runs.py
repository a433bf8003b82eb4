"""The table of runs: every run dir under a folder, its settings and metrics, as one DataFrame."""

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

METRIC_COLUMNS = ["train/acc", "val/acc", "test/acc", "val/loss", "test/loss"]
DONE = ("completed", "diverged")  # statuses a resumed sweep does not run again
# overrides that say how to run, not what: never a column of the summary
NOT_SETTINGS = ("trainer.resume", "sweep.resume", "trainer.device", "trainer.num_threads")


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A run's metrics.json, or None when it has none (yet) or it cannot be read."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a run that completed or diverged; None if it must (re)run."""
    metrics = read_metrics(run_dir)
    return metrics if metrics and metrics.get("status") in DONE else None


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (o.split("=", 1) for o in OmegaConf.load(path) if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in NOT_SETTINGS}


def collect_runs(root: Path) -> pd.DataFrame:
    """One row per run dir under `root` (a dir with .hydra/ or metrics.json), any status."""
    root = Path(root)
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    dirs |= {p.parent for p in root.rglob("metrics.json")}
    rows = []
    for run_dir in sorted(dirs, key=lambda p: _natural_key(p.relative_to(root))):
        metrics = read_metrics(run_dir) or {}
        row = {"run": run_dir.relative_to(root).as_posix() or ".", **_overrides(run_dir)}
        row["status"] = metrics.get("status", "unfinished")
        row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
        row["best_epoch"] = metrics.get("best_epoch")
        row["epochs"] = metrics.get("epochs_trained")
        row["seconds"] = metrics.get("wall_seconds")
        row["error"] = metrics.get("error", "")
        rows.append(row)
    return pd.DataFrame(rows)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in path.parts]


def split_settings(runs: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """(override keys that vary between runs, override values that all runs share)."""
    fixed = {"run", "status", "best_epoch", "epochs", "seconds", "error", *METRIC_COLUMNS}
    keys = [c for c in runs.columns if c not in fixed]
    varying = [k for k in keys if runs[k].astype(str).nunique() > 1]
    common = {k: str(runs[k].iloc[0]) for k in keys if k not in varying}
    return varying, common


def summarize(root: Path, monitor: str = "val/loss", mode: str = "min") -> dict[str, Any]:
    """Write summary.csv and summary.md for the runs under `root`; return the tables."""
    root = Path(root)
    runs = collect_runs(root)
    if runs.empty:
        raise FileNotFoundError(f"No runs (folders with metrics.json or .hydra/) under {root}")
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


def seed_table(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean ± std of each metric over the seeds of every other combination of settings."""
    values = ["train/acc", "val/acc", "test/acc", "val/loss", "epochs", "seconds"]
    numeric = runs.assign(**{c: pd.to_numeric(runs[c]) for c in values})
    groups = numeric.groupby(by, sort=False) if by else [((), numeric)]
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


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a Markdown table: floats to `digits` places, NaN as an empty cell."""

    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    return table.map(cell).to_markdown(index=False, disable_numparse=True)
