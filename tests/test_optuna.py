"""hparams_search=optuna: dltips' own Optuna sweeper, through the command line: the study,
its best trial in the summary, pruning, resuming a study, parallel trials (joblib)."""

import json
import re
import signal
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import TINY_CLI, file_digests, run_cli, start_script, wait_for
from dltips.optuna_plots import plot_history
from dltips.sweep import threads_per_job
from hydra_plugins.dltips_optuna_sweeper._search_space import search_space

# a search over the learning rate only, where lr=10 (Adam) leaves val/acc at chance (0.1)
# from the first epoch on, while lr=0.001 reaches ~0.75. The TPE sampler draws its first 10
# trials at random (seeded by seed=0); the median pruner prunes once 2 trials completed.
LR_SEARCH = [
    "optim.lr=choice(0.001,10)",
    "optim.weight_decay=0",
    "model.dropout=0",
    "model.depth=1",
    "hydra.sweeper.sampler.n_startup_trials=10",
    "hydra/sweeper/pruner=median",
    "hydra.sweeper.pruner.n_startup_trials=2",
    "hydra.sweeper.n_trials=6",
]


def search(tmp_path: Path, *overrides: str, resume: bool = False, check: bool = True):
    """Run `train.py -m hparams_search=optuna` with tiny runs in tmp_path/search, or resume
    the search there; (its sweep dir, the result)."""
    sweep_dir = tmp_path / "search"
    where = f"sweep.resume={sweep_dir}" if resume else f"hydra.sweep.dir={sweep_dir}"
    result = run_cli(
        "train.py", "-m", "hparams_search=optuna", *TINY_CLI, *overrides, where, cwd=tmp_path
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir, result


def load(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="dltips", storage=f"sqlite:///{sweep_dir}/optuna.db")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def job_overrides(run_dir: Path) -> list[str]:
    lines = (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
    return [line.removeprefix("- ") for line in lines]


def test_search_space_reads_hydra_override_syntax():
    space, fixed = search_space(
        {
            "optim.lr": "tag(log, interval(0.0001, 0.1))",
            "model.dropout": "interval(0.0, 0.7)",
            "model.depth": "range(1, 4)",
            "model.width": "choice(64, 128)",
            "optim": "adam",
        },
        ["model.width=32", "model=relu,tanh"],  # the command line wins over params
    )
    assert space == {
        "optim.lr": FloatDistribution(0.0001, 0.1, log=True),
        "model.dropout": FloatDistribution(0.0, 0.7),
        "model.depth": IntDistribution(1, 4),  # hydra-optuna-sweeper's range: 4 included
        "model": CategoricalDistribution(["relu", "tanh"]),
    }
    assert fixed == {"optim": "adam", "model.width": "32"}
    with pytest.raises(ValueError, match="not a search space"):
        search_space({"seed": "glob(*)"}, [])


@pytest.mark.slow
def test_tpe_search_keeps_its_study_and_the_summary_agrees(tmp_path):
    sweep_dir, _ = search(tmp_path, "hydra.sweeper.n_trials=6")
    study = load(sweep_dir)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    # trial N ran as job N, with trial N's parameters
    for trial in study.trials:
        overrides = job_overrides(sweep_dir / str(trial.number))
        assert f"optim.lr={trial.params['optim.lr']}" in overrides
        assert f"model.depth={trial.params['model.depth']}" in overrides
        assert "model.width=32" in overrides  # fixed on the command line: not searched
        assert "model.width" not in trial.params
        assert trial.value == pytest.approx(metrics(sweep_dir / str(trial.number))["val/acc"])
    best = study.best_trial
    assert best.value == max(t.value for t in study.trials)
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert summary["val/acc"].iloc[0] == pytest.approx(best.value)  # highest first
    assert str(summary["run"].iloc[0]) == str(best.number)
    assert {"optim.lr", "optim.weight_decay", "model.dropout", "model.depth"} <= set(summary)
    text = (sweep_dir / "summary.md").read_text()
    assert "6 trials (6 complete, 0 pruned, 0 failed)" in text
    assert f"Best trial: **{best.number}** (run `{best.number}`), value {best.value:.4f}" in text
    assert re.search(rf"\| model.depth +\| {best.params['model.depth']} +\|", text)

    result = run_cli("plot.py", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("optuna_history.png", "optuna_importances.png"):
        png = sweep_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def check_lr_10_pruned(sweep_dir: Path) -> None:
    """Once a trial with lr=0.001 completed, every trial with lr=10 is pruned after epoch 1,
    with status pruned and its checkpoints; no trial with lr=0.001 is pruned."""
    study = load(sweep_dir)
    lrs = [t.params["optim.lr"] for t in study.trials]
    assert 0.001 in lrs[:2] and 10 in lrs[2:], f"the sampler drew {lrs}: choose another seed"
    for trial, lr in zip(study.trials, lrs):
        run_dir = sweep_dir / str(trial.number)
        if trial.number >= 2 and lr == 10:
            assert trial.state == TrialState.PRUNED
            assert trial.user_attrs["pruned_at_epoch"] == 1
            assert metrics(run_dir)["status"] == "pruned"
            assert metrics(run_dir)["epochs_trained"] == 1
            assert {"last.pt", "best.pt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
        else:
            assert trial.state == TrialState.COMPLETE, (trial.number, lr)
            assert metrics(run_dir)["status"] == "completed"
            assert metrics(run_dir)["epochs_trained"] == 2
    pruned = sum(t.state == TrialState.PRUNED for t in study.trials)
    assert pruned >= 1
    assert f"6 trials ({6 - pruned} complete, {pruned} pruned, 0 failed)" in (
        (sweep_dir / "summary.md").read_text()
    )


@pytest.mark.slow
def test_median_pruner_stops_the_trials_with_lr_10(tmp_path):
    sweep_dir, result = search(tmp_path, *LR_SEARCH)
    check_lr_10_pruned(sweep_dir)
    assert "Pruned at epoch 1: val/acc 0.1000" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=batched"],
    ],
    ids=["joblib", "batched"],
)
def test_launchers_run_two_trials_at_a_time_and_they_prune(tmp_path, launcher):
    """joblib: each trial in its own process, reaching the study through the sqlite file
    (as with submitit and SLURM, whose launchers test_sweeps.py runs); batched: two trials
    trained as one model, a pruned one frozen while the other goes on."""
    sweep_dir, _ = search(tmp_path, *LR_SEARCH, *launcher, "hydra.sweeper.n_jobs=2")
    check_lr_10_pruned(sweep_dir)
    if "hydra/launcher=joblib" in launcher:
        threads = {metrics(p.parent)["num_threads"] for p in sweep_dir.glob("*/metrics.json")}
        assert threads == {threads_per_job(2)}


@pytest.mark.slow
def test_resumed_search_runs_only_new_trials_in_new_dirs(tmp_path):
    sweep_dir, _ = search(tmp_path, "hydra.sweeper.n_trials=3", "trainer.max_epochs=1")
    before = {n: file_digests(sweep_dir / n) for n in ("0", "1", "2")}
    first = [t.params for t in load(sweep_dir).trials]

    _, result = search(tmp_path, "hydra.sweeper.n_trials=5", "trainer.max_epochs=1", resume=True)
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert [t.params for t in study.trials[:3]] == first
    assert all(t.params not in first for t in study.trials[3:])  # new draws, not repeats
    assert {n: file_digests(sweep_dir / n) for n in ("0", "1", "2")} == before
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == list("01234")
    assert "#0 " not in result.stdout + result.stderr  # finished trials are not launched
    assert len(pd.read_csv(sweep_dir / "summary.csv")) == 5

    # another search space is refused before anything is written
    everything = file_digests(sweep_dir)
    _, refused = search(
        tmp_path,
        "hydra.sweeper.n_trials=6",
        "trainer.max_epochs=1",
        "model.depth=range(1,2)",
        resume=True,
        check=False,
    )
    assert refused.returncode == 1
    assert "searches otherwise than the study dltips it continues" in refused.stderr
    assert "model.depth: IntDistribution(high=4" in refused.stderr
    assert file_digests(sweep_dir) == everything


@pytest.mark.slow
def test_interrupted_search_continues_its_trial_in_place(tmp_path):
    sweep_dir = tmp_path / "search"
    # 3 epochs: Ctrl-C lands inside trial 1, which takes a few tenths of a second per epoch
    command = ["train.py", "-m", "hparams_search=optuna", "model.width=32", "trainer.max_epochs=3"]
    process = start_script(
        *command, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    wait_for(lambda: (sweep_dir / "1" / "checkpoints" / "last.pt").is_file(), what="trial 1")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output[-3000:]
    assert [t.state for t in load(sweep_dir).trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    done = file_digests(sweep_dir / "0")

    result = run_cli(
        *command, "hydra.sweeper.n_trials=4", f"sweep.resume={sweep_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert file_digests(sweep_dir / "0") == done
    continued = metrics(sweep_dir / "1")
    assert [h["epoch"] for h in continued["history"]] == [1, 2, 3]  # each epoch once
    assert study.trials[1].value == pytest.approx(continued["val/acc"])
    assert "Resumed from" in (sweep_dir / "1" / "train.log").read_text()


def test_direction_that_contradicts_the_monitor_is_refused(tmp_path):
    sweep_dir, result = search(tmp_path, "hydra.sweeper.direction=minimize", check=False)
    assert result.returncode == 1
    assert (
        "error: hydra.sweeper.direction=minimize contradicts "
        "trainer.early_stopping.monitor=val/acc" in result.stderr
    )
    assert "Use hydra.sweeper.direction=maximize" in result.stderr
    assert not sweep_dir.exists()


def test_history_plot_marks_pruned_trials_and_steps_with_the_best_so_far():
    study = optuna.create_study(direction="maximize", study_name="s")
    lr = FloatDistribution(1e-4, 1.0, log=True)
    for value, state in [(0.5, "COMPLETE"), (0.3, "PRUNED"), (0.4, "COMPLETE"), (0.7, "COMPLETE")]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.01}, distributions={"lr": lr}, value=value, state=TrialState[state]
            )
        )
    ax = plot_history(study).axes[0]
    dots, crosses, best = ax.lines
    assert list(dots.get_xdata()) == [0, 2, 3] and list(crosses.get_xdata()) == [1]
    assert list(best.get_ydata()) == [0.5, 0.5, 0.7]  # the running maximum, complete trials only
