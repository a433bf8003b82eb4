"""Interrupted, killed, diverging and hostile runs: nothing lost, nothing executed."""

import errno
import json
import math
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_cfg, start_script, wait_for
from dltips import checkpoint
from dltips.checkpoint import load_checkpoint, sole_writer
from dltips.data import load_dataset
from dltips.errors import CheckpointError, OutputError
from dltips.resume import override_arg
from dltips.run_state import Job
from dltips.signals import catch_stop_signals
from dltips.task import train_jobs
from dltips.train import train

# small epochs of many steps: checkpoints are written several times a second
FAST_EPOCHS = [
    "model.width=64",
    "data.train_size=500",
    "data.batch_size=10",
    "trainer.early_stopping.patience=null",
]


TIMINGS = ("wall_seconds", "seconds_per_epoch", "epoch_seconds")


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def start_training(run_dir: Path, *overrides: str) -> subprocess.Popen:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return start_script("train.py", *overrides, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)


def wait_for_epoch(run_dir: Path, epoch: int, timeout: float = 60) -> None:
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last.exists() and load_checkpoint(last)["epoch"] >= epoch:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{last} did not reach epoch {epoch}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(tmp_path, signum):
    overrides = [*FAST_EPOCHS, "data.train_size=2000", "trainer.max_epochs=6"]
    run_dir = tmp_path / "run"
    run_dir.parent.mkdir(exist_ok=True)
    proc = start_training(run_dir, *overrides)
    wait_for_epoch(run_dir, 2)
    time.sleep(0.1)  # into the next epoch
    proc.send_signal(signum)
    sent = time.monotonic()
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 128 + signum
    hint = f"to continue, run the same command plus {override_arg('trainer.resume', run_dir)}"
    assert hint in output
    assert hint in (run_dir / "train.log").read_text()
    assert not (run_dir / "metrics.json").exists()

    resumed = train(make_cfg(*overrides, f"trainer.resume={run_dir}"), tmp_path / "new")
    uninterrupted = train(make_cfg(*overrides), tmp_path / "full")
    assert without_time(resumed) == without_time(uninterrupted)
    steps = [e.step for e in EventAccumulator(str(run_dir)).Reload().Scalars("val/loss")]
    assert steps == list(range(1, 7))


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_only_loadable_checkpoints(tmp_path):
    # a batched group of two: each epoch's checkpoints are written by a thread while the
    # next epoch trains (dltips.run_state.Run.save), several times a second
    sweep_dir = tmp_path / "sweep"
    ckpts = [sweep_dir / j / "checkpoints" for j in "01"]
    overrides = [*FAST_EPOCHS, "trainer.max_epochs=10000"]  # never ends on its own
    command = ["-m", "hydra/launcher=batched", "seed=0,1", *overrides]
    moments = random.Random(0)

    def saved() -> int:  # when a member's last.pt was last written
        return max((p.stat().st_mtime_ns for c in ckpts for p in c.glob("last.pt")), default=0)

    for _ in range(2):  # a new sweep, then a resumed one
        before = saved()
        again = [f"sweep.resume={sweep_dir}"] if before else [f"hydra.sweep.dir={sweep_dir}"]
        proc = start_script("train.py", *command, *again, cwd=tmp_path)
        # wait until this process is training and saving (members killed at different
        # epochs resume as groups of their own, one after the other)
        wait_for(lambda b=before: saved() != b, what="a save")
        time.sleep(moments.uniform(0, 0.6))  # several epochs, and their checkpoints, a second
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in [*ckpts[0].glob("*.pt"), *ckpts[1].glob("*.pt")]:
            load_checkpoint(path)  # raises if truncated
    run_dir = sweep_dir / "0"  # a member's checkpoint continues alone
    end = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] + 2
    final = train(
        make_cfg(*FAST_EPOCHS, f"trainer.max_epochs={end}", f"trainer.resume={run_dir}"),
        tmp_path / "x",
    )
    assert final["status"] == "completed" and final["epochs_trained"] == end
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # leftovers cleaned


class Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_and_never_runs(tmp_path):
    train(make_cfg("trainer.max_epochs=1"), tmp_path / "run")
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    marker = tmp_path / "payload-ran"
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, ckpt_path)
    with pytest.raises(CheckpointError, match="Refusing to load .*last.pt"):
        train(make_cfg(f"trainer.resume={tmp_path / 'run'}"), tmp_path / "new")
    assert not marker.exists()


def test_truncated_checkpoint_is_named(tmp_path):
    train(make_cfg("trainer.max_epochs=1"), tmp_path / "run")
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt_path.write_bytes(ckpt_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="last.pt: the file is truncated or corrupt"):
        train(make_cfg(f"trainer.resume={tmp_path / 'run'}"), tmp_path / "new")


def test_divergence_stops_at_once_naming_epoch_and_step(tmp_path, caplog):
    cfg = make_cfg("optim=sgd", "optim.lr=1e6", "data.normalize=none", "trainer.max_epochs=5")
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "diverged" and metrics["epochs_trained"] == 0
    message = next(r.getMessage() for r in caplog.records if "diverged" in r.getMessage())
    assert "at epoch 1, step " in message and "lower learning rate" in message
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_write_failure_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    load_dataset(make_cfg().data, seed=0)  # the data cache exists: only checkpoints are saved
    calls = []
    real_save = torch.save

    def save_until_disk_full(obj, f):
        calls.append((threading.current_thread().name, obj["epoch"]))
        if len(calls) > 2:  # epoch 0, epoch 1 (best.pt a link to it), then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_disk_full)
    with pytest.raises(OutputError, match="No space left on device") as err:
        train(make_cfg("trainer.max_epochs=5"), tmp_path)
    assert "trainer.resume=" in str(err.value)
    # epoch 0 before training; each epoch after by a thread while the next trains, whose
    # end reports the failed write: nothing is written after it
    writer = "dltips-checkpoints_0"
    assert calls == [("MainThread", 0), (writer, 1), (writer, 2)]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def mount_tiny_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
    cfg = make_cfg("optim=sgd", "trainer.max_epochs=5")
    train(make_cfg("optim=sgd", "trainer.max_epochs=1"), tmp_path / "probe")
    size = (tmp_path / "probe" / "checkpoints" / "last.pt").stat().st_size
    disk = tmp_path / "disk"
    # room for epoch 0's last.pt, not for epoch 1's beside it (written before the old goes)
    if not mount_tiny_tmpfs(disk, f"{int(size * 1.6) // 1024}k"):
        pytest.skip("needs root and mount to make a small tmpfs")
    try:
        with pytest.raises(OutputError, match="No space left on device") as err:
            train(cfg, disk / "run")
        assert "trainer.resume=" in str(err.value)
        assert load_checkpoint(disk / "run" / "checkpoints" / "last.pt")["epoch"] == 0
        assert not (disk / "run" / "checkpoints" / "best.pt").exists()
        assert not list((disk / "run" / "checkpoints").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_with_checkpoint_every_n_a_signal_still_saves_the_last_completed_epoch(tmp_path):
    # checkpoint_every=100 keeps every epoch of this run in memory until the end: on SIGTERM
    # the last completed one is written, and the resumed run ends as an uninterrupted one
    overrides = [*FAST_EPOCHS, "data.train_size=2000", "trainer.max_epochs=6"]
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, *overrides, "trainer.checkpoint_every=100")
    log = run_dir / "train.log"
    wait_for(lambda: log.exists() and "epoch 3/6" in log.read_text(), what="epoch 3")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    stopped = int(re.search(r"during epoch (\d+)", output)[1])
    held = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert held == stopped - 1 >= 3 and f"checkpoints/last.pt holds epoch {held}" in output

    resumed = train(make_cfg(*overrides, f"trainer.resume={run_dir}"), tmp_path / "new")
    uninterrupted = train(make_cfg(*overrides), tmp_path / "full")
    assert without_time(resumed) == without_time(uninterrupted)


def test_a_group_trains_without_the_job_another_process_holds(tmp_path):
    # the other process: any holder of the run dir's lock (here this test, through its own
    # file description, as a second command would)
    jobs = [Job(make_cfg(f"seed={k}"), tmp_path / str(k)) for k in range(3)]
    with sole_writer([jobs[1].run_dir]):
        objectives = train_jobs(jobs)
    assert math.isnan(objectives[1]) and not any(jobs[1].run_dir.iterdir())  # untouched
    for k in (0, 2):
        metrics = json.loads((jobs[k].run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["batch"]["members"] == 2
        assert objectives[k] == pytest.approx(metrics["val/loss"])


def test_stop_signals_are_caught_on_a_system_without_sigusr2(monkeypatch):
    monkeypatch.delattr(signal, "SIGUSR2")  # as on Windows
    before = signal.getsignal(signal.SIGTERM)
    with catch_stop_signals() as stop:
        signal.raise_signal(signal.SIGTERM)
    assert stop.name == "SIGTERM" and signal.getsignal(signal.SIGTERM) == before
