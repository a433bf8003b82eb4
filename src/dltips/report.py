"""The tips, measured: run the lecture and tips presets as sweeps and write docs/RESULTS.md.

Every section runs each setting with several seeds (Section.seeds) through the batched
launcher, which trains the runs that share a network shape together. Tables and plots show
mean ± std over the seeds, and the measured sentences under each plot call one setting
better than another only where a test says so (compare: Welch's t-test at 95%).
"""

import math
import platform
import re
import statistics
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
from scipy import stats

from dltips.plots import (
    MIN_ACC_SPAN,
    TEST_ONLY,
    diverged_note,
    history_frame,
    mark_diverged,
    plot_against,
    plot_curves,
    settings_groups,
    short_label,
)
from dltips.runs import (
    DONE,
    USABLE,
    collect_runs,
    markdown_table,
    read_metrics,
    split_settings,
    status_counts,
)

ROOT = Path(__file__).resolve().parents[2]
# docs/RESULTS.md and its hand-written notes are about this run, the full report (make report)
DOCS_PAGE = ROOT / "docs" / "RESULTS.md"
FULL_REPORT = "python scripts/report.py --data fashion_mnist"
FULL_REPORT_DATA = "fashion_mnist"
ALPHA = 0.05  # every claim of the page: Welch's t-test at 95% (Holm over one line's tests)
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
    about: str  # the presets' network and optimizer; seeds, epochs and data come from the runs
    overrides: list[str]
    # seeds 0..seeds-1 per setting: 3 (the report's time budget), 5 where runs are cheap
    seeds: int = 3
    plot_keys: list[str] = field(default_factory=list)  # final metrics against these keys
    grad_norms: bool = False  # per-layer gradient norms of the first epoch
    curves: str = "val/acc"  # per-epoch plot: a metric, or "lecture" / "early_stopping"
    launcher: str = BATCHED  # how the sweep's jobs run
    also: list[str] = field(default_factory=list)  # a second sweep, into <name>_full
    # a function of dltips.report_tips: (runs, eval dir, images dir) -> table, plots, sentences
    analyse: str | None = None


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
            seeds=5,  # seconds a run
        ),
        Section(
            "optimizers",
            "Optimizers",
            "2 x 128 ReLU units, batch 100; each optimizer with its usual lr.",
            ["experiment=tips/optimizers"],
            plot_keys=["optim"],
            seeds=5,  # seconds a run
        ),
        Section(
            "batch_size",
            "Batch size",
            "2 x 128 ReLU units, Adam: accuracy and seconds per epoch.",
            ["experiment=tips/batch_size"],
            plot_keys=["data.batch_size"],
            seeds=5,  # seconds a run
        ),
        Section(
            "loss",
            "Mean squared error vs cross-entropy",
            "3 x 128 units, SGD lr 0.1.",
            ["experiment=tips/loss"],
            plot_keys=["loss"],
        ),
        Section(
            "normalize",
            "Input normalization",
            "3 x 128 ReLU units, SGD lr 0.1.",
            ["experiment=tips/normalize"],
            plot_keys=["data.normalize"],
            seeds=5,  # seconds a run
        ),
        Section(
            "early_stopping",
            "Early stopping",
            "2 x 512 ReLU units, Adam, 2,000 training images.",
            ["experiment=tips/early_stopping"],
            curves="early_stopping",
        ),
        Section(
            "weight_decay",
            "L2 regularization (weight decay)",
            "2 x 512 ReLU units, SGD with momentum, 2,000 training images.",
            ["experiment=tips/weight_decay"],
            plot_keys=["optim.weight_decay"],
        ),
        Section(
            "l1",
            "L1 regularization",
            "2 x 512 ReLU units, SGD with momentum, 2,000 training images.",
            ["experiment=tips/l1"],
            plot_keys=["loss.l1"],
        ),
        Section(
            "bagging",
            "Bagging",
            "2 x 128 ReLU units, Adam, 10,000 training images; each of 16 seeds draws its own "
            "bootstrap resample (`data.bootstrap=true`), and scripts/eval.py averages the "
            "networks' probabilities (`ckpt=[run, run, ...]`); with and without dropout 0.3.",
            ["experiment=tips/bagging"],
            seeds=16,  # the members: seeds are the resamples
            analyse="analyse_bagging",
        ),
        Section(
            "dropout_ensemble",
            "Dropout as an ensemble",
            "2 x 256 units with dropout 0.5, Adam, 10,000 training images; scripts/eval.py "
            "`mc_samples=N` averages N sampled masks, against the usual weight scaling.",
            ["experiment=tips/dropout_ensemble"],
            analyse="analyse_dropout_ensemble",
        ),
        Section(
            "deep_vs_wide",
            "Deep and thin against shallow and wide, at equal size",
            "1 to 6 hidden layers whose widths `model.params` chooses for 650,000 or 100,000 "
            "parameters; ReLU and sigmoid, Adam, 10,000 training images, 5 epochs.",
            ["experiment=tips/deep_vs_wide"],
            plot_keys=["model.depth"],
        ),
        Section(
            "small_data",
            "Tuning on a small set first",
            "12 settings (SGD, momentum, RMSProp, Adam x lr 0.001, 0.01, 0.1; 2 x 128 ReLU, 5 "
            "epochs) on 5%, 10% and 25% of the training split, 3 draws each "
            "(`data.subset_seed`), against all of it (`experiment=tips/small_data_full`).",
            ["experiment=tips/small_data"],
            also=["experiment=tips/small_data_full"],
            analyse="analyse_small_data",
        ),
        Section(
            "dropout",
            "Dropout, on clean and noisy test inputs",
            "3 x 512 ReLU units, Adam; test noise std 0 or 1.",
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


def seed_override(section: Section) -> str:
    """`seed=0,1,...` for the section's number of seeds."""
    return "seed=" + ",".join(str(s) for s in range(section.seeds))


def section_overrides(section: Section, extra: list[str]) -> list[str]:
    """The section's sweep: its presets, the seeds and the batched launcher, then `extra`.

    A `seed=` or `hydra/launcher=` in `extra` (from --set) replaces the report's own.
    """
    own = [seed_override(section), section.launcher]
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
    if section.also:
        also = Section(section.name + "_full", section.title, "", section.also, section.seeds)
        run_section(also, sweep_dir.with_name(also.name), extra)


@dataclass(frozen=True)
class Verdict:
    """What compare() says of mean(a) - mean(b)."""

    difference: float  # mean(a) - mean(b)
    low: float  # the (1 - alpha) confidence interval of the difference
    high: float
    p: float  # two-sided; nan where a sample has fewer than 2 values (no test)
    n: tuple[int, int]  # values in a and in b
    different: bool  # p < alpha: the test tells the means apart


def compare(a: list[float], b: list[float], alpha: float = ALPHA) -> Verdict:
    """Welch's two-sided t-test of mean(a) = mean(b) (unequal variances), at level `alpha`,
    with the Welch-Satterthwaite (1 - alpha) interval of the difference of means.

    Samples that both have no spread (every seed the same value) differ exactly when their
    means do; a sample of fewer than 2 values allows no test, and no difference is called.
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        mean_a = sum(a) / na if na else math.nan
        mean_b = sum(b) / nb if nb else math.nan
        return Verdict(mean_a - mean_b, -math.inf, math.inf, math.nan, (na, nb), False)
    mean_a, mean_b = sum(a) / na, sum(b) / nb
    difference = mean_a - mean_b
    spread = statistics.variance(a) / na + statistics.variance(b) / nb
    if spread < 1e-24:  # rounding only: 0.1 three times has a mean of 0.10000000000000002
        p = 1.0 if abs(difference) < 1e-12 else 0.0
        return Verdict(difference, difference, difference, p, (na, nb), p < alpha)
    test = stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(1 - alpha)
    p = float(test.pvalue)
    return Verdict(difference, float(low), float(high), p, (na, nb), p < alpha)


def holm(p_values: list[float]) -> list[float]:
    """Holm's adjusted p-values: calling those below alpha keeps the chance of any false call
    among the tests at most alpha (a line that compares the best with 5 others makes 5)."""
    order = sorted(range(len(p_values)), key=lambda i: _or_one(p_values[i]))
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * _or_one(p_values[i])))
        adjusted[i] = running
    return adjusted


def _or_one(p: float) -> float:
    return 1.0 if math.isnan(p) else p


def counted(group: pd.DataFrame) -> pd.DataFrame:
    """The runs of a setting that its means and tests count: those that completed.

    The report's one status rule: a diverged, pruned, failed or unfinished run is left out of
    every mean, whose cell then says "n of m", and a setting with such a run is never ranked.
    """
    return group[group["status"].isin(USABLE)]


def of_seeds(group: pd.DataFrame) -> str:
    """'3', or '2 of 3' when not every run of the setting completed."""
    n, m = len(counted(group)), len(group)
    return f"{n}" if n == m else f"{n} of {m}"


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
    if set(counts.index) <= set(USABLE):
        return status_counts(group["status"]) if len(counts) > 1 else str(counts.index[0])
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
    """One row per setting: its seeds, status, train / val / test accuracy as mean ± std of
    the runs that completed, epochs and seconds per epoch; the lecture's steps with their
    change and published numbers."""
    rows = []
    for setting, group in settings_groups(runs, varying_settings(runs)):
        row = dict(setting)
        if section.name == "lecture":  # the step's number and change instead of its preset name
            experiment = str(group["experiment"].iloc[0])
            preset = lecture_preset(experiment)
            row = {"step": int(experiment.rsplit("step", 1)[-1]), "change": preset.get("change")}
        row["seeds"] = of_seeds(group)
        row["status"] = status_cell(group)
        for metric in ("train/acc", "val/acc", "test/acc"):
            row[metric] = mean_std(counted(group)[metric])
        epochs = group["epochs"].dropna().astype(int)
        row["epochs"] = (
            ""
            if epochs.empty
            else f"{epochs.min()}"
            if epochs.min() == epochs.max()
            else f"{epochs.min()}-{epochs.max()}"
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


def _values(group: pd.DataFrame, metric: str) -> list[float]:
    return list(pd.to_numeric(counted(group)[metric]).dropna())


def _seeds_text(ns: list[int]) -> str:
    """'3 seeds', or '3 to 5 seeds' where the settings have different numbers."""
    low, high = min(ns), max(ns)
    return f"{low} seed{'s' * (low != 1)}" if low == high else f"{low} to {high} seeds"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _not_ranked(group: pd.DataFrame, label: str, metric: str) -> str:
    """'depth=10 (2 of 3 seeds completed, 1 diverged; their mean 0.808 ± 0.028)'."""
    others = group[~group["status"].isin(USABLE)]["status"].value_counts()
    statuses = ", ".join(f"{n} {s}" for s, n in others.items())
    values = mean_std(counted(group)[metric])
    mean = f"; their mean {values}" if values else ""
    return f"{label} ({of_seeds(group)} seeds completed, {statuses}{mean})"


def ranking(runs: pd.DataFrame, key: str, others: list[str], metric: str = "test/acc") -> list[str]:
    """Sentences on the values of `key` by `metric`, one per setting of `others`: the highest
    mean among the settings whose runs all completed, and each other such setting either
    lower than it (compare() with Holm's adjustment over the line's tests) or with no
    difference detected. Settings with a run that did not complete are named, not ranked."""
    sentences = []
    for setting, group in settings_groups(runs, others):
        where = ", ".join(short_label(k, v) for k, v in setting.items())
        prefix = f"With {where}: " if where else ""
        complete, incomplete = [], []
        for value, runs_of in settings_groups(group, [key]):
            label = short_label(key, value[key])
            if runs_of["status"].isin(USABLE).all():
                complete.append((label, _values(runs_of, metric)))
            else:
                incomplete.append(_not_ranked(runs_of, label, metric))
        not_ranked = f" Not ranked, not every run completed: {', '.join(incomplete)}."
        not_ranked = not_ranked if incomplete else ""
        if len(complete) < 2 or min(len(v) for _, v in complete) < 2:
            why = (
                "one seed per setting: no test, no ranking."
                if complete and min(len(v) for _, v in complete) < 2
                else "fewer than two settings with every run completed: no ranking."
            )
            sentences.append(f"{prefix}{why}{not_ranked}")
            continue
        complete.sort(key=lambda lv: -sum(lv[1]) / len(lv[1]))
        (best, best_values), rest = complete[0], complete[1:]
        verdicts = [compare(values, best_values) for _, values in rest]
        adjusted = holm([v.p for v in verdicts])
        lower = [
            f"{label} ({mean_std(pd.Series(values))}; difference {v.difference:+.3f}, {_p(p)})"
            for (label, values), v, p in zip(rest, verdicts, adjusted)
            if p < ALPHA
        ]
        level = [
            (f"{label} ({mean_std(pd.Series(values))}; {_p(p)})", len(values))
            for (label, values), p in zip(rest, adjusted)
            if p >= ALPHA
        ]
        among = " of the settings whose runs all completed" if incomplete else ""
        text = f"{prefix}highest mean {metric}{among}: {best} ({mean_std(pd.Series(best_values))})"
        if lower:
            text += "; lower (Welch's t-test, 95%): " + ", ".join(lower)
        if level:
            seeds = _seeds_text([len(best_values), *(n for _, n in level)])
            text += f"; no difference detected at {seeds}: " + ", ".join(t for t, _ in level)
        sentences.append(text + "." + not_ranked)
    return sentences


def ranking_settings(runs: pd.DataFrame, keys: list[str], metric: str = "test/acc") -> list[str]:
    """ranking() over the combinations of several keys, as one categorical key."""
    combined = runs.assign(
        setting=[" ".join(short_label(k, row[k]) for k in keys) for _, row in runs.iterrows()]
    )
    return [s.replace("setting=", "") for s in ranking(combined, "setting", [], metric)]


def step_claims(runs: pd.DataFrame, metric: str = "test/acc") -> list[str]:
    """The lecture's claims, one per step: its `metric` against the step before it whose runs
    all completed (compare(): higher, lower, or no difference detected at N seeds)."""
    steps = sorted(
        settings_groups(runs, ["experiment"]), key=lambda g: int(g[0]["experiment"][12:])
    )
    sentences, before = [], None
    for setting, group in steps:
        step = int(setting["experiment"][12:])
        name = f"step {step} ({lecture_preset(setting['experiment']).get('change', '')})"
        values = _values(group, metric)
        if not group["status"].isin(USABLE).all():
            label = _not_ranked(group, name, metric)
            sentences.append(f"{label[0].upper()}{label[1:]}: not compared.")
            if before is not None:  # the next step is compared with the one before this
                before = (*before[:2], True)
            continue
        if before is not None:
            previous, previous_values, skipped = before
            v = compare(values, previous_values)
            interval = f"95% interval {v.low:+.3f} to {v.high:+.3f}, {_p(v.p)}"
            said = (
                f"{'higher' if v.difference > 0 else 'lower'} by {abs(v.difference):.3f} "
                f"(Welch's t-test, {interval})"
                if v.different
                else f"no difference detected at {_seeds_text([len(values), len(previous_values)])}"
                f" (difference {v.difference:+.3f}, {interval})"
            )
            last = ", the last step whose runs all completed" if skipped else ""
            sentences.append(
                f"{name[0].upper()}{name[1:]} against {previous}{last}: "
                f"{mean_std(pd.Series(values))} against {mean_std(pd.Series(previous_values))}, "
                f"{said}."
            )
        before = (name, values, False)
    return sentences


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


def analysed(
    section: Section, runs: pd.DataFrame, runs_dir: Path, images: Path
) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """The table, plots and sentences of a section with its own analysis (report_tips),
    whose evaluations go into <runs dir>/<name>_eval."""
    from dltips import report_tips  # it builds on this module

    analyse = getattr(report_tips, section.analyse)
    return analyse(runs, runs_dir / f"{section.name}_eval", images)


def plots_and_claims(
    section: Section, runs: pd.DataFrame, all_runs: pd.DataFrame, sweep_dir: Path, images: Path
) -> tuple[list[Path], list[str]]:
    """A section's plots (curves, final metrics against its plot_keys, gradient norms) and
    its measured sentences, from its finished runs (`runs`) and all of them."""
    varying = varying_settings(runs)
    curves = images / f"{section.name}_curves.png"
    measured = []
    if section.curves == "lecture":
        figures = [plot_lecture(runs, curves)]
        measured += step_claims(all_runs)
    elif section.curves == "early_stopping":
        figures = [plot_early_stopping(runs, curves)]
    else:
        # test noise changes no training curve: its runs would hide one another
        keys = [k for k in varying if k != TEST_ONLY]
        figures = [plot_curves(sweep_dir, runs, keys, curves, section.curves)]
    for key in (k for k in section.plot_keys if k in runs):  # a key the sweep has
        others = [k for k in varying if k != key]
        figures.append(plot_against(runs, key, others, images / f"{section.name}_{key}.png"))
        measured += ranking(all_runs, key, others)
    if not section.plot_keys and varying and section.curves != "lecture":
        measured += ranking_settings(all_runs, varying)
    if section.grad_norms:
        figures.append(plot_grad_norms(runs, images / f"{section.name}_grad_norms.png"))
    return figures, measured


def section_runs(sweep_dir: Path) -> pd.DataFrame:
    """Every run of a sweep, any status (failed and unfinished too), its run dir in `path`."""
    runs = collect_runs(sweep_dir) if sweep_dir.is_dir() else pd.DataFrame()
    if runs.empty:
        return runs
    return runs.assign(path=[str(sweep_dir / r) for r in runs["run"]])


def finished_runs(sweep_dir: Path) -> pd.DataFrame:
    """The completed, diverged or pruned runs of a sweep, with each run dir in `path`."""
    runs = section_runs(sweep_dir)
    return runs[runs["status"].isin(DONE)] if not runs.empty else runs


def ran_line(runs: pd.DataFrame) -> str:
    """What the runs were, read from their configs: data, seeds (how many per setting) and
    epochs, so that the text says what the table shows whatever the command overrode."""
    configs = [
        OmegaConf.load(Path(r) / ".hydra" / "config.yaml")
        for r in runs["path"]
        if (Path(r) / ".hydra" / "config.yaml").is_file()
    ]
    if not configs:
        return "Ran: ? (no run has its .hydra/config.yaml)."
    data = {(c.data.name, c.data.train_size) for c in configs}
    data_text = ", ".join(f"{n}" + (f", train_size={s}" if s else "") for n, s in sorted(data))
    seeds = sorted({int(c.seed) for c in configs})
    per = [len(g) for _, g in settings_groups(runs, varying_settings(runs))]
    per_text = f"{min(per)}" if min(per) == max(per) else f"{min(per)} to {max(per)}"
    seeds_text = f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
    limits = sorted({int(c.trainer.max_epochs) for c in configs})
    trained = counted(runs)["epochs"].dropna().astype(int)
    epochs = f"{', '.join(map(str, limits))} epoch{'s' * (limits != [1])}"
    if len(limits) > 1 or trained.empty or trained.min() < limits[0]:
        epochs = f"up to {epochs}"
        if not trained.empty:
            span = (
                f"{trained.min()}"
                if trained.min() == trained.max()
                else (f"{trained.min()}-{trained.max()}")
            )
            epochs += f" (the completed runs trained {span})"
    return f"Ran: `{data_text}`; {seeds_text} ({per_text} per setting); {epochs}."


def write_report(
    sections: list[Section],
    runs_dir: Path,
    out: Path,
    command: str,
    notes_dir: Path | None = None,
    extra: list[str] | None = None,
) -> Path:
    """The page `out`, a table, plots and measured comparisons per section, from the runs on disk.

    `extra` are the overrides the command gave every run (--data, --set); the page names them.
    The PNGs go into the page's own folder (images_dir), so no other page's are replaced.
    Raises FileNotFoundError, and writes nothing, when no section has a finished run.
    """
    extra = list(extra or [])
    everything = {s.name: section_runs(runs_dir / s.name) for s in sections}
    finished = {
        name: runs[runs["status"].isin(DONE)] if not runs.empty else runs
        for name, runs in everything.items()
    }
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
        runs, all_runs = finished[section.name], everything[section.name]
        parts += [f"## {section.title}", "", section.about, ""]
        if runs.empty:
            parts += ["No finished runs.", ""]
            continue
        if extra:
            overridden = " ".join(f"`{o}`" for o in extra)
            parts += [f"Every run sets {overridden} over the presets described above.", ""]
        sweep = " ".join(section_overrides(section, extra))
        parts += [f"{ran_line(all_runs)} Sweep: `{sweep}`.", ""]
        if section.analyse:  # the lecture's last tips: dltips.report_tips
            table, figures, measured = analysed(section, runs, runs_dir, images)
        else:
            table = section_table(section, all_runs)
            figures, measured = plots_and_claims(section, runs, all_runs, sweep_dir, images)
        parts += [markdown_table(table, digits=3), ""]
        parts += [f"![{f.stem}]({images.name}/{f.name})" for f in figures] + [""]
        if measured:
            parts += ["**Measured** (test/acc, mean ± std over the seeds that completed):", ""]
            parts += [f"- {s[0].upper()}{s[1:]}" for s in measured] + [""]
        note = (notes_dir or out.parent / "notes") / f"{section.name}.md"
        if note.is_file():
            parts += ["**What we saw.** " + note.read_text().strip(), ""]
    header = [
        "# The tips, measured",
        "",
        f"Generated by `{command}` on {date.today():%Y-%m-%d}, on {machine()}.",
        "Every number below comes from that run; rerunning the command resumes it (finished",
        "jobs are kept) and rewrites this page. The same command on the same machine with the",
        "same software (torch version, number of threads) reproduces these numbers bit for bit.",
        "Another processor, thread count or torch version rounds floating-point sums",
        "differently, and training amplifies that: there the numbers agree only within seed",
        "noise, and what should hold is each **Measured** verdict, not the digits (a test near",
        "its 95% threshold may still tip either way).",
        "",
        "Each section's **Ran** line gives its data, seeds and epochs, read from the runs",
        "themselves, and its sweep; the batched launcher (`hydra/launcher=batched`) trains the",
        "runs that share a network shape together. Tables give mean ± std over the seeds whose",
        "runs completed: a setting with a diverged, pruned, failed or unfinished run says",
        '"n of m" in its `seeds` column, leaves those runs out of its means, and is never',
        "ranked. A **Measured** line calls one setting higher or lower than another only when",
        "Welch's t-test tells their means apart at 95%. Where a line compares its highest",
        "setting with several others, the p-values are Holm-adjusted, so that the chance of",
        'any false call in the line stays near 5%. Otherwise it says "no difference detected at',
        'N seeds": not that the settings are equal, but that N seeds cannot tell them apart.',
        "The lecture's lines compare each step with the step before it.",
        "",
        "Plots show the mean, with error bars of ± 1 std or a band from the lowest to the",
        "highest seed, and each seed as a dot. Diverged runs (a non-finite loss: training",
        "stops, the best weights so far are reported) are marked in every table and plot: a",
        "cross on the bottom edge of a plot, at the epoch or setting where they diverged;",
        "plots leave their final accuracy out of the mean ± std. Accuracy axes span at least",
        f"{MIN_ACC_SPAN}, so that a difference of 0.01 is never a large part of a plot.",
        "Accuracies are fractions of 1; `train/acc` in the tables is measured after training",
        "over the whole training split (eval mode), `s/epoch` is the mean time of one epoch's",
        "training pass per run (a batched group's epoch time divided by its runs).",
        "",
    ]
    out.write_text("\n".join(header + parts))
    return out


def machine() -> str:
    """The processor (or GPU) the runs trained on, with the software that sets their digits:
    'AMD EPYC 7B13 (x86_64, 2 threads), torch 2.4.0'."""
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = (
            re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
            if (cpuinfo.is_file())
            else []
        )
        name = names[0].strip() if names else platform.processor() or "CPU"
        device = f"{name} ({platform.machine()}, {torch.get_num_threads()} threads)"
    return f"{device}, torch {torch.__version__}"
