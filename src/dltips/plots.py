"""PNG comparisons of runs: learning curves and final metrics against swept values.

Runs that differ only in `seed` are one setting: curves show their mean with a band from the
lowest to the highest seed, final metrics their mean ± std with every seed as a dot. A key that
a plot does not separate is named in its title, with what each line pools.
Means and lines pool the usable runs only (runs.USABLE: completed or stopped early).
Diverged runs are crosses and pruned trials triangles on the bottom edge of the axes, at the
epoch or setting where they ended and named in the legend: never left out, never drawn at a
height that reads as an accuracy, never stretching the y axis. A float key searched over many
values (an Optuna search) is one continuous axis, never a panel or a line per value; values
in labels are rounded to 4 significant digits. Accuracy axes span at least MIN_ACC_SPAN, so that a
difference within seed noise does not fill the panel; every line has its own marker shape,
and a line hidden under another says so in the legend.
"""

import contextlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dltips.runs import (
    DONE,
    USABLE,
    collect_runs,
    no_runs_message,
    read_metrics,
    split_settings,
    status_counts,
)

DEFAULT = "(default)"  # how a plot shows a key that a run did not override
TEST_ONLY = "data.test_noise_std"  # changes the test inputs only, never training or val
DIVERGED = {"marker": "X", "markersize": 9, "markeredgecolor": "tab:red", "linestyle": ""}
MIN_ACC_SPAN = 0.15  # an accuracy axis spans at least this: 0.01 is 1/15 of its height
PRUNED = {"marker": "v", "markersize": 8, "markeredgecolor": "dimgray", "linestyle": ""}
MARKERS = "osD^vP*<>h"  # one hollow shape per line: lines on top of each other still show
MAX_VALUES = 4  # a float key with more values than this is continuous: no panel or line each


def mark_diverged(ax, xs, label: str | None, color: object = "tab:red", note: bool = True) -> None:
    """Crosses on the bottom edge of `ax` at `xs` (epochs or settings) for diverged runs, each
    place with a red "diverged" above it (unless `note` is False).

    Their y is in axes units: no cross reads as a measured value or stretches the y axis.
    """
    xs = list(xs)
    ax.plot(
        xs,
        [0.0] * len(xs),
        transform=ax.get_xaxis_transform(),
        clip_on=False,
        zorder=6,
        markerfacecolor=color,
        label=label,
        gid="diverged",
        **DIVERGED,
    )
    for x in dict.fromkeys(xs) if note else ():
        ax.annotate(
            "diverged",
            (x, 0.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            va="bottom",
            color="tab:red",
            fontsize="small",
        )


def mark_pruned(ax, xs, label: str | None) -> None:
    """Grey triangles on the bottom edge of `ax` at `xs` (epochs or settings) for pruned
    trials: like diverged runs, their early-epoch values are no final result."""
    ax.plot(
        list(xs),
        [0.0] * len(list(xs)),
        transform=ax.get_xaxis_transform(),
        clip_on=False,
        zorder=6,
        markerfacecolor="lightgray",
        label=label,
        gid="pruned",
        **PRUNED,
    )


def room_for_diverged(ax) -> None:
    """Lower the y axis by a strip below the data where `ax` marks diverged or pruned runs,
    so that their marks and notes on the bottom edge sit apart from every measured value."""
    if any(line.get_gid() in ("diverged", "pruned") for line in ax.lines):
        low, high = ax.get_ylim()
        ax.set_ylim(low - 0.12 * (high - low), high)


def widen_y(ax, span: float = MIN_ACC_SPAN) -> None:
    """At least `span` of y for an accuracy axis, within [0, 1] where the data allow."""
    low, high = ax.get_ylim()
    if high - low >= span:
        return
    middle = (low + high) / 2
    bottom = min(max(middle - span / 2, min(0.0, low)), max(1.0, high) - span)
    ax.set_ylim(bottom, bottom + span)


def _setting(value: object) -> str:
    return DEFAULT if pd.isna(value) else str(value)


def show_value(value: object) -> str:
    """A swept value as a label shows it: a float to 4 significant digits (0.0001235)."""
    text = _setting(value)
    if "." in text or "e" in text.lower():
        with contextlib.suppress(ValueError):
            return f"{float(text):.4g}"
    return text


def short_label(key: str, value: object) -> str:
    """`depth=4` for model.depth=4: the last part of the key is enough in a legend."""
    return f"{key.rsplit('.', 1)[-1]}={show_value(value)}"


def is_continuous(values: pd.Series) -> bool:
    """Whether a swept key is a float searched over many values (an Optuna search's lr):
    one axis for it, never a panel or a line per value."""
    if not is_numeric(values):
        return False
    unique = set(values.map(_setting)) - {DEFAULT}
    floats = any(float(v) != int(float(v)) for v in unique if math.isfinite(float(v)))
    return floats and len(unique) > MAX_VALUES


def usable(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose final metrics are a result of their setting (runs.USABLE)."""
    return runs[runs["status"].isin(USABLE)]


def _sort_values(values: pd.Series) -> list:
    """Swept values in a readable order: numerically when they are numbers, defaults first."""
    unique = list(dict.fromkeys(values.map(_setting)))
    given = [v for v in unique if v != DEFAULT]
    with contextlib.suppress(ValueError):  # not all numbers: keep the order of the runs
        given = sorted(given, key=float)
    return [DEFAULT] * (DEFAULT in unique) + given


def is_numeric(values: pd.Series) -> bool:
    """Whether a swept key's values are all numbers (a line plot) or not (points per category)."""
    try:
        [float(v) for v in values.map(_setting)]
    except ValueError:
        return False
    return True


def settings_groups(runs: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """[(setting, its runs)]: runs that differ only in `seed` are one setting."""
    keys = [k for k in keys if k != "seed"]
    if not keys:
        return [({}, runs)]
    labels = runs[keys].map(_setting)
    return [  # grouped by a list, each name is a tuple
        (dict(zip(keys, name)), runs.loc[group.index])
        for name, group in labels.groupby(keys, sort=False)
    ]


def diverged_note(group: pd.DataFrame) -> str:
    """'diverged at epoch 1 (3 of 3 seeds)', or '' when no run of the setting diverged."""
    bad = group[group["status"] == "diverged"]
    if bad.empty:
        return ""
    epochs = sorted({int(e) + 1 for e in bad["epochs"].fillna(0)})
    at = ", ".join(map(str, epochs))
    return f"diverged at epoch {at} ({len(bad)} of {len(group)} seeds)"


def history_frame(run_dir: Path) -> pd.DataFrame:
    """A run's per-epoch history from its metrics.json, one row per epoch (maybe empty)."""
    history = (read_metrics(run_dir) or {}).get("history", [])
    return pd.DataFrame(history, dtype=float)


def _mean_curve(root: Path, group: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per epoch: mean, min, max and count of `metric` over the group's runs (their seeds)."""
    columns = {}
    for run in usable(group)["run"]:
        history = history_frame(root / run)
        if metric in history:
            columns[run] = history.set_index("epoch")[metric]
    if not columns:
        return pd.DataFrame(columns=["mean", "min", "max", "n"])
    table = pd.DataFrame(columns)
    return pd.DataFrame(
        {
            "mean": table.mean(axis=1),
            "min": table.min(axis=1),
            "max": table.max(axis=1),
            "n": table.count(axis=1),
        }
    )


def _fewer_runs(curve: pd.DataFrame, runs: int) -> str:
    """' (from epoch 6: mean of 2 runs)' where runs ended (diverged or stopped) before others."""
    short = curve[curve["n"] < runs]
    if short.empty:
        return ""
    counts = " then ".join(str(n) for n in dict.fromkeys(short["n"].astype(int)))
    return f" (from epoch {int(short.index[0])}: mean of {counts} of {runs} runs)"


def _draw_curves(ax, root: Path, groups: list, metric: str, label_keys: list[str]) -> list:
    """A mean line per setting, each its own colour and hollow marker; [(name, line, mean)]."""
    drawn = []
    for i, (color, (setting, group)) in enumerate(zip(_colors(len(groups)), groups)):
        name = " ".join(short_label(k, setting[k]) for k in label_keys) or "run"
        curve = _mean_curve(root, group, metric)
        if not curve.empty:
            (line,) = ax.plot(
                curve.index,
                curve["mean"],
                marker=MARKERS[i % len(MARKERS)],
                markersize=5,
                markerfacecolor="none",
                color=color,
                label=name + _fewer_runs(curve, len(group)),
            )
            if curve["n"].max() > 1:
                ax.fill_between(curve.index, curve["min"], curve["max"], color=color, alpha=0.2)
            drawn.append((name, line, curve["mean"]))
        bad = group[group["status"] == "diverged"]
        if not bad.empty:  # in the epoch it diverged in: it has no accuracy there
            epochs = bad["epochs"].fillna(0).astype(int) + 1
            face = color if not curve.empty else "tab:red"  # its line's colour, if it has one
            mark_diverged(ax, epochs, f"{name}: {diverged_note(group)}", face)
        pruned = group[group["status"] == "pruned"]
        if not pruned.empty:  # at the last epoch it trained; one legend entry for them all
            mark_pruned(ax, pruned["epochs"].fillna(0).astype(int), _pruned_label(ax))
    return drawn


def _pruned_label(ax) -> str | None:
    """The legend's one entry for pruned trials: on their first mark in `ax`, else none."""
    if any(line.get_gid() == "pruned" for line in ax.lines):
        return None
    return "pruned (where it stopped; no final result)"


def note_overlaps(ax, drawn: list) -> None:
    """Name, in the legend, a line that lies on top of an earlier one over every epoch."""
    low, high = ax.get_ylim()
    for j, (_, line, mean) in enumerate(drawn):
        for name, _, other in drawn[:j]:
            if mean.index.equals(other.index) and (mean - other).abs().max() <= 0.01 * (high - low):
                line.set_label(f"{line.get_label()} (on top of {name})")
                break


def _colors(n: int) -> list:
    """Distinct colours for n lines: tab10, or a sequence of viridis beyond ten."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def plot_curves(
    root: Path, runs: pd.DataFrame, keys: list[str], out: Path, metric: str = "val/acc"
) -> Path:
    """curves_figure() as a PNG."""
    curves_figure(root, runs, keys, metric).savefig(out, dpi=110)
    return out


def curves_figure(
    root: Path, runs: pd.DataFrame, keys: list[str], metric: str = "val/acc"
) -> Figure:
    """`metric` per epoch, a line per setting of `keys` (mean over seeds, band from min to
    max); the title names any other swept key whose runs a line pools.

    With two or more swept keys besides the seed, one panel per value of the first.
    """
    keys = [k for k in keys if k != "seed"]
    discrete = [k for k in keys if not is_continuous(runs[k])]
    panel_key = discrete[0] if len(keys) >= 2 and discrete else None
    panels = (
        [
            (f"{panel_key}={show_value(v)}", runs[runs[panel_key].map(_setting) == v])
            for v in _sort_values(runs[panel_key])
        ]
        if panel_key
        else [("", runs)]
    )
    label_keys = [k for k in keys if k != panel_key]
    fig = Figure(figsize=(min(5.5 * len(panels), 16.5), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    drawn = [
        _draw_curves(ax, root, settings_groups(panel, label_keys), metric, label_keys)
        for ax, (_, panel) in zip(axes, panels)
    ]
    if metric.endswith("acc"):  # the y axis is shared: its final limits, then the overlaps
        widen_y(axes[0])
    marked = [
        ax for ax in axes if any(line.get_gid() in ("diverged", "pruned") for line in ax.lines)
    ]
    if marked:
        room_for_diverged(marked[0])
    for ax, (title, _), lines in zip(axes, panels, drawn):
        note_overlaps(ax, lines)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel(metric)
    fig.suptitle(f"{metric} per epoch{_curves_note(runs, keys, metric)}{left_out_note(runs)}")
    return fig


def _curves_note(runs: pd.DataFrame, keys: list[str], metric: str) -> str:
    """What each line averages: its seeds, and any swept key the lines do not separate."""
    seeds = runs["seed"].nunique() if "seed" in runs else 1
    varying, _ = split_settings(runs.drop(columns=["path"], errors="ignore"))
    pooled = [k for k in varying if k not in (*keys, "seed")]
    if not pooled:
        if seeds <= 1:
            return " (one seed)"
        return f" (mean of {seeds} seeds; band: lowest to highest seed)"
    sizes = sorted({len(g) for _, g in settings_groups(runs, keys)})
    n = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    values = "; ".join(f"{k}={values_text(runs[k])}" for k in pooled)
    why = ""
    if pooled == [TEST_ONLY] and not metric.startswith("test/"):
        why = f"\n(test noise changes only the test inputs, not {metric})"
    lines = f"each line: mean of {n} runs, {seeds} seeds x {values};{why}"
    return f"\n{lines}\nband: lowest to highest run"


def values_text(values: pd.Series) -> str:
    """A swept key's values for a title: '0.1, 1' or, for many, '20 values from 0.0001 to 0.1'."""
    order = [show_value(v) for v in _sort_values(values)]
    if len(order) <= MAX_VALUES:
        return ", ".join(order)
    return f"{len(order)} values from {order[0]} to {order[-1]}"


def seed_stats(runs: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Per setting of `keys` (seeds pooled): mean, std and n of `metric` over its usable runs
    (runs.USABLE), its count of runs and of diverged ones."""
    rows = []
    for setting, group in settings_groups(runs, keys):
        values = pd.to_numeric(usable(group)[metric]).dropna()
        rows.append(
            {
                **setting,
                "mean": values.mean(),
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "n": len(values),
                "of": len(group),
                "diverged": int((group["status"] == "diverged").sum()),
                "values": list(values),
            }
        )
    return pd.DataFrame(rows)


def _x_scale(ax, xs: list[float]) -> str:
    """Log (or symlog, with 0) for values spanning more than two decades, else linear;
    what the axis label should add."""
    positive = [x for x in xs if x > 0]
    if len(positive) < 2 or max(positive) / min(positive) < 100:
        return ""
    if min(xs) <= 0:
        ax.set_xscale("symlog", linthresh=min(positive))
        return " (log scale, and 0)"
    ax.set_xscale("log")
    return " (log scale)"


def plot_against(
    runs: pd.DataFrame,
    key: str,
    others: list[str],
    out: Path,
    metrics: tuple[str, ...] = ("val/acc", "test/acc"),
) -> Path:
    """against_figure() as a PNG."""
    against_figure(runs, key, others, metrics).savefig(out, dpi=110)
    return out


def against_figure(
    runs: pd.DataFrame,
    key: str,
    others: list[str],
    metrics: tuple[str, ...] = ("val/acc", "test/acc"),
) -> Figure:
    """Final metrics against one swept key: mean ± std over seeds, every seed a dot.

    A numeric key gets lines over its values; a categorical key gets points with error bars
    (no line: the categories have no order). A line or a set of points per setting of the
    other keys. Diverged runs are crosses on the bottom edge, named in the legend and left
    out of the mean ± std (a diverged run's weights are not a result of its setting).
    """
    others = [k for k in others if k not in (key, "seed")]
    # a continuous other key (an Optuna search's) is no line per value: its runs are points
    pooled = [k for k in others if is_continuous(runs[k])]
    others = [k for k in others if k not in pooled]
    order = _sort_values(runs[key])
    numeric = is_numeric(runs[key])
    continuous = is_continuous(runs[key])
    groups = settings_groups(runs, others)
    shown_values = min(len(order), 6) if continuous else len(order)
    width = max(5.0, 0.9 * shown_values * max(1, len(groups)) ** 0.5 + 1.5)
    fig = Figure(figsize=(min(width * len(metrics), 16), 4.5), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        shown, pool = others, runs
        if not metric.startswith("test/") and TEST_ONLY in others:
            # test noise changes no train or val metric: the runs of one test noise, not
            # several lines of the same trainings drawn over each other
            shown = [k for k in others if k != TEST_ONLY]
            first = _sort_values(runs[TEST_ONLY])[0]
            pool = runs[runs[TEST_ONLY].map(_setting) == first]
            ax.set_title(
                f"runs with {short_label(TEST_ONLY, first)}: test noise changes no {metric}",
                fontsize="small",
            )
        groups = settings_groups(pool, shown)
        colors = _colors(len(groups))
        for i, (color, (setting, group)) in enumerate(zip(colors, groups)):
            if numeric:
                shift = 0.0
            else:  # side by side when several settings share a category
                shift = (i - (len(groups) - 1) / 2) * min(0.6 / max(len(groups), 1), 0.15)
            label = " ".join(short_label(k, setting[k]) for k in shown) or None
            good = usable(group)  # a diverged run's or a pruned trial's value is no result
            if not good.empty:
                stats = (
                    seed_stats(good, [key], metric)
                    .set_index(key)
                    .reindex(order)
                    .dropna(subset=["n"])
                )
                xs = [float(v) if numeric else order.index(v) + shift for v in stats.index]
                ax.errorbar(
                    xs,
                    stats["mean"],
                    yerr=stats["std"].fillna(0),
                    fmt="o-" if numeric and not (continuous or pooled) else "o",
                    color=color,
                    capsize=4,
                    label=label,
                )
                for x, (_, row) in zip(xs, stats.iterrows()):  # each seed, slightly spread
                    spread = np.linspace(-1, 1, len(row["values"])) * (0 if numeric else 0.04)
                    ax.scatter(x + spread, row["values"], s=10, color=color, alpha=0.5, zorder=3)
            for value in _sort_values(group[key]):
                at = group[group[key].map(_setting) == value]
                note = diverged_note(at)
                if note:
                    x = float(value) if numeric else order.index(value) + shift
                    where = " ".join(filter(None, [label, short_label(key, value)]))
                    face = color if len(groups) > 1 else "tab:red"
                    n_bad = int((at["status"] == "diverged").sum())
                    mark_diverged(ax, [x] * n_bad, f"{where}: {note}", face)
            pruned = group[group["status"] == "pruned"]
            if not pruned.empty:
                xs = [
                    float(v) if numeric else order.index(_setting(v)) + shift
                    for v in pruned[key].map(_setting)
                ]
                mark_pruned(ax, xs, _pruned_label(ax))
        scale = ""
        labels = [show_value(v) for v in order]
        if numeric:
            scale = _x_scale(ax, [float(v) for v in order])
            if not continuous:  # a tick per value; a continuous key keeps the axis' own ticks
                ax.set_xticks([float(v) for v in order], labels)
                ax.minorticks_off()
        else:
            ax.set_xticks(range(len(order)), labels)
            ax.set_xlim(-0.5, len(order) - 0.5)
        long = not continuous and sum(len(v) for v in labels) > 5 * width
        if long:
            ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(key + scale)
        ax.set_ylabel(f"final {metric}")
        if metric.endswith("acc"):
            widen_y(ax)
        room_for_diverged(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    note = _stats_note(runs)
    if pooled:
        note += f"\n(points of all values of {', '.join(pooled)}: a point per run)"
    fig.suptitle(f"final metrics against {key}{note}")
    return fig


def left_out_note(runs: pd.DataFrame) -> str:
    """'\nleft out of the means: 1 diverged, 2 pruned', or '' when every run is usable."""
    bad = runs.loc[~runs["status"].isin(USABLE), "status"]
    return f"\nleft out of the means: {status_counts(bad)}" if len(bad) else ""


def _stats_note(runs: pd.DataFrame) -> str:
    seeds = runs["seed"].nunique() if "seed" in runs else 1
    note = (
        " (one seed: no error bars)"
        if seeds <= 1
        else f": mean ± std of {seeds} seeds, dots are single seeds"
    )
    left_out = [s for s in ("diverged", "pruned") if (runs["status"] == s).any()]
    if left_out:
        marks = {"diverged": "crosses", "pruned": "triangles"}
        how = ", ".join(f"{s} runs: {marks[s]}" for s in left_out)
        note += f"\n({how} on the bottom edge)"
    return note + left_out_note(runs)


def plot_sweep(root: Path, out_dir: Path | None = None) -> list[Path]:
    """curves.png and one <key>.png per swept key, for the runs under `root` (at least one
    finished).

    Runs with a damaged metrics.json are left out with a warning (see collect_runs).
    """
    root = Path(root)
    out_dir = Path(out_dir or root)
    runs = collect_runs(root)
    if runs.empty or not runs["status"].isin(DONE).any():
        raise FileNotFoundError(no_runs_message(root, runs, "finished runs (metrics.json)"))
    # failed and unfinished runs too: drawn nowhere, but counted in the titles' "left out"
    out_dir.mkdir(parents=True, exist_ok=True)
    varying, _ = split_settings(runs)
    written = [plot_curves(root, runs, varying, out_dir / "curves.png")]
    for key in (k for k in varying if k != "seed"):
        others = [k for k in varying if k not in (key, "seed")]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        written.append(plot_against(runs, key, others, out_dir / f"{safe}.png"))
    return written
