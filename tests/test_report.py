"""The report's tables, plots and sentences, from tiny real sweeps: seeds pooled into
mean ± std, error bars where a key is categorical, claims only where the error bars allow
them, diverged runs marked, and the lecture's published numbers read from its presets."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from omegaconf import OmegaConf

import dltips.report as report
from conftest import ROOT, make_cfg, run_script
from dltips.config import validate
from dltips.group import group_key
from dltips.plots import (
    MIN_ACC_SPAN,
    against_figure,
    curves_figure,
    note_overlaps,
    widen_y,
)
from dltips.report import (
    BATCHED,
    LECTURE_PRESETS,
    SECTIONS,
    SEEDS,
    compare,
    early_stopping_figure,
    finished_runs,
    lecture_figure,
    lecture_preset,
    section_table,
)

QUICK = ["data=mnist_5k", "data.train_size=null", "trainer.max_epochs=2"]


def sweep(root: Path, *overrides: str) -> pd.DataFrame:
    """A real batched sweep over seeds 0, 1, 2 on mnist_5k; its finished runs."""
    result = run_script(
        "train.py",
        "-m",
        SEEDS,
        BATCHED,
        *QUICK,
        *overrides,
        f"hydra.sweep.dir={root}",
        cwd=root.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return finished_runs(root)


def metrics(run: str) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def normalize_runs(tmp_path_factory) -> pd.DataFrame:
    # raw 0..255 pixels make SGD diverge for some seeds; x/255 learns; two learning rates
    root = tmp_path_factory.mktemp("report") / "normalize"
    return sweep(root, "experiment=tips/normalize", "data.normalize=none,unit", "optim.lr=0.03,0.1")


@pytest.fixture(scope="module")
def lecture_runs(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("report") / "lecture"
    steps = "experiment=lecture/step5,lecture/step6,lecture/step7"
    return sweep(root, steps, "model.width=64", "trainer.max_epochs=1")


def test_published_numbers_live_only_in_the_lecture_presets():
    assert not hasattr(report, "LECTURE_PUBLISHED")
    assert [p.stem for p in LECTURE_PRESETS] == [f"step{i}" for i in range(9)]
    for path in LECTURE_PRESETS:
        block = OmegaConf.load(path).lecture
        cfg = make_cfg(f"experiment=lecture/{path.stem}", tiny=False)
        validate(cfg)  # a key of the config, which training accepts and ignores
        assert cfg.lecture == block
        preset = lecture_preset(f"lecture/{path.stem}")
        assert preset["change"] and preset["change"] == block.change
        for metric in ("train/acc", "test/acc"):
            assert 0 < preset["published"][metric] <= 1
    # the description does not split a batched group: steps 6 and 7 differ only in test noise
    six, seven = (make_cfg(f"experiment=lecture/step{i}", tiny=False) for i in (6, 7))
    assert six.lecture != seven.lecture and group_key(six) == group_key(seven)


@pytest.mark.slow
def test_lecture_table_and_plot_read_the_presets_and_mark_divergence(lecture_runs, tmp_path):
    table = section_table(SECTIONS["lecture"], lecture_runs).set_index("step")
    for step in (5, 6, 7):
        block = OmegaConf.load(ROOT / f"conf/experiment/lecture/step{step}.yaml").lecture
        assert table.loc[step, "change"] == block.change
        assert table.loc[step, "published test/acc"] == block.published["test/acc"]
        assert table.loc[step, "seeds"] == 3
    # steps 6 and 7 (test noise only) trained together, their 3 seeds each as one group
    six_seven = lecture_runs[lecture_runs["experiment"] != "lecture/step5"]
    assert {metrics(r)["batch"]["members"] for r in six_seven["path"]} == {6}

    # a published number corrected in the preset is what the table shows
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    preset = conf / "experiment/lecture/step6.yaml"
    preset.write_text(preset.read_text().replace("test/acc: 0.963", "test/acc: 0.5"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "ROOT", tmp_path)
        edited = section_table(SECTIONS["lecture"], lecture_runs).set_index("step")
    assert edited.loc[6, "published test/acc"] == 0.5 and table.loc[6, "published test/acc"] != 0.5

    # one panel per step, titled by its change; the diverged seeds are said, not left out
    fig = lecture_figure(lecture_runs)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert set(panels) == {
        f"step {s}: {OmegaConf.load(ROOT / f'conf/experiment/lecture/step{s}.yaml').lecture.change}"
        for s in (5, 6, 7)
    }
    step5 = lecture_runs[lecture_runs["experiment"] == "lecture/step5"]
    diverged = int((step5["status"] == "diverged").sum())
    assert diverged > 0, "raw pixels with SGD lr 0.1 and 13 layers should diverge"
    texts = " ".join(t.get_text() for t in panels[next(p for p in panels if "step 5" in p)].texts)
    assert f"({diverged} of 3 seeds)" in texts and "diverged at epoch" in texts
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "experiment=" not in legend
    # the per-epoch train/acc (train mode) is not the table's; the test point is mean ± std
    assert "train/acc during the epoch" in legend and "± std" in legend
    ax5 = panels[next(p for p in panels if "step 5" in p)]
    assert_marked_on_the_bottom_edge(ax5, step5)
    fine = pd.to_numeric(step5.loc[step5["status"] != "diverged", "test/acc"])
    points = [c for c in ax5.containers if isinstance(c, ErrorbarContainer)]
    assert len(points) == (not fine.empty)  # a diverged seed's test/acc is no result
    if points:
        assert points[0].lines[0].get_ydata()[0] == pytest.approx(fine.mean())
    # the "test" tick stands apart from the last epoch's, so their labels never touch
    ticks = {label.get_text(): x for x, label in zip(ax5.get_xticks(), ax5.get_xticklabels())}
    last = max(x for name, x in ticks.items() if name != "test")
    assert ticks["test"] - last >= 2


def assert_marked_on_the_bottom_edge(ax, runs: pd.DataFrame, at=None) -> None:
    """Each diverged run of `runs` is a cross on the bottom edge of `ax` (y in axes units, so
    it neither reads as an accuracy nor sets the y range), at `at` or the epoch it diverged in."""
    marks = [line for line in ax.lines if line.get_gid() == "diverged"]
    bad = runs[runs["status"] == "diverged"]
    expected = at if at is not None else list(bad["epochs"].fillna(0).astype(int) + 1)
    assert sorted(x for line in marks for x in line.get_xdata()) == sorted(expected)
    for line in marks:
        assert line.get_transform() == ax.get_xaxis_transform()
        assert list(line.get_ydata()) == [0.0] * len(line.get_xdata())


@pytest.mark.slow
def test_diverged_runs_are_marked_in_the_table_and_every_plot(normalize_runs):
    bad = normalize_runs[normalize_runs["status"] == "diverged"]
    assert not bad.empty, "raw pixels with SGD should diverge for some seed"
    table = section_table(SECTIONS["normalize"], normalize_runs)
    for (normalize, lr), group in normalize_runs.groupby(["data.normalize", "optim.lr"]):
        n = int((group["status"] == "diverged").sum())
        row = table[(table["data.normalize"] == normalize) & (table["optim.lr"] == lr)].iloc[0]
        assert ("**diverged**" in row["status"]) == (n > 0)
        if n:
            assert f"({n} of 3 seeds)" in row["status"]

    legend = " ".join(
        t.get_text()
        for ax in against_figure(normalize_runs, "data.normalize", ["optim.lr"]).axes
        for t in ax.get_legend().get_texts()
    )
    assert "diverged" in legend
    root = Path(bad["path"].iloc[0]).parent
    curves = curves_figure(root, normalize_runs, ["data.normalize", "optim.lr"])
    legend = " ".join(t.get_text() for ax in curves.axes for t in ax.get_legend().get_texts())
    assert "diverged at epoch" in legend
    for ax in curves.axes:  # one panel per normalize
        normalize = ax.get_title().split("=")[1]
        assert_marked_on_the_bottom_edge(
            ax, normalize_runs[normalize_runs["data.normalize"] == normalize]
        )

    # in the final metrics: on the bottom edge under their setting, out of the mean ± std,
    # and no part of the y range: the data limits are those of the runs that did not diverge
    fine = normalize_runs[normalize_runs["status"] != "diverged"]
    full, without = (
        against_figure(r, "data.normalize", ["optim.lr"]) for r in (normalize_runs, fine)
    )
    for ax, bare in zip(full.axes, without.axes):
        assert ax.dataLim.intervaly == pytest.approx(bare.dataLim.intervaly)
        marks = [line for line in ax.lines if line.get_gid() == "diverged"]
        assert sum(len(line.get_xdata()) for line in marks) == len(bad)
        for line in marks:
            assert line.get_transform() == ax.get_xaxis_transform()
            assert set(line.get_ydata()) == {0.0}
            # beside its category (settings of the other keys stand side by side)
            ticks = dict(zip((t.get_text() for t in ax.get_xticklabels()), ax.get_xticks()))
            assert all(abs(x - ticks["none"]) < 0.5 for x in line.get_xdata())


def _errorbars(fig) -> list[ErrorbarContainer]:
    return [c for c in fig.axes[-1].containers if isinstance(c, ErrorbarContainer)]


@pytest.mark.slow
def test_categorical_keys_get_points_with_error_bars_numeric_keys_lines(normalize_runs):
    unit = normalize_runs[normalize_runs["data.normalize"] == "unit"]
    categorical = _errorbars(against_figure(normalize_runs, "data.normalize", ["optim.lr"]))
    assert categorical and all(c.lines[0].get_linestyle() == "None" for c in categorical)
    numeric = _errorbars(against_figure(unit, "optim.lr", []))
    assert len(numeric) == 1 and numeric[0].lines[0].get_linestyle() == "-"
    # each bar is ± the std of the seeds' final test/acc, around their mean
    segments = numeric[0].lines[2][0].get_segments()
    for (_lr, group), segment in zip(
        sorted(unit.groupby("optim.lr"), key=lambda g: float(g[0])), segments
    ):
        values = pd.Series([metrics(r)["test/acc"] for r in group["path"]])
        low, high = segment[0][1], segment[1][1]
        assert (low + high) / 2 == pytest.approx(values.mean())
        assert (high - low) / 2 == pytest.approx(values.std(ddof=1))


@pytest.mark.slow
def test_accuracy_axes_span_enough_that_seed_noise_is_no_cliff(normalize_runs):
    unit = normalize_runs[normalize_runs["data.normalize"] == "unit"]
    root = Path(unit["path"].iloc[0]).parent
    for fig in (against_figure(unit, "optim.lr", []), curves_figure(root, unit, ["optim.lr"])):
        for ax in fig.axes:
            low, high = ax.get_ylim()
            assert high - low >= MIN_ACC_SPAN - 1e-9
            assert low >= -0.01 and high <= 1.01


def test_widen_y_keeps_wide_axes_and_stays_within_zero_and_one():
    ax = Figure().subplots()
    for limits, expected in (
        ((0.84, 0.86), (0.85 - MIN_ACC_SPAN / 2, 0.85 + MIN_ACC_SPAN / 2)),
        ((0.96, 0.99), (1 - MIN_ACC_SPAN, 1.0)),
        ((0.01, 0.03), (0.0, MIN_ACC_SPAN)),
        ((0.2, 0.9), (0.2, 0.9)),
    ):
        ax.set_ylim(*limits)
        widen_y(ax)
        assert ax.get_ylim() == pytest.approx(expected)


def test_a_line_on_top_of_another_says_so_and_every_line_has_its_own_marker():
    ax = Figure().subplots()
    epochs = pd.Index([1, 2, 3])
    means = {
        "depth=6": pd.Series([0.1, 0.1, 0.1], index=epochs),
        "depth=8": pd.Series([0.1, 0.1001, 0.1], index=epochs),
        "depth=4": pd.Series([0.1, 0.1, 0.5], index=epochs),  # apart in one epoch: visible
    }
    drawn = [(name, ax.plot(mean.index, mean, label=name)[0], mean) for name, mean in means.items()]
    note_overlaps(ax, drawn)
    labels = [line.get_label() for _, line, _ in drawn]
    assert labels == ["depth=6", "depth=8 (on top of depth=6)", "depth=4"]


@pytest.mark.slow
def test_curves_group_every_swept_key_but_the_seed_or_say_what_they_pool(normalize_runs):
    root = Path(normalize_runs["path"].iloc[0]).parent
    # every key: a line per setting, three seeds each
    fig = curves_figure(root, normalize_runs, ["data.normalize", "optim.lr"])
    assert "mean of 3 seeds" in fig.get_suptitle()
    for ax in fig.axes:
        lines = [line for line in ax.lines if line.get_gid() != "diverged"]
        normalize = ax.get_title().split("=")[1]
        group = normalize_runs[normalize_runs["data.normalize"] == normalize]
        with_history = group[group["epochs"].fillna(0) > 0]
        assert len(lines) == with_history["optim.lr"].nunique()
        # distinct hollow markers: lines drawn on top of each other still show
        assert len({line.get_marker() for line in lines}) == len(lines)
        assert all(line.get_markerfacecolor() == "none" for line in lines)
    # a key left out of the lines is named in the title with what each line averages
    pooled = curves_figure(root, normalize_runs, ["data.normalize"]).get_suptitle()
    assert "mean of 6 runs, 3 seeds x optim.lr=0.03, 0.1" in pooled
    assert "mean of 3 seeds" not in pooled


@pytest.mark.slow
def test_claims_follow_the_error_bars(normalize_runs):
    unit = normalize_runs[normalize_runs["data.normalize"] == "unit"]
    stats = {
        lr: pd.Series([metrics(r)["test/acc"] for r in group["path"]])
        for lr, group in unit.groupby("optim.lr")
    }
    (best, b), (other, o) = sorted(stats.items(), key=lambda kv: -kv[1].mean())
    overlap = o.mean() + o.std() >= b.mean() - b.std()
    (sentence,) = compare(unit, "optim.lr", [])
    assert sentence.startswith(f"highest mean test/acc: lr={best} ")
    assert ("within seed noise" in sentence) == overlap
    assert ("by more than the seed noise" in sentence) == (not overlap)

    # a diverged setting is named as such, never ranked
    for sentence in compare(normalize_runs, "data.normalize", ["optim.lr"]):
        lr = sentence.split(":")[0].removeprefix("With lr=")
        group = normalize_runs[normalize_runs["optim.lr"] == lr]
        n = int((group["status"] == "diverged").sum())
        assert (f"Diverged: normalize=none ({n} of 3 seeds)" in sentence) == (n > 0)

    # one seed: no error bars, so no ranking
    (sentence,) = compare(unit[unit["seed"] == "0"], "optim.lr", [])
    assert "no ranking" in sentence and "highest" not in sentence


@pytest.mark.slow
def test_early_stopping_plot_shows_losses_the_stop_and_the_restored_epoch(tmp_path):
    runs = sweep(
        tmp_path / "early_stopping",
        "experiment=tips/early_stopping",
        "trainer.early_stopping.patience=null,1",
        "model.width=64",
        "trainer.max_epochs=6",
    )
    fig = early_stopping_figure(runs)
    curves = {ax.get_title().split(":")[0]: ax for ax in fig.axes if ax.get_title()}
    assert set(curves) == {"no early stopping", "patience 1"}
    strips = [ax for ax in fig.axes if not ax.get_title()]
    assert len(strips) == 2
    # one epoch scale for every panel: a short run looks short
    first = fig.axes[0]
    assert all(first.get_shared_x_axes().joined(first, ax) for ax in fig.axes)
    key = "trainer.early_stopping.patience"
    for name, patience in (("no early stopping", "null"), ("patience 1", "1")):
        ax = curves[name]
        strip = next(
            s for s in strips if s.get_subplotspec().colspan == ax.get_subplotspec().colspan
        )
        seeds = (
            runs[runs[key] == patience]
            .sort_values("trainer.early_stopping.restore_best")
            .drop_duplicates("seed")
        )
        # train and val loss of every seed
        assert sum(line.get_linestyle() == ":" for line in ax.lines) == len(seeds)
        val = {
            line.get_label(): line.get_color() for line in ax.lines if line.get_linestyle() == "-"
        }
        assert len(val) == len(seeds)
        # each seed its own row, its best epoch (*) and last epoch (|) in its own colour
        for marker in ("*", "|"):
            rows = [line.get_ydata()[0] for line in strip.lines if line.get_marker() == marker]
            assert len(set(rows)) == len(rows) == len(seeds)
        for _, run in seeds.iterrows():
            color = val[f"seed {run['seed']}"]
            marks = {
                line.get_marker(): line.get_xdata()[0]
                for line in strip.lines
                if line.get_color() == color and line.get_marker() in ("*", "|")
            }
            assert marks["*"] == int(metrics(run["path"])["best_epoch"])
            assert marks["|"] == int(metrics(run["path"])["epochs_trained"])
    rows = {label.get_text() for label in strips[0].get_yticklabels()}
    assert rows == {f"seed {s}" for s in runs["seed"].unique()}
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "restore" in legend and "last epoch trained" in legend
    assert "patience stopped" not in legend  # not true of the panel without patience


def test_the_readme_lecture_table_copies_the_presets_published_numbers():
    readme = (ROOT / "README.md").read_text()
    for path in LECTURE_PRESETS:
        step = f"lecture/{path.stem}"
        published = lecture_preset(step)["published"]
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{step}` |"))
        train, test = (float(v) for v in row.rstrip(" |").rsplit("|", 1)[1].split("/"))
        assert (train, test) == (published["train/acc"], published["test/acc"]), step
