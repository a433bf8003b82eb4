"""Nothing mislabelled, nothing overwritten: resumes and sweeps through the real CLI."""

import json
import os
import shlex
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from conftest import (
    CPU_ONLY,
    ROOT,
    TINY_CLI,
    file_digests,
    run_cli,
    run_script,
    start_script,
    wait_for,
)
from dltips.checkpoint import load_checkpoint
from dltips.resume import override_arg
from dltips.runs import summarize

pytestmark = pytest.mark.slow
ENV = {**os.environ, **CPU_ONLY}  # for commands pasted into a shell
# many short steps: a signal lands while training, not during start-up
SLOW_EPOCHS = [
    "model.width=32",
    "data.train_size=2000",
    "data.batch_size=10",
    "trainer.early_stopping.patience=null",
]


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode != 0, output(result)[-2000:]
    assert message in result.stderr, output(result)[-2000:]
    assert "Traceback" not in output(result)


def train_cli(tmp_path: Path, *args: str, cwd: Path | None = None):
    """scripts/train.py with TINY_CLI, flags (-m) first as argparse wants them."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    return run_cli("train.py", *flags, *TINY_CLI, *overrides, cwd=cwd or tmp_path)


def last_epoch(run_dir: Path) -> int:
    last = run_dir / "checkpoints" / "last.pt"
    try:
        return load_checkpoint(last)["epoch"] if last.is_file() else -1
    except Exception:  # being replaced this very moment
        return -1


# ---- sweeps


def test_resumed_sweep_with_other_overrides_is_refused_and_changes_nothing(tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = ["model=sigmoid,relu", "optim=sgd,adam"]
    first = train_cli(tmp_path, "-m", *grid, f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, output(first)[-2000:]
    before = file_digests(sweep_dir)

    fewer = train_cli(tmp_path, "-m", "model.depth=1,2,3", f"sweep.resume={sweep_dir}")
    assert_refused(fewer, "the sweep has jobs 0 to 3, but this command makes 3")
    other = train_cli(
        tmp_path, "-m", "model=tanh,relu", "optim=sgd,adam", f"sweep.resume={sweep_dir}"
    )
    assert_refused(other, "job 0 was run with other overrides than this command gives it")
    assert "model: sigmoid -> tanh" in other.stderr and "optim:" not in other.stderr
    assert file_digests(sweep_dir) == before

    same = train_cli(tmp_path, "-m", *grid, f"sweep.resume={sweep_dir}")
    assert same.returncode == 0, output(same)[-2000:]
    assert output(same).count("Already completed, skipped") == 4
    for job in "0123":  # how each job was started is never rewritten
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            path = f"{job}/.hydra/{name}"
            assert file_digests(sweep_dir)[path] == before[path]
        assert file_digests(sweep_dir)[f"{job}/metrics.json"] == before[f"{job}/metrics.json"]
    summary = pd.read_csv(sweep_dir / "summary.csv").set_index("run")
    assert summary.loc[0, "model"] == "sigmoid" and summary.loc[0, "optim"] == "sgd"


def test_a_sweep_dir_that_holds_a_sweep_needs_sweep_resume(tmp_path):
    sweep_dir = tmp_path / "sweep"
    assert train_cli(tmp_path, "-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}").returncode == 0
    before = file_digests(sweep_dir)
    again = train_cli(tmp_path, "-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert_refused(again, "already holds a sweep. Continue it with the same command plus")
    assert file_digests(sweep_dir) == before


def take_the_next_seconds(outputs: Path, seconds: int = 30) -> None:
    """Make the dirs named by this second and the next ones, as other commands started then
    would have made them before writing anything."""
    now = datetime.now()
    for t in (now + timedelta(seconds=s) for s in range(seconds)):
        (outputs / f"{t:%Y-%m-%d}" / f"{t:%H-%M-%S}").mkdir(parents=True, exist_ok=True)


def the_dir_it_took(result: subprocess.CompletedProcess, outputs: Path) -> Path:
    """The `<TIME>_2` dir a command wrote to; every taken dir is still empty."""
    assert result.returncode == 0, output(result)[-2000:]
    assert "is taken (another command started in the same second): writing to" in output(result)
    (claimed,) = outputs.glob("*/*_2")
    assert all(not any(d.iterdir()) for d in outputs.glob("*/*") if d != claimed)
    return claimed


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_commands_started_in_the_same_second_get_dirs_of_their_own(tmp_path, sweep):
    # another command, started this second (or in the next 30), has made the dir named by
    # that second and written nothing yet; sharing it, the two would overwrite each other's
    # results under each other's settings
    outputs = tmp_path / "outputs" / ("multirun" if sweep else "")
    take_the_next_seconds(outputs)
    result = train_cli(tmp_path, *(["-m", "seed=3,4"] if sweep else ["seed=3"]))
    claimed = the_dir_it_took(result, outputs)
    runs = sorted(p.parent for p in claimed.rglob("metrics.json"))
    assert [p.relative_to(claimed).as_posix() for p in runs] == (["0", "1"] if sweep else ["."])
    for run, seed in zip(runs, [3, 4]):
        assert f"seed={seed}" in (run / ".hydra" / "overrides.yaml").read_text()
        assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    if sweep:  # the dir it took is the sweep's: summary, and resume
        assert (claimed / "summary.md").is_file()
        again = train_cli(tmp_path, "-m", "seed=3,4", f"sweep.resume={claimed}")
        assert output(again).count("Already completed, skipped") == 2, output(again)[-2000:]


def test_trainer_resume_in_a_sweep_is_refused(tmp_path):
    result = train_cli(tmp_path, "-m", "seed=0,1", "trainer.resume=some/run")
    assert_refused(result, "trainer.resume continues one run and cannot be given to a sweep")
    assert "sweep.resume=<sweep dir>" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_interrupted_sweep_says_sweep_resume_and_that_command_finishes_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *SLOW_EPOCHS, "model=sigmoid,relu", "trainer.max_epochs=3"]
    proc = start_script("train.py", *command, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    wait_for(lambda: last_epoch(sweep_dir / "0") >= 1, what="job 0 to finish epoch 1")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:]
    hint = override_arg("sweep.resume", sweep_dir.resolve())
    assert f"to continue, run the same command plus {hint}" in out
    assert "trainer.resume" not in out
    assert not (sweep_dir / "1").exists()

    # the printed hint, pasted into a shell after the same command
    line = shlex.join(["python", str(ROOT / "scripts" / "train.py"), *command]) + " " + hint
    done = subprocess.run(
        ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resumed from" in (sweep_dir / "0" / "train.log").read_text()
    metrics = {j: json.loads((sweep_dir / j / "metrics.json").read_text()) for j in "01"}
    assert all(m["status"] == "completed" and m["epochs_trained"] == 3 for m in metrics.values())


def test_a_run_resumed_while_it_still_trains_is_refused_and_the_training_goes_on(tmp_path):
    run = tmp_path / "run"
    command = [*SLOW_EPOCHS, "trainer.max_epochs=4"]
    proc = start_script("train.py", *command, f"hydra.run.dir={run}", cwd=tmp_path)
    try:
        wait_for(lambda: last_epoch(run) >= 1, what="epoch 1")
        proc.send_signal(signal.SIGSTOP)  # still training, for as long as the test needs
        before = file_digests(run)
        again = train_cli(tmp_path, *command, f"trainer.resume={run}")
        assert_refused(again, "another process is training this run right now")
        assert file_digests(run) == before  # the refused command wrote nothing
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_trained"] == 4


def test_a_sweep_resumed_twice_skips_the_jobs_the_other_command_trains(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *SLOW_EPOCHS, "seed=0", "trainer.max_epochs=3"]
    first = start_script("train.py", *command, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    try:
        wait_for(lambda: last_epoch(sweep_dir / "0") >= 1, what="job 0 to finish epoch 1")
        first.send_signal(signal.SIGSTOP)
        before = file_digests(sweep_dir / "0")
        second = train_cli(tmp_path, *command, f"sweep.resume={sweep_dir}")
        assert second.returncode != 0, output(second)[-2000:]
        assert "no job of the sweep completed (0 of 1 failed, 1 unfinished)" in output(second)
        assert "Job skipped:" in output(second), output(second)[-2000:]
        assert "another process is training this run right now" in output(second)
        after = file_digests(sweep_dir / "0")
        assert after.pop("train.log") != before.pop("train.log")  # the job's log says so
        assert after == before  # and nothing else: no failure recorded in its metrics.json
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, out[-2000:]
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_trained"] == 3


def test_a_sweep_whose_every_job_fails_exits_non_zero_and_says_where(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_cli(tmp_path, "-m", "optim.lr=-1,-2", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode != 0
    last = output(result).strip().splitlines()[-1]
    assert "no job of the sweep completed (2 of 2 failed)" in last
    assert str(sweep_dir / "summary.md") in last


def test_a_sweep_with_some_failed_jobs_exits_zero_and_counts_them(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_cli(tmp_path, "-m", "optim.lr=-1,0.001", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, output(result)[-2000:]
    assert "1 of 2 jobs failed; their errors are in" in output(result).strip().splitlines()[-1]


# ---- single runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-epoch run made by the CLI; tests copy it before touching it."""
    folder = tmp_path_factory.mktemp("finished")
    result = train_cli(folder, f"hydra.run.dir={folder / 'run'}")
    assert result.returncode == 0, output(result)[-2000:]
    return folder / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-a", str(run), str(tmp_path / "run")], check=True)
    return tmp_path / "run"


def test_evaluations_started_in_the_same_second_get_dirs_of_their_own(tmp_path, finished_run):
    outputs = tmp_path / "outputs" / "eval"
    take_the_next_seconds(outputs)
    claimed = the_dir_it_took(run_script("eval.py", f"ckpt={finished_run}", cwd=tmp_path), outputs)
    assert json.loads((claimed / "eval.json").read_text())["split"] == "test"


def test_resume_with_other_settings_is_refused_listing_them(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    before = file_digests(run)
    result = train_cli(
        tmp_path, "model=sigmoid", "seed=3", "trainer.max_epochs=4", f"trainer.resume={run}"
    )
    assert_refused(result, "was written by a run with other settings")
    assert "model.activation._target_: 'torch.nn.ReLU' -> 'torch.nn.Sigmoid'" in result.stderr
    assert "seed: 0 -> 3" in result.stderr
    assert "max_epochs:" not in result.stderr  # may change on resume: not a difference
    assert file_digests(run) == before
    assert not (tmp_path / "outputs").exists()


def test_resume_continues_in_the_runs_own_dir_and_log(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    hydra_files = {k: v for k, v in file_digests(run).items() if k.startswith(".hydra/")}
    result = train_cli(tmp_path, "trainer.max_epochs=3", f"trainer.resume={run}")
    assert result.returncode == 0, output(result)[-2000:]
    assert not (tmp_path / "outputs").exists()  # no new run dir
    log = (run / "train.log").read_text()
    assert "epoch 2/2" in log and "Resumed from" in log and "epoch 3/3" in log
    assert "Resuming with changed settings: trainer.max_epochs: 2 -> 3" in log
    assert {k: v for k, v in file_digests(run).items() if k.startswith(".hydra/")} == hydra_files
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3 and len(metrics["epoch_seconds"]) == 3


def test_resume_with_nothing_to_train_leaves_every_file_alone(tmp_path):
    # min_delta 10: no epoch after the first counts as better, so patience 1 stops at epoch 2
    settings = ["trainer.early_stopping.min_delta=10", "trainer.early_stopping.patience=1"]
    run = tmp_path / "run"
    first = train_cli(tmp_path, *settings, "trainer.max_epochs=5", f"hydra.run.dir={run}")
    assert first.returncode == 0, output(first)[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["epochs_trained"] == 2
    before = {k: v for k, v in file_digests(run).items() if k != "train.log"}
    for max_epochs in (1, 2, 9):
        result = train_cli(
            tmp_path, *settings, f"trainer.max_epochs={max_epochs}", f"trainer.resume={run}"
        )
        assert result.returncode == 0, output(result)[-2000:]
        assert "Nothing to do" in output(result)
        assert {k: v for k, v in file_digests(run).items() if k != "train.log"} == before


def test_resume_after_the_last_epoch_but_before_metrics_keeps_earlier_values(
    tmp_path, finished_run
):
    run = copy_run(finished_run, tmp_path)
    original = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()  # killed between the last checkpoint and metrics.json
    result = train_cli(tmp_path, f"trainer.resume={run}")
    assert result.returncode == 0, output(result)[-2000:]
    rewritten = json.loads((run / "metrics.json").read_text())
    # the time until the last checkpoint is kept, plus this process's own (the killed one's
    # time after its checkpoint is lost with it: either total may be the larger)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["wall_seconds"]
    assert rewritten.pop("wall_seconds") > saved
    original.pop("wall_seconds")
    assert rewritten == original  # epoch_seconds, seconds_per_epoch, history, final metrics


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.depth=0"], "model.depth=0: must be an integer >= 1"),
        (["trainer.resume=no/such/run"], "no such run directory"),
    ],
)
def test_a_command_that_fails_before_training_leaves_no_run_dir(tmp_path, overrides, message):
    result = train_cli(tmp_path, *overrides)
    assert_refused(result, message)
    assert not (tmp_path / "outputs").exists()


def test_a_run_dir_that_holds_a_run_is_not_overwritten(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    before = file_digests(run)
    result = train_cli(tmp_path, f"hydra.run.dir={run}")
    assert_refused(result, "already holds a run. Continue it with 'trainer.resume=")
    assert file_digests(run) == before


def test_ctrl_c_hint_is_copy_paste_safe_from_a_dir_with_spaces_and_umlauts(tmp_path):
    cwd = tmp_path / "dir with spaces" / "übung"
    cwd.mkdir(parents=True)
    proc = start_script("train.py", *SLOW_EPOCHS, "trainer.max_epochs=3", cwd=cwd)
    wait_for(lambda: any(last_epoch(p) >= 1 for p in cwd.glob("outputs/*/*")), what="epoch 1")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out
    (run,) = cwd.glob("outputs/*/*")
    hint = out.split("to continue, run the same command plus ", 1)[1].splitlines()[0]
    assert hint == override_arg("trainer.resume", run)
    line = shlex.join(
        ["python", str(ROOT / "scripts" / "train.py"), *SLOW_EPOCHS, "trainer.max_epochs=3"]
    )
    done = subprocess.run(
        ["bash", "-c", f"{line} {hint}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 3
    assert len(list(cwd.glob("outputs/*/*"))) == 1


def test_ctrl_c_during_start_up_exits_130_quietly_and_leaves_nothing(tmp_path):
    proc = start_script("train.py", *TINY_CLI, cwd=tmp_path)
    time.sleep(1.0)  # importing torch and Hydra takes longer than this
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert not list(tmp_path.glob("outputs/*/*"))


# ---- output dirs that cannot be written


def test_run_dir_under_a_regular_file_is_explained(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    result = train_cli(tmp_path, f"hydra.run.dir={tmp_path / 'afile' / 'run'}")
    assert_refused(result, "Cannot write the output directory")
    assert "Not a directory" in result.stderr and "hydra.run.dir=<path>" in result.stderr


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A real read-only filesystem (chmod does not stop root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("needs root and mount for a read-only tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("where", ["run dir", "working dir", "sweep dir"])
def test_read_only_output_dir_is_explained(tmp_path, read_only_dir, where):
    args = {
        "run dir": [f"hydra.run.dir={read_only_dir / 'run'}"],
        "working dir": [],
        "sweep dir": ["-m", "seed=0,1", f"hydra.sweep.dir={read_only_dir / 'sweep'}"],
    }[where]
    result = train_cli(tmp_path, *args, cwd=read_only_dir if where == "working dir" else None)
    assert_refused(result, "Cannot write the output directory")
    assert "Read-only file system" in result.stderr


def test_a_sweep_job_resumed_alone_with_more_epochs_is_labelled_with_them(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = train_cli(tmp_path, "-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, output(first)[-2000:]
    again = train_cli(tmp_path, "trainer.max_epochs=3", f"trainer.resume={sweep_dir / '0'}")
    assert again.returncode == 0, output(again)[-2000:]
    assert "Summaries and plots label this run with its new settings" in output(again)
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3
    assert metrics["resumed_with"] == {"trainer.max_epochs": "3"}

    tables = summarize(sweep_dir)
    runs = tables["runs"].set_index("run")
    assert runs.loc["0", "trainer.max_epochs"] == "3" and runs.loc["1", "trainer.max_epochs"] == "2"
    assert len(tables["seeds"]) == 2  # 3 epochs and 2 epochs: never pooled over seeds
    assert "trainer.max_epochs=2" not in (sweep_dir / "summary.md").read_text()


def test_sweep_resume_without_m_is_refused_with_the_command_that_resumes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = train_cli(tmp_path, "-m", "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, output(first)[-2000:]
    before = file_digests(sweep_dir)
    result = train_cli(tmp_path, f"sweep.resume={sweep_dir}")
    assert_refused(result, "sweep.resume continues a sweep, and this command is a single run")
    assert "python scripts/train.py -m " in result.stderr and "seed=0,1" in result.stderr
    assert file_digests(sweep_dir) == before
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("members", ["-1", "0", "2.5", "two"])
def test_a_bad_max_members_is_one_line_before_anything_is_written(tmp_path, members):
    result = train_cli(
        tmp_path,
        "-m",
        "hydra/launcher=batched",
        f"hydra.launcher.max_members={members}",
        "seed=0,1",
    )
    assert result.returncode != 0, output(result)[-2000:]
    assert "Traceback" not in output(result)
    assert "max_members" in result.stderr
    # the range is dltips' check; the type the launcher's structured config checks
    assert ("positive integer" if members in ("-1", "0") else "converted to Integer") in (
        result.stderr
    )
    assert not (tmp_path / "outputs").exists()
