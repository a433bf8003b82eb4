"""PNG comparisons of runs: learning curves and final metrics against swept values."""

import contextlib
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dltips.runs import (  # noqa: E402
    DONE,
    collect_runs,
    no_runs_message,
    read_metrics,
    split_settings,
)

DEFAULT = "(default)"  # how a plot shows a key that a run did not override


def _setting(value: object) -> str:
    return DEFAULT if pd.isna(value) else str(value)


def _label(row: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={_setting(row[k])}" for k in keys) or row["run"]


def _sort_values(values: pd.Series) -> list:
    """Swept values in a readable order: numerically when they are numbers, defaults first."""
    unique = list(dict.fromkeys(values.map(_setting)))
    given = [v for v in unique if v != DEFAULT]
    with contextlib.suppress(ValueError):  # not all numbers: keep the order of the runs
        given = sorted(given, key=float)
    return [DEFAULT] * (DEFAULT in unique) + given


def plot_curves(
    root: Path, runs: pd.DataFrame, keys: list[str], out: Path, metric: str = "val/acc"
) -> Path:
    """One line per run: `metric` per epoch, from each metrics.json's history."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for _, row in runs.iterrows():
        history = (read_metrics(root / row["run"]) or {}).get("history", [])
        if history:
            ax.plot(
                [h["epoch"] for h in history],
                [math.nan if h.get(metric) is None else h[metric] for h in history],
                marker=".",
                label=_label(row, keys),
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_against(
    runs: pd.DataFrame,
    key: str,
    others: list[str],
    out: Path,
    metrics: tuple[str, ...] = ("val/acc", "test/acc"),
) -> Path:
    """Final metrics against the values of one swept key; a line per setting of the others."""
    order = _sort_values(runs[key])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    groups = runs.groupby(others, sort=False, dropna=False) if others else [((), runs)]
    for ax, metric in zip(axes[0], metrics):
        for name, group in groups:
            name = name if isinstance(name, tuple) else (name,)
            values = pd.to_numeric(group[metric])
            means = values.groupby(group[key].map(_setting)).mean()
            ax.plot(
                range(len(order)),
                [means.get(v) for v in order],
                marker="o",
                label=" ".join(f"{k}={_setting(n)}" for k, n in zip(others, name)) or None,
            )
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize="small")
    fig.suptitle(f"final metrics against {key}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_sweep(root: Path, out_dir: Path | None = None) -> list[Path]:
    """curves.png and one <key>.png per swept key, for the finished runs under `root`.

    Runs with a damaged metrics.json are left out with a warning (see collect_runs).
    """
    root = Path(root)
    out_dir = Path(out_dir or root)
    runs = collect_runs(root)
    finished = runs[runs["status"].isin(DONE)] if not runs.empty else runs
    if finished.empty:
        raise FileNotFoundError(no_runs_message(root, runs, "finished runs (metrics.json)"))
    runs = finished
    out_dir.mkdir(parents=True, exist_ok=True)
    varying, _ = split_settings(runs)
    written = [plot_curves(root, runs, varying, out_dir / "curves.png")]
    for key in varying:
        others = [k for k in varying if k not in (key, "seed")]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        written.append(plot_against(runs, key, others, out_dir / f"{safe}.png"))
    return written
