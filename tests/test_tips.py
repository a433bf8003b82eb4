"""The lecture's presets show the lecture's directions, and the report script writes its page."""

import re
from unittest import mock

import pandas as pd
import pytest

from conftest import make_cfg, run_cli
from dltips import report_tips
from dltips.train import train

SHORT = ["data=mnist_5k", "data.train_size=null", "trainer.early_stopping.restore_best=true"]


@pytest.mark.parametrize(
    ("step", "epochs", "learns"),
    [
        (0, 10, False),  # sigmoid + mean squared error: stuck near chance
        (1, 25, True),  # cross-entropy: leaves the plateau
        (3, 3, False),  # 13 sigmoid layers: vanishing gradients, near chance
        (4, 6, True),  # 13 ReLU layers: learns (val/acc 0.47 at epoch 5 on the CPU)
    ],
)
@pytest.mark.slow
def test_lecture_steps_show_the_lectures_direction(tmp_path, step, epochs, learns):
    cfg = make_cfg(
        f"experiment=lecture/step{step}", *SHORT, f"trainer.max_epochs={epochs}", tiny=False
    )
    assert cfg.model.width == 689 and cfg.data.batch_size == 100
    test_acc = train(cfg, tmp_path)["test/acc"]
    if learns:
        assert test_acc > 0.3, f"step {step} should learn, test/acc {test_acc}"
    else:
        assert test_acc < 0.2, f"step {step} should stay near chance, test/acc {test_acc}"


@pytest.mark.slow
def test_lecture_presets_change_one_thing_per_step():
    steps = [make_cfg(f"experiment=lecture/step{i}", tiny=False) for i in range(9)]
    assert [c.model.depth for c in steps] == [3, 3, 3, 13, 13, 13, 13, 13, 3]
    assert [c.model.activation._target_.rsplit(".")[-1] for c in steps] == (
        ["Sigmoid"] * 4 + ["ReLU"] * 5
    )
    assert [c.loss.criterion._target_.rsplit(".")[-1] for c in steps] == (
        ["SoftmaxMSELoss"] + ["CrossEntropyLoss"] * 8
    )
    assert [c.data.batch_size for c in steps] == [100, 100, 10000] + [100] * 6
    assert [c.data.normalize for c in steps] == ["unit"] * 5 + ["none"] + ["unit"] * 3
    assert [c.optim._target_.rsplit(".")[-1] for c in steps] == ["SGD"] * 6 + ["Adam"] * 3
    assert [c.data.test_noise_std for c in steps] == [0.0] * 7 + [1.0] * 2
    assert [c.model.dropout for c in steps] == [0.0] * 8 + [0.7]
    assert all(c.data.name == "mnist" and c.data.train_size == 10000 for c in steps)
    assert all(
        c.trainer.max_epochs == 20 and c.trainer.early_stopping.patience is None for c in steps
    )


@pytest.mark.slow
def test_report_writes_markdown_tables_and_plots_from_a_tiny_sweep(tmp_path):
    out = tmp_path / "docs" / "RESULTS.md"
    where = ["--runs", str(tmp_path / "runs"), "--out", str(out)]
    result = run_cli(
        "report.py",
        "depth",
        "loss",
        "--data",
        "mnist_5k",
        "--set",
        "trainer.max_epochs=1",
        "--set",
        "model.width=16",
        "--set",
        "seed=0,1",  # two seeds, two depths: the sections' tables and plots, in seconds
        "--set",
        "model.depth=1,3",
        *where,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "## Depth and the activation function" in text and "## Mean squared error" in text
    assert "Ran: `mnist_5k`" in text and "python scripts/report.py depth loss" in text
    header = next(line for line in text.splitlines() if line.startswith("| model "))
    assert "model.depth" in header and "test/acc" in header  # differing settings as columns
    for png in ("depth_curves", "depth_model.depth", "depth_grad_norms", "loss_loss"):
        assert (out.parent / "results" / f"{png}.png").stat().st_size > 10_000
        assert f"(results/{png}.png)" in text
    # --from-runs writes the page from the same runs without training again
    again = run_cli("report.py", "depth", "--from-runs", *where, cwd=tmp_path)
    assert again.returncode == 0 and "## Depth" in out.read_text()
    assert "## Mean squared error" not in out.read_text()


# each preset of the lecture's last tips, narrowed to a few runs of one short epoch
LAST_TIPS = {
    "bagging": ["seed=0,1,2,3", "model.dropout=0,0.3", "data.train_size=1000"],
    "dropout_ensemble": ["model=relu", "seed=0,1", "data.train_size=1000"],
    "deep_vs_wide": [
        "model=relu",
        "model.params=100000",
        "model.depth=1,3",
        "data.train_size=1000",
    ],
    "small_data": [
        "data.train_size=350,700",
        "data.subset_seed=0,1",
        "optim=sgd,adam",
        "optim.lr=0.01,0.1",
        "seed=0",
    ],
    "small_data_full": ["optim=sgd,adam", "optim.lr=0.01,0.1", "seed=0"],
}


@pytest.mark.slow
def test_the_last_tips_presets_run_and_their_report_sections_are_written(tmp_path):
    runs = tmp_path / "runs"
    for name, narrow in LAST_TIPS.items():
        result = run_cli(
            "train.py",
            "-m",
            f"experiment=tips/{name}",
            "data=mnist_5k",
            "trainer.max_epochs=1",
            "hydra/launcher=batched",
            *narrow,
            f"hydra.sweep.dir={runs / name}",
            cwd=tmp_path,
        )
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert len(list((runs / name).glob("*/metrics.json"))) >= 2, name
    out = tmp_path / "page.md"
    sections = ["bagging", "dropout_ensemble", "deep_vs_wide", "small_data"]
    with mock.patch.object(report_tips, "MC_SAMPLES", (1, 100)):  # 4 evaluations, not 14
        result = run_cli(
            "report.py",
            *sections,
            "--from-runs",
            "--runs",
            str(runs),
            "--out",
            str(out),
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    # bagging: the ensembles scripts/eval.py evaluated, one row per setting
    assert "| bootstrap=True dropout=0 " in text
    # per setting (bootstrap x dropout): the ensemble of all 4 and one disjoint ensemble of 4
    assert len(list((runs / "bagging_eval").glob("*/eval.json"))) == 4 * 2
    assert "Bagging (ensembles of 4 bootstrap networks, no dropout) against one network" in text
    # dropout: N masks for each run, against weight scaling
    assert "the average of 100 masks against weight scaling" in text
    # deep vs wide: the ordinary section, ranked by depth
    assert "model.depth" in text and "(page/deep_vs_wide_model.depth.png)" in text
    # small data: a ranking per subset draw (2) and seed (1) against the full set's
    assert "Spearman ρ with the full set" in text and re.search(r"\| 350 +\| 2 +\|", text)
    for png in ("bagging_members", "dropout_ensemble_masks", "small_data_rank"):
        assert (tmp_path / "page" / f"{png}.png").stat().st_size > 10_000


def test_bagging_ensembles_are_all_the_completed_runs_then_disjoint_fours_in_seed_order():
    runs = pd.DataFrame(
        {
            "data.bootstrap": ["True"] * 9 + ["False"] * 4,
            "model.dropout": ["0"] * 13,
            "seed": [str(s) for s in (8, 0, 1, 2, 3, 4, 5, 6, 7)] + ["0", "1", "2", "3"],
            "status": ["completed"] * 3 + ["diverged"] + ["completed"] * 9,
            "path": [f"run{i}" for i in range(13)],
        }
    )
    jobs = report_tips.bagging_jobs(runs)
    # seeds 0..8 but seed 2 diverged: 8 members, in seed order; two disjoint fours
    bootstrapped = ["run1", "run2", "run4", "run5", "run6", "run7", "run8", "run0"]
    assert jobs == [
        ("bootstrap=False dropout=0", "all", ["run9", "run10", "run11", "run12"]),
        ("bootstrap=False dropout=0", "disjoint 0", ["run9", "run10", "run11", "run12"]),
        ("bootstrap=True dropout=0", "all", bootstrapped),
        ("bootstrap=True dropout=0", "disjoint 0", bootstrapped[:4]),
        ("bootstrap=True dropout=0", "disjoint 1", bootstrapped[4:]),
    ]
