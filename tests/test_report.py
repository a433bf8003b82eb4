"""The report's tables, plots and sentences, from tiny real sweeps and synthetic seed
results: seeds pooled into mean ± std, error bars where a key is categorical, claims only
where Welch's t-test makes them, runs that did not complete left out of the means and never
ranked, diverged runs marked, the lecture's published numbers read from its presets, and a
page that says what its runs were."""

import json
import math
import random
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from omegaconf import OmegaConf

import dltips.report as report
from conftest import ROOT, make_cfg, run_cli
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
    compare,
    early_stopping_figure,
    finished_runs,
    holm,
    lecture_figure,
    lecture_preset,
    ranking,
    section_table,
    step_claims,
)

QUICK = ["data=mnist_5k", "data.train_size=null", "trainer.max_epochs=2"]
SEEDS = "seed=0,1,2"


def sweep(root: Path, *overrides: str) -> pd.DataFrame:
    """A real batched sweep over seeds 0, 1, 2 on mnist_5k; its finished runs."""
    result = run_cli(
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


@pytest.mark.slow
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
        runs = lecture_runs[lecture_runs["experiment"] == f"lecture/step{step}"]
        completed = int((runs["status"] == "completed").sum())
        assert table.loc[step, "seeds"] == ("3" if completed == 3 else f"{completed} of 3")
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
def test_claims_follow_the_test(normalize_runs):
    unit = normalize_runs[normalize_runs["data.normalize"] == "unit"]
    stats = {
        lr: [metrics(r)["test/acc"] for r in group["path"]]
        for lr, group in unit.groupby("optim.lr")
    }
    (best, b), (other, o) = sorted(stats.items(), key=lambda kv: -sum(kv[1]))
    verdict = compare(o, b)
    (sentence,) = ranking(unit, "optim.lr", [])
    assert sentence.startswith(f"highest mean test/acc: lr={best} ")
    assert ("no difference detected at 3 seeds" in sentence) == (not verdict.different)
    assert ("lower (Welch's t-test, 95%)" in sentence) == verdict.different

    # a diverged setting is named as such, never ranked
    for sentence in ranking(normalize_runs, "data.normalize", ["optim.lr"]):
        lr = sentence.split(":")[0].removeprefix("With lr=")
        group = normalize_runs[
            (normalize_runs["optim.lr"] == lr) & (normalize_runs["data.normalize"] == "none")
        ]
        n = int((group["status"] == "diverged").sum())
        assert ("Not ranked" in sentence and f"{n} diverged" in sentence) == (n > 0)

    # one seed: no test, so no ranking
    (sentence,) = ranking(unit[unit["seed"] == "0"], "optim.lr", [])
    assert "no ranking" in sentence and "highest" not in sentence


def test_compare_calls_a_clear_difference_in_its_direction():
    high, low = [0.85, 0.86, 0.855], [0.80, 0.81, 0.805]
    verdict = compare(high, low)
    assert verdict.different and verdict.p < 0.05 and verdict.n == (3, 3)
    assert verdict.difference == pytest.approx(0.05)
    assert 0 < verdict.low < 0.05 < verdict.high
    flipped = compare(low, high)
    assert flipped.different and flipped.difference == pytest.approx(-0.05)
    assert flipped.high < 0
    # the same numbers as scipy's Welch test, whose name the page gives
    from scipy.stats import ttest_ind

    welch = ttest_ind(high, low, equal_var=False)
    assert verdict.p == pytest.approx(welch.pvalue)
    interval = welch.confidence_interval(0.95)
    assert (verdict.low, verdict.high) == pytest.approx((interval.low, interval.high))
    # every seed at chance in one setting, above it in the other: no spread, still a difference
    assert compare([0.1] * 3, [0.3, 0.31, 0.29]).different
    assert compare([0.1] * 3, [0.2] * 3).different


def test_compare_detects_no_difference_between_samples_alike():
    assert not compare([0.82, 0.83, 0.84], [0.82, 0.83, 0.84]).different
    assert not compare([0.1] * 3, [0.1] * 5).different  # mean 0.10000000000000002: no spread
    # overlapping seeds, the step 6 and SGD on another machine: 0.827 ± 0.013, 0.836 ± 0.011
    alike = compare([0.814, 0.827, 0.840], [0.825, 0.836, 0.847])
    assert not alike.different and alike.low < 0 < alike.high
    # one seed allows no test: never a difference
    single = compare([0.9], [0.1, 0.11])
    assert not single.different and math.isnan(single.p)


def test_compare_calls_a_difference_between_draws_of_one_distribution_rarely():
    rng = random.Random(0)
    calls = 0
    for _ in range(200):
        a, b = ([rng.gauss(0.83, 0.01) for _ in range(3)] for _ in range(2))
        calls += compare(a, b).different
    assert calls <= 0.1 * 200, f"{calls} of 200 pairs from one distribution called different"


@pytest.mark.slow
def test_holm_keeps_a_line_of_several_comparisons_at_alpha():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, math.nan]) == [0.4, 1.0]  # no test counts as p = 1
    # the highest of 6 settings drawn from one distribution against the other 5: with Holm a
    # line calls a false difference in about 7% of draws, unadjusted in about 30%
    rng = random.Random(1)
    lines = 0
    for _ in range(100):
        settings = {v: [rng.gauss(0.83, 0.01) for _ in range(5)] for v in range(6)}
        lines += "lower" in ranking(synthetic_runs(settings), "model.depth", [])[0]
    assert lines <= 12


def synthetic_runs(results: dict, statuses: dict | None = None) -> pd.DataFrame:
    """A frame of runs as collect_runs gives it: `results` {setting: [test/acc per seed]},
    `statuses` {setting: [status per seed]} (completed unless said)."""
    rows = []
    for value, accs in results.items():
        for seed, acc in enumerate(accs):
            status = (statuses or {}).get(value, ["completed"] * len(accs))[seed]
            rows.append(
                {
                    "run": f"{len(rows)}",
                    "path": f"/nonexistent/{len(rows)}",
                    "model.depth": str(value),
                    "seed": str(seed),
                    "status": status,
                    "test/acc": acc,
                    "train/acc": acc,
                    "val/acc": acc,
                    "epochs": 10 if status == "completed" else 3,
                }
            )
    return pd.DataFrame(rows)


def test_a_setting_with_a_run_that_did_not_complete_is_never_ranked_and_says_n_of_m():
    runs = synthetic_runs(
        {
            2: [0.83, 0.84, 0.835],
            4: [0.70, 0.71, 0.705],
            6: [0.831, 0.839, 0.836],
            8: [0.95, 0.96, 0.1],  # the best mean of its completed runs, but one diverged
            10: [0.99, 0.99, 0.99],  # higher still, but one run failed and one never finished
        },
        {8: ["completed", "completed", "diverged"], 10: ["completed", "failed", "unfinished"]},
    )
    (sentence,) = ranking(runs, "model.depth", [])
    assert sentence.startswith(
        "highest mean test/acc of the settings whose runs all completed: depth=6 (0.835 ± 0.004)"
    )
    assert "lower (Welch's t-test, 95%): depth=4 (0.705 ± 0.005; difference -0.130, p " in sentence
    assert "no difference detected at 3 seeds: depth=2 (0.835 ± 0.005; p = " in sentence
    ranked, not_ranked = sentence.split(" Not ranked, not every run completed: ")
    assert "depth=8" not in ranked and "depth=10" not in ranked
    assert "depth=8 (2 of 3 seeds completed, 1 diverged; their mean 0.955 ± 0.007)" in not_ranked
    failed = "depth=10 (1 of 3 seeds completed, 1 failed, 1 unfinished; their mean 0.990)"
    assert failed in not_ranked
    # the table's means leave those runs out and say so
    table = section_table(SECTIONS["depth"], runs).set_index("model.depth")
    assert table.loc["8", "seeds"] == "2 of 3" and table.loc["2", "seeds"] == "3"
    assert table.loc["8", "test/acc"] == "0.955 ± 0.007"
    assert "**diverged** (1 of 3 seeds)" in table.loc["8", "status"]


def test_lecture_steps_are_compared_with_the_last_step_that_completed():
    runs = synthetic_runs({4: [0.836, 0.845, 0.827], 5: [0.1] * 3, 6: [0.80, 0.81, 0.79]})
    runs = runs.assign(experiment="lecture/step" + runs.pop("model.depth"))
    runs.loc[runs["experiment"] == "lecture/step5", "status"] = "diverged"
    five, six = step_claims(runs)  # step 4, the first here, has no step before it
    assert five == "Step 5 (no normalization) (0 of 3 seeds completed, 3 diverged): not compared."
    assert six.startswith(
        "Step 6 (Adam) against step 4 (ReLU), the last step whose runs all completed: "
        "0.800 ± 0.010 against 0.836 ± 0.009, lower by 0.036 (Welch's t-test, 95% interval -0.0"
    )
    # within the seeds' noise: no difference detected, whatever the means' order
    runs.loc[runs["experiment"] == "lecture/step6", "test/acc"] = [0.827, 0.840, 0.814]
    alike = "0.827 ± 0.013 against 0.836 ± 0.009, no difference detected at 3 seeds (difference "
    assert alike in step_claims(runs)[-1]


@pytest.mark.slow
def test_a_page_made_with_set_says_what_its_runs_were(tmp_path):
    page = tmp_path / "page.md"
    result = run_cli(
        "report.py",
        "normalize",
        "--data",
        "mnist_5k",
        "--set",
        "trainer.max_epochs=1",
        "--set",
        "seed=0",
        "--set",
        "model.width=32",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(page),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    text = page.read_text()
    section = text.split("## Input normalization", 1)[1]
    for override in ("trainer.max_epochs=1", "seed=0", "model.width=32"):
        assert f"`{override}`" in section  # named in the section's own text
    ran = next(line for line in section.splitlines() if line.startswith("Ran:"))
    assert "seed 0 (1 per setting); 1 epoch." in ran
    assert "10 epochs" not in section and "seed=0,1,2" not in text and "seeds 0, 1" not in text
    sweep = ran.split("Sweep: ")[1]
    assert "seed=0 " in sweep and "trainer.max_epochs=1" in sweep and "model.width=32" in sweep
    assert "One seed per setting: no test, no ranking." in section
    # the page names the processor its numbers came from
    cpu = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    if cpu and not torch.cuda.is_available():
        assert cpu[0].strip() in text.splitlines()[2]


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


def test_the_docs_lecture_table_copies_the_presets_published_numbers():
    readme = (ROOT / "docs" / "tips.md").read_text()
    for path in LECTURE_PRESETS:
        step = f"lecture/{path.stem}"
        published = lecture_preset(step)["published"]
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{step}` |"))
        train, test = (float(v) for v in row.rstrip(" |").rsplit("|", 1)[1].split("/"))
        assert (train, test) == (published["train/acc"], published["test/acc"]), step
