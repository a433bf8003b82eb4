"""The report's tables, plots and sentences, from tiny real sweeps: seeds pooled into
mean ± std, error bars where a key is categorical, claims only where the error bars allow
them, diverged runs marked, and the lecture's published numbers read from its presets."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from omegaconf import OmegaConf

import dltips.report as report
from conftest import ROOT, make_cfg, run_script
from dltips.config import validate
from dltips.group import group_key
from dltips.plots import against_figure, curves_figure
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
    assert "experiment=" not in " ".join(t.get_text() for t in fig.legends[0].get_texts())


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
    curves = curves_figure(
        Path(bad["path"].iloc[0]).parent, normalize_runs, ["data.normalize", "optim.lr"]
    )
    legend = " ".join(t.get_text() for ax in curves.axes for t in ax.get_legend().get_texts())
    assert "diverged at epoch" in legend


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
    panels = {ax.get_title().split(":")[0]: ax for ax in fig.axes}
    assert set(panels) == {"no early stopping", "patience 1"}
    key = "trainer.early_stopping.patience"
    for name, patience in (("no early stopping", "null"), ("patience 1", "1")):
        ax = panels[name]
        seeds = runs[runs[key] == patience].drop_duplicates("seed")
        best = sorted(line.get_xdata()[0] for line in ax.lines if line.get_marker() == "*")
        stops = sorted(line.get_xdata()[0] for line in ax.lines if line.get_marker() == "|")
        assert best == sorted(int(metrics(r)["best_epoch"]) for r in seeds["path"])
        assert stops == sorted(int(metrics(r)["epochs_trained"]) for r in seeds["path"])
        # train and val loss of every seed
        assert sum(line.get_linestyle() == ":" for line in ax.lines) == len(seeds)
        assert sum(line.get_linestyle() == "-" for line in ax.lines) == len(seeds)
    assert "restore" in " ".join(t.get_text() for t in fig.legends[0].get_texts())


def test_the_readme_lecture_table_copies_the_presets_published_numbers():
    readme = (ROOT / "README.md").read_text()
    for path in LECTURE_PRESETS:
        step = f"lecture/{path.stem}"
        published = lecture_preset(step)["published"]
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{step}` |"))
        train, test = (float(v) for v in row.rstrip(" |").rsplit("|", 1)[1].split("/"))
        assert (train, test) == (published["train/acc"], published["test/acc"]), step
