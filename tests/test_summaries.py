"""Summaries, plots and the report: nothing mislabelled, nothing overwritten."""

import csv
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection
from omegaconf import OmegaConf

from conftest import make_cfg, run_cli
from dltips.plots import against_figure, curves_figure
from dltips.report import DOCS_PAGE, SECTIONS, default_runs_dir, images_dir, report_page
from dltips.runs import (
    BadMetrics,
    collect_runs,
    finished_metrics,
    read_metrics,
    seed_table,
    summarize,
)
from dltips.train import train

TINY_CLI = ["model.width=16", "trainer.max_epochs=1"]
SWEEP = ["model.depth=0,1,2"]  # job 0 fails (depth 0 is invalid), jobs 1 and 2 complete
QUICK_REPORT = [
    *("--data", "mnist_5k", "--set", "trainer.max_epochs=1", "--set", "model.width=16"),
    *("--set", "seed=0,1"),  # 2 seeds of each setting, not the section's 5
]


def ok(result) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING")]


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text`, one dict per row."""
    lines = [line for line in text.splitlines() if line.startswith("|")]

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    return [dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]]


def digest(*paths: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def made_sweep(tmp_path_factory, data_root) -> Path:
    """A real 3-job CLI sweep (one failed job), summarized by the sweep's own callback."""
    tmp = tmp_path_factory.mktemp("made")
    sweep_dir = tmp / "sweep"
    ok(run_cli("train.py", "-m", *TINY_CLI, *SWEEP, f"hydra.sweep.dir={sweep_dir}", cwd=tmp))
    return sweep_dir


@pytest.fixture
def sweep_dir(made_sweep, tmp_path) -> Path:
    """A copy of the sweep, for a test to damage."""
    return Path(shutil.copytree(made_sweep, tmp_path / "sweep"))


# 5. the early-stopping direction follows the metric when mode is null


def test_summaries_sort_by_the_monitor_in_its_own_direction_when_mode_is_null(sweep_dir):
    config = OmegaConf.load(sweep_dir / "1" / ".hydra" / "config.yaml")
    assert config.trainer.early_stopping.monitor == "val/loss"
    assert config.trainer.early_stopping.mode is None  # the premise: mode null
    done = {r: json.loads((sweep_dir / r / "metrics.json").read_text()) for r in ("1", "2")}
    assert done["1"]["val/loss"] != done["2"]["val/loss"]  # else any order passes

    def order(key: str, reverse: bool) -> list[str]:
        return [r for r, _ in sorted(done.items(), key=lambda kv: kv[1][key], reverse=reverse)]

    # the sweep's callback: val/loss, lowest first
    written = [row["run"] for row in csv.DictReader((sweep_dir / "summary.csv").open())]
    assert written == [*order("val/loss", False), "0"]
    assert "(lowest first)" in (sweep_dir / "summary.md").read_text()

    # the script, from the runs' config (monitor val/loss, mode null)
    for name in ("summary.csv", "summary.md"):
        (sweep_dir / name).unlink()
    ok(run_cli("summarize.py", str(sweep_dir), cwd=sweep_dir.parent))
    written = [row["run"] for row in csv.DictReader((sweep_dir / "summary.csv").open())]
    assert written == [*order("val/loss", False), "0"]

    # another monitor on the command line: its own direction, accuracies highest first
    ok(run_cli("summarize.py", str(sweep_dir), "--monitor", "val/acc", cwd=sweep_dir.parent))
    written = [row["run"] for row in csv.DictReader((sweep_dir / "summary.csv").open())]
    assert written == [*order("val/acc", True), "0"]
    assert "(highest first)" in (sweep_dir / "summary.md").read_text()
    assert list(summarize(sweep_dir, "val/acc", None)["runs"]["run"]) == written

    # a direction that contradicts the metric is refused, and nothing is rewritten
    before = digest(sweep_dir / "summary.csv", sweep_dir / "summary.md")
    result = run_cli(
        "summarize.py", str(sweep_dir), "--monitor", "val/acc", "--mode", "min", cwd=sweep_dir
    )
    assert result.returncode != 0
    assert "error: mode='min' contradicts 'val/acc'" in result.stderr
    assert digest(*before) == before


# 4. integers print as integers, even next to a failed run's empty cells


def test_integer_columns_print_as_integers_next_to_a_failed_run(made_sweep):
    rows = markdown_rows((made_sweep / "summary.md").read_text())
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    for row in rows[:2]:
        assert row["best_epoch"] == row["epochs"] == "1", row
        assert row["model.depth"] in ("1", "2")
        assert re.fullmatch(r"\d+\.\d{4}", row["seconds"]), row  # floats keep 4 digits
        assert re.fullmatch(r"\d\.\d{4}", row["val/acc"]), row
    failed = rows[2]
    assert failed["model.depth"] == "0"
    assert failed["best_epoch"] == failed["epochs"] == failed["val/acc"] == ""
    with (made_sweep / "summary.csv").open() as f:
        assert [r["epochs"] for r in csv.DictReader(f)] == ["1", "1", ""]


# 3. an override set in some runs and absent in others varies, and shows as an empty cell


@pytest.mark.slow
def test_an_override_absent_from_some_runs_varies_and_shows_as_an_empty_cell(tmp_path):
    runs = tmp_path / "outputs"
    for name, overrides in (("a", ["model.width=32"]), ("b", [])):
        ok(
            run_cli(
                "train.py",
                *overrides,
                "trainer.max_epochs=1",
                f"hydra.run.dir={runs / name}",
                cwd=tmp_path,
            )
        )
    printed = ok(run_cli("summarize.py", str(runs), cwd=tmp_path))
    text = (runs / "summary.md").read_text()
    shared = next(line for line in text.splitlines() if line.startswith("Overrides shared"))
    assert "`trainer.max_epochs=1`" in shared and "model.width" not in shared
    rows = {r["run"]: r for r in markdown_rows(text)}
    assert rows["a"]["model.width"] == "32" and rows["b"]["model.width"] == ""
    assert "nan" not in text.lower() and "nan" not in printed.lower()
    assert "<NA>" not in text + printed
    with (runs / "summary.csv").open() as f:
        assert {r["run"]: r["model.width"] for r in csv.DictReader(f)} == {"a": "32", "b": ""}
    ok(run_cli("plot.py", str(runs), "--out", str(tmp_path / "plots"), cwd=tmp_path))
    assert (tmp_path / "plots" / "model.width.png").stat().st_size > 10_000


# 2. a damaged metrics.json: skipped with a warning naming it; missing: unfinished


def edit_json(change):
    """An edit of metrics.json's text: parse it, `change(metrics)` in place, write it back."""

    def edit(text: str) -> str:
        metrics = json.loads(text)
        change(metrics)
        return json.dumps(metrics, indent=2)

    return edit


DAMAGES = {  # an edit of a real metrics.json, and what the message says about it
    "truncated": (lambda text: text[: len(text) // 2], "not valid JSON"),
    "not an object": (lambda text: "[1, 2]", "not a JSON object"),
    "status a number": (edit_json(lambda m: m.update(status=3)), "'status' is 3, not a string"),
    "no status": (edit_json(lambda m: m.pop("status")), "'status' is null, not a string"),
    "metric a string": (
        edit_json(lambda m: m.update({"val/acc": "0.9"})),
        "'val/acc' is \"0.9\", not a number or null",
    ),
    "epoch count a float": (
        edit_json(lambda m: m.update(epochs_trained=1.0)),
        "'epochs_trained' is 1.0, not an integer",
    ),
    "best epoch a string": (
        edit_json(lambda m: m.update(best_epoch="1")),
        "'best_epoch' is \"1\", not an integer",
    ),
    "history an object": (
        edit_json(lambda m: m.update(history={"epoch": 1})),
        "'history' is not a list of objects",
    ),
    "history value a string": (
        edit_json(lambda m: m["history"][0].update({"grad_norm/output": "big"})),
        "'history' is not a list of objects",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_read_metrics_tells_a_damaged_file_from_a_missing_one(sweep_dir, damage, caplog):
    edit, message = DAMAGES[damage]
    path = sweep_dir / "1" / "metrics.json"
    original = path.read_text()
    assert read_metrics(sweep_dir / "1")["status"] == "completed"
    path.write_text(edit(original))
    assert path.read_text() != original  # the edit took
    with pytest.raises(BadMetrics, match=re.escape(message)) as err:
        read_metrics(sweep_dir / "1")
    assert str(path) in str(err.value)
    with caplog.at_level(logging.WARNING):
        assert finished_metrics(sweep_dir / "1") is None  # a sweep runs it again
    assert "counts as not finished" in caplog.text and str(path) in caplog.text
    path.unlink()
    assert read_metrics(sweep_dir / "1") is None  # no file: unfinished, no error


def test_null_metrics_of_a_diverged_run_are_not_damage(sweep_dir):
    path = sweep_dir / "2" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update({"status": "diverged", "val/loss": None, "seconds_per_epoch": None})
    metrics["history"][-1]["train/loss"] = None
    path.write_text(json.dumps(metrics))
    assert finished_metrics(sweep_dir / "2")["status"] == "diverged"


def test_any_folder_of_runs_is_listed_in_natural_order(sweep_dir):
    # a sweep's numbered jobs beside runs with names: job 10 after job 2, names after numbers
    for name in ("10", "baseline", "adam"):
        shutil.copytree(sweep_dir / "1", sweep_dir / name)
    assert list(collect_runs(sweep_dir)["run"]) == ["0", "1", "2", "10", "adam", "baseline"]


def test_summarize_and_plot_skip_a_damaged_run_with_one_warning_and_go_on(sweep_dir, tmp_path):
    damaged = sweep_dir / "1" / "metrics.json"
    damaged.write_text(damaged.read_text()[:100])  # truncated
    (sweep_dir / "2" / "metrics.json").rename(sweep_dir / "2" / "moved.json")  # "still running"
    result = run_cli("summarize.py", str(sweep_dir), cwd=tmp_path)
    ok(result)
    assert len(warnings(result)) == 1
    assert str(damaged) in warnings(result)[0] and "not valid JSON" in warnings(result)[0]
    with (sweep_dir / "summary.csv").open() as f:
        assert {r["run"]: r["status"] for r in csv.DictReader(f)} == {
            "0": "failed",
            "2": "unfinished",
        }

    (sweep_dir / "2" / "moved.json").rename(sweep_dir / "2" / "metrics.json")
    result = run_cli("plot.py", str(sweep_dir), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    ok(result)
    assert len(warnings(result)) == 1 and str(damaged) in warnings(result)[0]
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 10_000


def test_summarize_and_plot_fail_clearly_when_every_run_is_damaged(sweep_dir, tmp_path):
    before = digest(sweep_dir / "summary.csv", sweep_dir / "summary.md")
    for job in ("0", "1", "2"):
        path = sweep_dir / job / "metrics.json"
        path.write_text(path.read_text().replace("{", "[", 1))
    result = run_cli("summarize.py", str(sweep_dir), cwd=tmp_path)
    assert result.returncode != 0
    assert len(warnings(result)) == 3
    assert f"error: No runs (folders with metrics.json or .hydra/) under {sweep_dir}" in (
        result.stderr
    )
    assert "3 skipped for a damaged metrics.json" in result.stderr
    assert digest(*before) == before  # the last good summary stays

    result = run_cli("plot.py", str(sweep_dir), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert result.returncode != 0 and len(warnings(result)) == 3
    assert "error: No finished runs" in result.stderr and "3 skipped" in result.stderr
    assert not (tmp_path / "plots").exists()


@pytest.mark.slow
def test_a_resumed_sweep_runs_a_job_with_a_damaged_metrics_json_again(sweep_dir, tmp_path):
    damaged = sweep_dir / "1" / "metrics.json"
    damaged.write_text(damaged.read_text()[:100])
    kept = (sweep_dir / "2" / "metrics.json").read_text()
    result = run_cli("train.py", "-m", *TINY_CLI, *SWEEP, f"sweep.resume={sweep_dir}", cwd=tmp_path)
    output = ok(result)
    assert f"{damaged}: not valid JSON" in output and "counts as not finished" in output
    assert read_metrics(sweep_dir / "1")["status"] == "completed"  # written again
    assert (sweep_dir / "2" / "metrics.json").read_text() == kept  # skipped


# 1. the report: docs/RESULTS.md only for the full report, never an empty page


def docs_files() -> list[Path]:
    return [DOCS_PAGE, *sorted((DOCS_PAGE.parent / "results").glob("*.png"))]


def test_only_the_full_report_goes_to_docs(tmp_path):
    full = default_runs_dir("fashion_mnist", [])
    assert report_page(list(SECTIONS), "fashion_mnist", [], full) == DOCS_PAGE
    assert report_page(list(reversed(SECTIONS)), "fashion_mnist", [], full) == DOCS_PAGE
    quick = ["trainer.max_epochs=1"]
    for sections, data, sets, runs_dir in [
        (["lecture", "depth"], "fashion_mnist", [], full),  # some sections
        (list(SECTIONS), "mnist", [], default_runs_dir("mnist", [])),  # other data
        (list(SECTIONS), None, [], default_runs_dir(None, [])),
        (list(SECTIONS), "fashion_mnist", quick, default_runs_dir("fashion_mnist", quick)),
        (list(SECTIONS), "fashion_mnist", quick, full),  # other settings, the same runs dir
        (list(SECTIONS), "fashion_mnist", [], tmp_path),  # runs from elsewhere
    ]:
        assert report_page(sections, data, sets, runs_dir) == runs_dir / "RESULTS.md"
    # quick settings never resume into the full report's sweeps
    assert default_runs_dir("fashion_mnist", quick) != full
    assert images_dir(DOCS_PAGE) == DOCS_PAGE.parent / "results"
    assert images_dir(tmp_path / "docs" / "quick.md") == tmp_path / "docs" / "quick"


@pytest.mark.slow
def test_a_quick_report_writes_under_its_runs_dir_and_leaves_docs_alone(tmp_path):
    before = digest(*docs_files())
    runs = tmp_path / "runs"
    result = run_cli("report.py", "normalize", *QUICK_REPORT, "--runs", str(runs), cwd=tmp_path)
    printed = ok(result)
    page = runs / "RESULTS.md"
    assert f"Wrote {page}" in printed and "Not docs/RESULTS.md" in printed
    text = page.read_text()
    assert "## Input normalization" in text and "python scripts/report.py normalize" in text
    assert "(results/normalize_curves.png)" in text
    assert (runs / "results" / "normalize_curves.png").stat().st_size > 10_000
    assert "What we saw" not in text  # docs/notes/ describe the full report, not this one
    assert not (tmp_path / "docs").exists()
    assert digest(*docs_files()) == before

    # a page named elsewhere keeps its plots in its own folder, never in a results/ beside it
    other = tmp_path / "docs" / "QUICK.md"
    sentinel = tmp_path / "docs" / "results" / "normalize_curves.png"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(b"someone else's plot")
    where = ["--runs", str(runs), "--out", str(other)]
    ok(run_cli("report.py", "normalize", "--from-runs", *where, cwd=tmp_path))
    assert "(quick/normalize_curves.png)" in other.read_text()
    assert (tmp_path / "docs" / "quick" / "normalize_curves.png").stat().st_size > 10_000
    assert sentinel.read_bytes() == b"someone else's plot"

    # --from-runs where there are no runs: an error, and nothing written
    for missing in (tmp_path / "nothing", runs / "results"):
        result = run_cli(
            "report.py", "normalize", "--from-runs", "--runs", str(missing), cwd=tmp_path
        )
        assert result.returncode != 0
        assert f"error: No finished runs of normalize in {missing}" in result.stderr
        assert "without --from-runs" in result.stderr
        assert not (missing / "RESULTS.md").exists()
    assert not (tmp_path / "nothing").exists()
    assert digest(*docs_files()) == before


def test_report_from_runs_with_its_default_runs_dir_missing_is_an_error(tmp_path):
    before = digest(*docs_files())
    result = run_cli("report.py", "normalize", "--from-runs", *QUICK_REPORT, cwd=tmp_path)
    assert result.returncode != 0
    expected = tmp_path / default_runs_dir("mnist_5k", QUICK_REPORT[3::2])
    assert expected.relative_to(tmp_path).as_posix() in result.stderr
    assert "which does not exist" in result.stderr and "Nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert digest(*docs_files()) == before


# 0. one rule for run status: means over usable runs only, "n of m", what was left out


def train_run(root: Path, name: str, *overrides: str) -> dict:
    """A tiny real run in root/name with its .hydra/overrides.yaml, as a sweep job has it."""
    metrics = train(make_cfg("model.width=16", "trainer.max_epochs=1", *overrides), root / name)
    (root / name / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(list(overrides)), root / name / ".hydra" / "overrides.yaml")
    return metrics


@pytest.fixture(scope="module")
def lr_seed_runs(tmp_path_factory, data_root) -> Path:
    """optim.lr=0.1,1e30 x seed=0,1 with SGD: the two runs with lr 1e30 diverge."""
    root = tmp_path_factory.mktemp("lr_seed")
    for i, (lr, seed) in enumerate([(lr, s) for lr in ("0.1", "1e30") for s in (0, 1)]):
        train_run(root, str(i), "optim=sgd", f"optim.lr={lr}", f"seed={seed}")
    return root


def test_seed_means_leave_out_diverged_and_unfinished_runs_and_say_n_of_m(lr_seed_runs, tmp_path):
    root = Path(shutil.copytree(lr_seed_runs, tmp_path / "runs"))
    assert [read_metrics(root / r)["status"] for r in "0123"] == [
        "completed", "completed", "diverged", "diverged",
    ]  # fmt: skip
    (root / "1" / "metrics.json").unlink()  # seed 1 of lr 0.1: still running
    good = read_metrics(root / "0")
    tables = summarize(root, "val/acc")
    seeds = tables["seeds"].set_index("optim.lr")
    assert seeds.loc["0.1", "runs"] == "1 of 2" and seeds.loc["0.1", "left out"] == "1 unfinished"
    assert seeds.loc["0.1", "val/acc"] == f"{good['val/acc']:.4f} ± 0.0000"
    assert seeds.loc["1e30", "runs"] == "0 of 2" and seeds.loc["1e30", "left out"] == "2 diverged"
    assert seeds.loc["1e30", "val/acc"] == seeds.loc["1e30", "test/acc"] == ""  # no result
    text = (root / "summary.md").read_text()
    assert "4 runs (1 completed, 2 diverged, 1 unfinished)" in text
    rows = markdown_rows(text.split("## Mean ± std over seeds")[1])
    assert [(r["optim.lr"], r["runs"], r["left out"]) for r in rows] == [
        ("0.1", "1 of 2", "1 unfinished"),
        ("1e30", "0 of 2", "2 diverged"),
    ]
    # the runs table: the usable run first, then the others by status, never ranked among them
    assert list(tables["runs"]["status"]) == ["completed", "diverged", "diverged", "unfinished"]
    # seed_table, the rule itself, on any table of runs (a report's, a plot's)
    runs = collect_runs(root)
    table = seed_table(runs, ["optim.lr"], ["val/acc"])
    assert list(table.columns) == ["optim.lr", "runs", "left out", "n", "of", "val/acc"]
    assert list(table["n"]) == [1, 0] and list(table["of"]) == [2, 2]
    assert list(seed_table(runs, [], ["val/acc"])["runs"]) == ["1 of 4"]


@pytest.mark.slow
def test_a_run_that_early_stopping_ended_shows_as_stopped_early_and_counts(tmp_path):
    # min_delta 10: no epoch after the first counts as better, so patience 1 stops at epoch 2
    stop = ["trainer.early_stopping.min_delta=10", "trainer.early_stopping.patience=1"]
    for seed, epochs in ((0, 3), (1, 1)):  # seed 1 trains its one epoch: completed
        metrics = train_run(
            tmp_path, str(seed), *stop, f"trainer.max_epochs={epochs}", f"seed={seed}"
        )
        assert metrics["status"] == "completed"
        assert metrics["stopped_early"] == (seed == 0) and metrics["epochs_trained"] == 2 - seed
    assert list(collect_runs(tmp_path)["status"]) == ["stopped early", "completed"]
    seeds = summarize(tmp_path)["seeds"]  # a stopped run's numbers are a result: in the mean
    assert list(seeds["runs"]) == ["1 of 1", "1 of 1"] and list(seeds["left out"]) == ["", ""]
    assert "2 runs (1 completed, 1 stopped early)" in (tmp_path / "summary.md").read_text()


# 0b. plots of an Optuna search: continuous keys on one axis, pruned trials marked

SEARCHED = [
    (0.012345678901234567, 0.1234567890123),
    (0.0234567890123456, 0.2345678901234),
    (0.034567890123456789, 0.0456789012345),
    (0.045678901234567891, 0.3456789012345),
    (0.056789012345678912, 0.0567890123456),
    (0.067890123456789123, 0.4567890123456),
]
PRUNED_TRIALS = ("1", "4")


@pytest.fixture(scope="module")
def search_runs(tmp_path_factory, data_root) -> Path:
    """Six trials as an Optuna search over optim.lr and model.dropout leaves them: Optuna's
    raw floats in overrides.yaml, trials 1 and 4 pruned after epoch 1 (status pruned)."""
    root = tmp_path_factory.mktemp("search")
    for i, (lr, dropout) in enumerate(SEARCHED):
        pruned = str(i) in PRUNED_TRIALS
        overrides = [f"optim.lr={lr}", f"model.dropout={dropout}"]
        train(make_cfg(*overrides, "model.width=16", f"trainer.max_epochs={1 if pruned else 2}"),
              root / str(i))  # fmt: skip
        (root / str(i) / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(overrides), root / str(i) / ".hydra" / "overrides.yaml")
        if pruned:
            edit = edit_json(lambda m: m.update(status="pruned"))
            path = root / str(i) / "metrics.json"
            path.write_text(edit(path.read_text()))
    return root


def texts(fig) -> list[str]:
    """Every title, legend entry and tick label of a figure."""
    found = [fig.get_suptitle()]
    for ax in fig.axes:
        found += [ax.get_title(), ax.get_xlabel()]
        found += [t.get_text() for t in ax.get_xticklabels()]
        if ax.get_legend():
            found += [t.get_text() for t in ax.get_legend().get_texts()]
    return found


def test_plots_of_a_search_have_one_axis_per_float_and_mark_pruned_trials(search_runs):
    runs = collect_runs(search_runs)
    assert list(runs["status"]).count("pruned") == 2
    keys = ["model.dropout", "optim.lr"]
    curves = curves_figure(search_runs, runs, keys)
    assert len(curves.axes) == 1  # not a panel per dropout
    against = against_figure(runs, "optim.lr", ["model.dropout"])
    for fig in (curves, against):
        for text in texts(fig):  # 4 significant digits at most, never 18
            assert not re.search(r"\d{6,}", text), text
        pruned = [line for ax in fig.axes for line in ax.lines if line.get_gid() == "pruned"]
        assert pruned and all(set(line.get_ydata()) == {0.0} for line in pruned)
        legend = [t for ax in fig.axes for t in ax.get_legend().get_texts()]
        assert sum("pruned" in t.get_text() for t in legend) == len(fig.axes)  # one entry each
    assert "lr=0.01235" in " ".join(texts(curves))
    # the pruned trials' values are no points of the final metrics, only marks at their lr
    for ax in against.axes:
        marks = [x for line in ax.lines if line.get_gid() == "pruned" for x in line.get_xdata()]
        assert sorted(marks) == sorted(SEARCHED[int(t)][0] for t in PRUNED_TRIALS)
        dots = [c for c in ax.collections if isinstance(c, PathCollection)]  # each seed's
        points = [x for c in dots for x, _ in c.get_offsets()]
        assert len(points) == 4 and not set(points) & set(marks)
