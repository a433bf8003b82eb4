"""The tips, measured: run the lecture and tips presets as sweeps and write docs/RESULTS.md.

Every section runs each setting with several seeds (SEEDS) through the batched launcher, which
trains the runs that share a network shape together. Tables and plots show mean ± std over
the seeds, and the measured sentences under each plot say only what the error bars allow.
"""

import math
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf

from dltips.plots import (
    MIN_ACC_SPAN,
    TEST_ONLY,
    diverged_note,
    history_frame,
    mark_diverged,
    plot_against,
    plot_curves,
    seed_stats,
    settings_groups,
    short_label,
)
from dltips.runs import DONE, collect_runs, markdown_table, read_metrics, split_settings

ROOT = Path(__file__).resolve().parents[2]
# docs/RESULTS.md and its hand-written notes are about this run, the full report (make report)
DOCS_PAGE = ROOT / "docs" / "RESULTS.md"
FULL_REPORT = "python scripts/report.py --data fashion_mnist"
FULL_REPORT_DATA = "fashion_mnist"
SEEDS = "seed=0,1,2"  # every setting of every section, for mean ± std
BATCHED = "hydra/launcher=batched"  # runs of one network shape train together
# the lecture's steps; each preset's `lecture:` block holds its change and published numbers
LECTURE_PRESETS = sorted(
    (ROOT / "conf" / "experiment" / "lecture").glob("step*.yaml"), key=lambda p: int(p.stem[4:])
)


def lecture_preset(experiment: str) -> dict:
    """{'change': ..., 'published': {'train/acc': ..., 'test/acc': ...}} of a lecture preset,
    read from its file (conf/experiment/<experiment>.yaml), the one place those numbers live."""
    block = OmegaConf.load(ROOT / "conf" / "experiment" / f"{experiment}.yaml").get("lecture")
    return OmegaConf.to_container(block) if block is not None else {}


@dataclass
class Section:
    """One tip: the presets it runs as one multirun, and what to show of it."""

    name: str
    title: str
    about: str
    overrides: list[str]
    plot_keys: list[str] = field(default_factory=list)  # final metrics against these keys
    grad_norms: bool = False  # per-layer gradient norms of the first epoch
    curves: str = "val/acc"  # per-epoch plot: a metric, or "lecture" / "early_stopping"
    launcher: str = BATCHED  # how the sweep's jobs run


SECTIONS = {
    s.name: s
    for s in [
        Section(
            "lecture",
            "The lecture's demo, step by step",
            "Each step changes one thing from the one before (conf/experiment/lecture/).",
            ["experiment=" + ",".join(f"lecture/{p.stem}" for p in LECTURE_PRESETS)],
            curves="lecture",
        ),
        Section(
            "depth",
            "Depth and the activation function",
            "1 to 10 hidden layers of 128 units, SGD lr 0.1; sigmoid, ReLU and maxout.",
            ["experiment=tips/depth"],
            plot_keys=["model.depth"],
            grad_norms=True,
        ),
        Section(
            "optimizers",
            "Optimizers",
            "2 x 128 ReLU units, batch 100, 5 epochs; each optimizer with its usual lr.",
            ["experiment=tips/optimizers"],
            plot_keys=["optim"],
        ),
        Section(
            "batch_size",
            "Batch size",
            "2 x 128 ReLU units, Adam, 5 epochs: accuracy and seconds per epoch.",
            ["experiment=tips/batch_size"],
            plot_keys=["data.batch_size"],
        ),
        Section(
            "loss",
            "Mean squared error vs cross-entropy",
            "3 x 128 units, SGD lr 0.1, 10 epochs.",
            ["experiment=tips/loss"],
            plot_keys=["loss"],
        ),
        Section(
            "normalize",
            "Input normalization",
            "3 x 128 ReLU units, SGD lr 0.1, 10 epochs.",
            ["experiment=tips/normalize"],
            plot_keys=["data.normalize"],
        ),
        Section(
            "early_stopping",
            "Early stopping",
            "2 x 512 ReLU units, Adam, 2,000 training images, up to 50 epochs.",
            ["experiment=tips/early_stopping"],
            curves="early_stopping",
        ),
        Section(
            "weight_decay",
            "L2 regularization (weight decay)",
            "2 x 512 ReLU units, SGD with momentum, 2,000 training images, 30 epochs.",
            ["experiment=tips/weight_decay"],
            plot_keys=["optim.weight_decay"],
        ),
        Section(
            "l1",
            "L1 regularization",
            "2 x 512 ReLU units, SGD with momentum, 2,000 training images, 30 epochs.",
            ["experiment=tips/l1"],
            plot_keys=["loss.l1"],
        ),
        Section(
            "dropout",
            "Dropout, on clean and noisy test inputs",
            "3 x 512 ReLU units, Adam, 20 epochs; test noise std 0 or 1.",
            ["experiment=tips/dropout"],
            plot_keys=["model.dropout"],
        ),
    ]
}


def default_runs_dir(data: str | None, sets: list[str]) -> Path:
    """outputs/report/<data>, plus the --set overrides in the name: sweeps made with other
    settings never resume into the full report's, nor get reported as them."""
    name = "-".join([data or "mnist", *sets])
    return Path("outputs/report") / re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def report_page(sections: list[str], data: str | None, sets: list[str], runs_dir: Path) -> Path:
    """Where a report's page goes unless --out says: docs/RESULTS.md for the full report
    (every section, --data fashion_mnist, no --set, the default runs dir), else RESULTS.md
    in the runs dir, so a quick look never replaces the documented results."""
    full = (
        set(sections) == set(SECTIONS)
        and data == FULL_REPORT_DATA
        and not sets
        and runs_dir.resolve() == default_runs_dir(data, sets).resolve()
    )
    return DOCS_PAGE if full else runs_dir / "RESULTS.md"


def images_dir(page: Path) -> Path:
    """The page's own folder of PNGs, named after it: docs/RESULTS.md -> docs/results/."""
    return page.parent / page.stem.lower()


def section_overrides(section: Section, extra: list[str]) -> list[str]:
    """The section's sweep: its presets, the seeds and the batched launcher, then `extra`.

    A `seed=` or `hydra/launcher=` in `extra` (from --set) replaces the report's own.
    """
    own = [SEEDS, section.launcher]
    own = [o for o in own if not any(e.startswith(o.split("=")[0] + "=") for e in extra)]
    return [*section.overrides, *own, *extra]


def run_section(section: Section, sweep_dir: Path, extra: list[str]) -> None:
    """Run a section's presets as one Hydra multirun into `sweep_dir` (finished jobs kept)."""
    resume = [f"sweep.resume={sweep_dir}"] if sweep_dir.is_dir() else []
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        *section_overrides(section, extra),
        f"hydra.sweep.dir={sweep_dir}",
        *resume,
    ]
    print(f"[report] {section.name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)


def mean_std(values: pd.Series, digits: int = 3) -> str:
    """'0.855 ± 0.004' over seeds; the value alone for one run."""
    values = pd.to_numeric(values).dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def status_cell(group: pd.DataFrame) -> str:
    """'completed', or each status with its count: '**diverged** (3 of 3 seeds)'."""
    counts = group["status"].value_counts()
    if list(counts.index) == ["completed"]:
        return "completed"
    return ", ".join(
        f"{'**diverged**' if s == 'diverged' else s} ({n} of {len(group)} seeds)"
        for s, n in counts.items()
    )


def _seconds_per_epoch(run_dir: Path) -> float | None:
    """One run's share of an epoch: a batched group's epoch time divided by its runs."""
    metrics = read_metrics(run_dir) or {}
    seconds = metrics.get("seconds_per_epoch")
    if seconds is None:
        return None
    return seconds / (metrics.get("batch") or {}).get("members", 1)


def varying_settings(runs: pd.DataFrame) -> list[str]:
    """The keys that differ between the runs, without the seed (which the tables pool)."""
    varying, _ = split_settings(runs.drop(columns="path"))
    return [k for k in varying if k != "seed"]


def section_table(section: Section, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: its seeds, status, train / val / test accuracy as mean ± std,
    epochs and seconds per epoch; the lecture's steps with their change and published numbers."""
    rows = []
    for setting, group in settings_groups(runs, varying_settings(runs)):
        row = dict(setting)
        if section.name == "lecture":  # the step's number and change instead of its preset name
            experiment = str(group["experiment"].iloc[0])
            preset = lecture_preset(experiment)
            row = {"step": int(experiment.rsplit("step", 1)[-1]), "change": preset.get("change")}
        row["seeds"] = len(group)
        row["status"] = status_cell(group)
        for metric in ("train/acc", "val/acc", "test/acc"):
            row[metric] = mean_std(group[metric])
        epochs = group["epochs"].dropna().astype(int)
        row["epochs"] = (
            f"{epochs.min()}" if epochs.min() == epochs.max() else f"{epochs.min()}-{epochs.max()}"
        )
        seconds = pd.Series([_seconds_per_epoch(Path(r)) for r in group["path"]], dtype=float)
        row["s/epoch"] = f"{seconds.mean():.3f}" if seconds.notna().any() else ""
        if section.name == "lecture":
            published = preset.get("published", {})
            row["published train/acc"] = published.get("train/acc")
            row["published test/acc"] = published.get("test/acc")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("step") if section.name == "lecture" else table


def compare(runs: pd.DataFrame, key: str, others: list[str], metric: str = "test/acc") -> list[str]:
    """Sentences ranking the values of `key` by mean `metric` that the error bars allow.

    Two settings are told apart only when their mean ± std intervals do not overlap;
    otherwise they are "within seed noise" of each other. One per setting of `others`.
    """
    sentences = []
    for setting, group in settings_groups(runs, others):
        where = ", ".join(short_label(k, v) for k, v in setting.items())
        stats = seed_stats(group, [key], metric)
        diverged = stats[stats["diverged"] > 0]
        fine = stats[stats["diverged"] == 0].sort_values("mean", ascending=False)
        prefix = f"With {where}: " if where else ""
        if fine.empty:
            sentences.append(f"{prefix}every setting diverged.")
            continue
        if fine["n"].min() < 2:
            sentences.append(f"{prefix}one seed per setting: no error bars, no ranking.")
            continue
        best = fine.iloc[0]
        rest = fine.iloc[1:]
        close = rest[rest["mean"] + rest["std"] >= best["mean"] - best["std"]]
        below = rest.drop(close.index)
        text = f"{prefix}highest mean {metric}: {_interval(best, key)}"
        if rest.empty:
            text += "."
        elif close.empty:
            text += ", above every other setting by more than the seed noise."
        elif below.empty:
            text += "; every other setting is within seed noise of it: " + _join(close, key) + "."
        else:
            text += "; within seed noise of it: " + _join(close, key)
            text += "; below it by more than the seed noise: " + _join(below, key) + "."
        if not diverged.empty:
            text += (
                " Diverged: "
                + ", ".join(
                    f"{short_label(key, r[key])} ({r['diverged']} of {r['n']} seeds)"
                    for _, r in diverged.iterrows()
                )
                + "."
            )
        sentences.append(text)
    return sentences


def _join(rows: pd.DataFrame, key: str) -> str:
    return ", ".join(_interval(r, key) for _, r in rows.iterrows())


def _interval(row: pd.Series, key: str) -> str:
    return f"{short_label(key, row[key])} ({row['mean']:.3f} ± {row['std']:.3f})"


def compare_settings(runs: pd.DataFrame, keys: list[str], metric: str = "test/acc") -> list[str]:
    """compare() over the combinations of several keys, as one categorical key."""
    combined = runs.assign(
        setting=[" ".join(short_label(k, row[k]) for k in keys) for _, row in runs.iterrows()]
    )
    return [s.replace("setting=", "") for s in compare(combined, "setting", [], metric)]


def plot_grad_norms(runs: pd.DataFrame, out: Path) -> Path:
    """grad_norms_figure() as a PNG."""
    grad_norms_figure(runs).savefig(out, dpi=110)
    return out


def grad_norms_figure(runs: pd.DataFrame) -> Figure:
    """Mean gradient norm of each layer in the first epoch, for the deepest network of each
    activation (mean over seeds, bars from the lowest to the highest seed): vanishing
    gradients show as a steep slope towards the input."""
    depth = runs["model.depth"].astype(int)
    deepest = runs[depth == depth.max()]
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for setting, group in settings_groups(deepest, ["model"]):
        firsts = pd.DataFrame([history_frame(Path(r)).iloc[0] for r in group["path"]])
        names = [k for k in firsts if k.startswith("grad_norm/")]
        mean = firsts[names].mean()
        error = [mean - firsts[names].min(), firsts[names].max() - mean]
        ax.errorbar(
            range(1, len(names) + 1),
            mean,
            yerr=error,
            marker="o",
            capsize=3,
            label=setting["model"],
        )
        ax.set_xticks(range(1, len(names) + 1), [n.split("/")[1] for n in names], rotation=45)
    ax.set_yscale("log")
    ax.set_ylabel("mean gradient norm, epoch 1")
    seeds = deepest["seed"].nunique() if "seed" in deepest else 1
    ax.set_title(
        f"Gradient norm per layer, {depth.max()} hidden layers\n"
        f"(mean of {seeds} seeds, bars: lowest to highest seed)"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_lecture(runs: pd.DataFrame, out: Path) -> Path:
    """lecture_figure() as a PNG."""
    lecture_figure(runs).savefig(out, dpi=110)
    return out


def lecture_figure(runs: pd.DataFrame) -> Figure:
    """One panel per step, titled by what it changes: train accuracy during training and val
    accuracy per epoch (mean over seeds, band from lowest to highest), the final test accuracy
    as mean ± std, and a cross on the bottom edge in the epoch where a run diverged."""
    steps = sorted(
        settings_groups(runs, ["experiment"]), key=lambda g: int(g[0]["experiment"][12:])
    )
    cols = 3
    rows = math.ceil(len(steps) / cols)
    fig = Figure(figsize=(12, 3.2 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    # the final test accuracy stands apart from the last epoch, labelled "test"
    last = max((len(history_frame(Path(r))) for r in runs["path"]), default=1)
    gap = max(2, math.ceil(0.15 * last))
    test_x = last + gap
    curves = {  # the per-epoch train/acc counts the epoch's batches in train mode (dropout on)
        "train/acc": ("--", "tab:gray", "train/acc during the epoch (train mode)"),
        "val/acc": ("-", "tab:blue", "val/acc after each epoch"),
    }
    for ax, (setting, group) in zip(axes, steps):
        experiment = setting["experiment"]
        ax.set_title(f"step {experiment[12:]}: {lecture_preset(experiment).get('change', '')}")
        for metric, (style, color, label) in curves.items():
            table = pd.DataFrame(
                {
                    r: history_frame(Path(r)).set_index("epoch")[metric]
                    for r in group["path"]
                    if metric in history_frame(Path(r))
                }
            )
            if table.empty:
                continue
            ax.plot(table.index, table.mean(axis=1), style, color=color, label=label)
            ax.fill_between(
                table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2
            )
        ax.axvline(last + gap / 2, color="0.6", linewidth=0.8)
        test = pd.to_numeric(group.loc[group["status"] != "diverged", "test/acc"])
        if not test.empty:  # a diverged run's test/acc is no result of its step
            ax.errorbar(
                [test_x],
                [test.mean()],
                yerr=[test.std(ddof=1) if len(test) > 1 else 0],
                fmt="o",
                color="tab:orange",
                capsize=4,
                label="final test/acc (error bar: ± std of seeds)",
            )
        note = diverged_note(group)
        if note:
            bad = group[group["status"] == "diverged"]
            epochs = bad["epochs"].fillna(0).astype(int) + 1
            mark_diverged(ax, epochs, "diverged (in that epoch; no accuracy)", note=False)
            ax.text(
                0.5,
                0.5,
                note.replace(" (", "\n("),
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="tab:red",
                fontsize="large",
            )
        ax.set_ylim(0, 1)
        epochs = MaxNLocator(nbins=5, integer=True).tick_values(1, last)
        ticks = [e for e in epochs if 1 <= e < last - gap] + [last, test_x]
        ax.set_xticks(ticks, [f"{e:.0f}" for e in ticks[:-1]] + ["test"])
        ax.set_xlim(0.5, test_x + 1)
        ax.grid(alpha=0.3)
    for ax in axes[len(steps) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.set_xlabel("epoch")
    for ax in axes[::cols]:
        ax.set_ylabel("accuracy")
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        ncols=min(len(handles), 3),
        fontsize="small",
    )
    seeds = runs["seed"].nunique() if "seed" in runs else 1
    fig.suptitle(
        f"The lecture's steps: accuracy per epoch (lines: mean of {seeds} seeds, bands: lowest "
        "to highest seed)"
    )
    return fig


def plot_early_stopping(runs: pd.DataFrame, out: Path) -> Path:
    """early_stopping_figure() as a PNG."""
    early_stopping_figure(runs).savefig(out, dpi=110)
    return out


def early_stopping_figure(runs: pd.DataFrame) -> Figure:
    """Train and val loss per epoch, one panel per patience, one colour per seed: where the
    val loss turns up (overfitting); under it a row per seed with its best epoch, whose
    weights restore_best reports (*), and the last epoch it trained (|). restore_best changes
    only the reported weights, so the panels show its restore_best=False runs. Every panel
    spans the same epochs."""
    key = "trainer.early_stopping.patience"
    restore = "trainer.early_stopping.restore_best"
    panels = settings_groups(runs, [key])
    fig = Figure(figsize=(6 * len(panels), 6), layout="constrained")
    curves, stops = fig.subplots(
        2, len(panels), sharex=True, sharey="row", squeeze=False, height_ratios=[4, 1.3]
    )
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for ax, strip, (setting, group) in zip(curves, stops, panels):
        patience = setting[key]
        if restore in group:  # False sorts first: the run that reports its last weights
            group = group.sort_values(restore, key=lambda v: v.astype(str))
        first = group.drop_duplicates("seed") if "seed" in group else group.head(1)
        names = []
        for i, (_, row) in enumerate(first.iterrows()):
            color = colors[i % len(colors)]
            history = history_frame(Path(row["path"])).set_index("epoch")
            seed = row.get("seed", "0")
            names.append(f"seed {seed}")
            ax.plot(history.index, history["train/loss"], ":", color=color)
            ax.plot(history.index, history["val/loss"], "-", color=color, label=f"seed {seed}")
            stop = int(history.index.max())
            strip.plot([1, stop], [i, i], "-", color=color, linewidth=1, alpha=0.6)
            strip.plot(
                int(row["best_epoch"]),
                i,
                "*",
                color=color,
                markersize=13,
                markeredgecolor="black",
                markeredgewidth=0.6,
            )
            strip.plot(stop, i, "|", color=color, markersize=14, markeredgewidth=2.5)
        title = "no early stopping" if patience in ("null", "None") else f"patience {patience}"
        stopped = first["epochs"].astype(int)
        ax.set_title(
            f"{title}: {stopped.min()}-{stopped.max()} epochs"
            if stopped.min() != stopped.max()
            else f"{title}: {stopped.min()} epochs"
        )
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        strip.set_yticks(range(len(names)), names)
        strip.set_ylim(len(names) - 0.4, -0.6)  # seed 0 on top
        strip.set_xlabel("epoch")
        strip.xaxis.set_major_locator(MaxNLocator(integer=True))
        strip.grid(alpha=0.3, axis="x")
    curves[0].set_ylabel("loss (log scale)")
    legend = [
        Line2D([], [], linestyle=":", color="gray", label="train/loss"),
        Line2D([], [], linestyle="-", color="gray", label="val/loss"),
        Line2D(
            [],
            [],
            marker="*",
            linestyle="",
            color="gray",
            markeredgecolor="black",
            markersize=12,
            label="best epoch (lowest val/loss): the weights restore_best reports",
        ),
        Line2D(
            [],
            [],
            marker="|",
            linestyle="",
            color="gray",
            markersize=14,
            markeredgewidth=2.5,
            label="last epoch trained",
        ),
    ]
    handles, labels = curves[0].get_legend_handles_labels()
    fig.legend(
        legend + handles,
        [h.get_label() for h in legend] + labels,
        loc="outside lower center",
        ncols=3,
        fontsize="small",
    )
    shown = ""
    if restore in runs and runs[restore].nunique() > 1:
        shown = "\n(the restore_best=False runs: restore_best changes only the reported weights)"
    fig.suptitle(f"Early stopping: train and val loss per epoch, each seed a colour{shown}")
    return fig


def finished_runs(sweep_dir: Path) -> pd.DataFrame:
    """The completed, diverged or pruned runs of a sweep, with each run dir in `path`."""
    runs = collect_runs(sweep_dir) if sweep_dir.is_dir() else pd.DataFrame()
    if runs.empty:
        return runs
    runs = runs[runs["status"].isin(DONE)]
    return runs.assign(path=[str(sweep_dir / r) for r in runs["run"]])


def write_report(
    sections: list[Section], runs_dir: Path, out: Path, command: str, notes_dir: Path | None = None
) -> Path:
    """The page `out`, a table, plots and measured comparisons per section, from the runs on disk.

    The PNGs go into the page's own folder (images_dir), so no other page's are replaced.
    Raises FileNotFoundError, and writes nothing, when no section has a finished run.
    """
    finished = {s.name: finished_runs(runs_dir / s.name) for s in sections}
    if all(runs.empty for runs in finished.values()):
        where = runs_dir if runs_dir.is_dir() else f"{runs_dir}, which does not exist"
        names = ", ".join(s.name for s in sections)
        raise FileNotFoundError(f"No finished runs of {names} in {where}")
    out.parent.mkdir(parents=True, exist_ok=True)
    images = images_dir(out)
    images.mkdir(exist_ok=True)
    parts = []
    for section in sections:
        sweep_dir = runs_dir / section.name
        runs = finished[section.name]
        parts += [f"## {section.title}", "", section.about, ""]
        if runs.empty:
            parts += ["No finished runs.", ""]
            continue
        data_name = _data_name(sweep_dir)
        sweep = " ".join(section_overrides(section, []))
        parts += [f"Data: `{data_name}`. Sweep: `{sweep}`.", ""]
        parts += [markdown_table(section_table(section, runs), digits=3), ""]
        varying = varying_settings(runs)
        curves = images / f"{section.name}_curves.png"
        if section.curves == "lecture":
            figures = [plot_lecture(runs, curves)]
        elif section.curves == "early_stopping":
            figures = [plot_early_stopping(runs, curves)]
        else:
            # test noise changes no training curve: its runs would hide one another
            keys = [k for k in varying if k != TEST_ONLY]
            figures = [plot_curves(sweep_dir, runs, keys, curves, section.curves)]
        measured = []
        for key in (k for k in section.plot_keys if k in runs):  # a key the sweep has
            others = [k for k in varying if k != key]
            figures.append(plot_against(runs, key, others, images / f"{section.name}_{key}.png"))
            measured += compare(runs, key, others)
        if not section.plot_keys and varying and section.curves != "lecture":
            measured += compare_settings(runs, varying)
        if section.grad_norms:
            figures.append(plot_grad_norms(runs, images / f"{section.name}_grad_norms.png"))
        parts += [f"![{f.stem}]({images.name}/{f.name})" for f in figures] + [""]
        if measured:
            parts += ["**Measured** (test/acc, mean ± std over seeds):", ""]
            parts += [f"- {s[0].upper()}{s[1:]}" for s in measured] + [""]
        note = (notes_dir or out.parent / "notes") / f"{section.name}.md"
        if note.is_file():
            parts += ["**What we saw.** " + note.read_text().strip(), ""]
    header = [
        "# The tips, measured",
        "",
        f"Generated by `{command}` on {date.today():%Y-%m-%d}, on {_machine()}.",
        "Every number below comes from that run; rerunning the command resumes it (finished",
        "jobs are kept) and rewrites this page. Every setting runs with seeds 0, 1 and 2",
        f"(`{SEEDS}` unless the command sets `seed=`; the `seeds` column counts them), and",
        f"the batched launcher (`{BATCHED}`) trains the runs that share a network shape",
        "together. Tables give mean ± std over the seeds; plots show the mean,",
        "with error bars of ± 1 std or a band from the lowest to the highest seed, and each",
        "seed as a dot. A **Measured** line calls a setting better than another only when",
        "their mean ± std intervals do not overlap; otherwise they are within seed noise.",
        "Diverged runs (a non-finite loss: training stops, the best weights so far are",
        "reported) are marked in every table and plot: a cross on the bottom edge of a plot, at",
        "the epoch or setting where they diverged; plots leave their final accuracy out of the",
        f"mean ± std. Accuracy axes span at least {MIN_ACC_SPAN}, so that a difference of 0.01",
        "is never a large part of a plot. Accuracies are fractions of 1; `train/acc` in the",
        "tables is measured after training over the whole training split (eval mode),",
        "`s/epoch` is the mean time of one epoch's training pass per run (a batched group's",
        "epoch time divided by its runs).",
        "",
    ]
    out.write_text("\n".join(header + parts))
    return out


def _data_name(sweep_dir: Path) -> str:
    configs = sorted(sweep_dir.glob("*/.hydra/config.yaml"))
    if not configs:
        return "?"
    cfg = OmegaConf.load(configs[0])
    size = cfg.data.train_size
    return f"{cfg.data.name}" + (f", train_size={size}" if size else "")


def _machine() -> str:
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    return f"{platform.machine()} {device}, torch {torch.__version__}"
