"""Batched sweeps through submitit (hydra/launcher=batched_submitit_slurm, _local): groups
sized for the nodes asked for, each group one SLURM task whose jobs get the files of
hydra/launcher=batched, and a preempted group requeued to the uninterrupted result."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY_CLI, make_cfg, run_cli, run_script, start_script, wait_for
from dltips.checkpoint import load_checkpoint
from dltips.group import bytes_per_run, group_caps
from dltips.preflight import PreflightError
from hydra_plugins.dltips_batched_launcher.batched_submitit_launcher import (
    GB,
    BatchedSlurmLauncher,
)

TIMINGS = ("wall_seconds", "seconds_per_epoch", "epoch_seconds")
# one torch thread: two SLURM tasks share the 2 cores, and results are bit-comparable
SLURM = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "trainer.num_threads=1"]


def test_groups_are_sized_for_the_nodes_asked_for_not_this_machine(monkeypatch):
    def this_machine(*args):
        raise AssertionError("sized by the submitting machine")

    monkeypatch.setattr("dltips.group._available_ram", this_machine)
    monkeypatch.setattr("torch.cuda.mem_get_info", this_machine)
    small = make_cfg("trainer.device=auto")  # 784-64-64-10
    lecture = make_cfg("experiment=lecture/step4", "trainer.device=auto", tiny=False)

    def cap(cfg, **settings) -> int:
        return group_caps({"key": cfg}, BatchedSlurmLauncher(**settings).node_memory)["key"]

    assert cap(small, mem_gb=1, gpus_per_node=0) == GB // 2 // bytes_per_run(small)
    assert cap(small, mem_gb=4, gpus_per_node=0) == 4 * GB // 2 // bytes_per_run(small)
    gpu = {"mem_gb": 1, "gpus_per_node": 1, "gpu_mem_gb": 80}
    assert cap(small, **gpu) == 80 * GB // 2 // bytes_per_run(small)  # the GPU's, not mem_gb
    assert cap(make_cfg("trainer.device=cpu"), **gpu) == cap(small, mem_gb=1, gpus_per_node=0)
    assert cap(lecture, mem_gb=64, gpus_per_node=0) == 1  # no faster batched on the CPU
    assert cap(lecture, **gpu) > 1
    assert cap(small, mem_gb=1, gpus_per_node=0) == 2  # each run's own copy of 60,000 images

    with pytest.raises(PreflightError) as err:  # a GPU node, and nothing says its memory
        cap(small, mem_gb=8, gpus_per_node=1)
    message = str(err.value)
    assert message.startswith("error: hydra.launcher.gpus_per_node=1:") and "\n" not in message
    assert "hydra.launcher.gpu_mem_gb" in message and "hydra.launcher.max_members" in message


def test_a_gpu_node_without_its_memory_stops_the_sweep_before_it_starts(tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=batched_submitit_slurm",
        "hydra.launcher.gpus_per_node=1",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: hydra.launcher.gpus_per_node=1: set ")
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing submitted


def metrics(job_dir: Path) -> dict:
    """metrics.json without its timings."""
    found = json.loads((job_dir / "metrics.json").read_text())
    return {k: v for k, v in found.items() if k not in TIMINGS}


def files(job_dir: Path) -> list[str]:
    """A job's files, TensorBoard's event files named without their time and host."""
    names = [p.relative_to(job_dir).as_posix() for p in job_dir.rglob("*") if p.is_file()]
    return sorted(n.split("events.out.tfevents")[0] + "events" for n in names)


def job_state(job_id: str) -> str:
    """The SLURM job's state in squeue (PENDING, RUNNING, ...); empty once it has left."""
    found = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True)
    return found.stdout.decode().strip()


def sweep(tmp_path: Path, launcher: str, *overrides: str, run=run_cli) -> tuple[Path, str]:
    """A finished sweep with hydra/launcher=`launcher` in <tmp_path>/<launcher>: its dir and
    its output. The submitit launchers pickle the task for other processes, which find it
    only in a script run as a script: `run=run_script`."""
    sweep_dir = tmp_path / launcher
    result = run(
        "train.py",
        "-m",
        f"hydra/launcher={launcher}",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return sweep_dir, result.stdout + result.stderr


@pytest.mark.slow
def test_batched_submitit_local_trains_each_group_in_a_process_of_its_own(tmp_path):
    """submitit's local executor, SLURM's stand-in on a machine without it."""
    local = ["hydra.launcher.timeout_min=5", "hydra.launcher.mem_gb=1", "trainer.num_threads=1"]
    grid = [*local, *TINY_CLI, "model=sigmoid,relu"]
    sweep_dir, output = sweep(tmp_path, "batched_submitit_local", *grid, run=run_script)
    assert "Batched 2 groups: job 0 (alone) | job 1 (alone)" in output
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    assert [metrics(sweep_dir / j)["status"] for j in "01"] == ["completed", "completed"]


@pytest.mark.slow
def test_each_group_is_one_slurm_task_and_its_jobs_get_the_batched_launchers_files(tmp_path, slurm):
    grid = [*TINY_CLI, "trainer.num_threads=1", "model=sigmoid,relu", "seed=0,1"]
    sweep_dir, output = sweep(tmp_path, "batched_submitit_slurm", *SLURM, *grid, run=run_script)
    assert "Batched 2 groups: jobs 0,1 | jobs 2,3" in output
    tasks = sorted(p.parent.name for p in (sweep_dir / ".submitit").glob("*/*_result.pkl"))
    assert len(tasks) == 2 and tasks[0].endswith("_0") and tasks[1].endswith("_1")  # an array
    batched, _ = sweep(tmp_path, "batched", *grid)
    for job in "0123":
        assert files(sweep_dir / job) == files(batched / job)
        assert metrics(sweep_dir / job) == metrics(batched / job)
        assert metrics(sweep_dir / job)["batch"]["members"] == 2


@pytest.mark.slow
def test_a_group_preempted_mid_epoch_is_requeued_and_ends_as_if_never_stopped(tmp_path, slurm):
    grid = [
        "seed=0,1",
        "model.width=64",
        "data.batch_size=10",  # 350 steps an epoch: the signal lands mid-epoch
        "model.dropout=0.2",  # masks drawn again on resume: they must continue, not restart
        "trainer.max_epochs=4",
        "trainer.early_stopping.patience=null",
        "trainer.num_threads=1",
    ]
    sweep_dir = tmp_path / "slurm"
    proc = start_script(
        "train.py",
        "-m",
        "hydra/launcher=batched_submitit_slurm",
        *SLURM,
        "hydra.launcher.timeout_min=15",  # signalled in its first minutes: preempted, not timed out
        "hydra.launcher.max_num_timeout=1",
        *grid,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    last = sweep_dir / "1" / "checkpoints" / "last.pt"
    job_id = None
    try:
        wait_for(lambda: last.is_file() and load_checkpoint(last)["epoch"] >= 1, 120, "epoch 1")
        job_id = next((sweep_dir / ".submitit").glob("*/*_submitted.pkl")).parent.name
        # what SLURM sends a job it preempts (or signal_delay_s before its time limit), as
        # submitit has it ask for: SIGUSR2 to the job's steps
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        wait_for(lambda: job_state(job_id) == "PENDING", 60, "the requeued job")
        # SLURM holds a requeued job for two minutes (its begin time): start it now, but in a
        # later second than its first run was killed in. slurmd refuses to launch a job in
        # that second ("Job credential revoked": CI hit it once), and submitit then waits
        # for a result that never comes
        time.sleep(1.05 - time.time() % 1)
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
        out, _ = proc.communicate(timeout=180)
    finally:  # a failure leaves no job behind
        if proc.poll() is None:
            proc.kill()
            if job_id:
                subprocess.run(["scancel", job_id])
    assert proc.returncode == 0, out[-3000:]
    submitit_log = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    assert "this job is preempted" in submitit_log and f"Requeued job {job_id}" in submitit_log
    for job in "01":
        log = (sweep_dir / job / "train.log").read_text()
        assert "Stopped by SIGUSR2 during epoch" in log and "Resumed from" in log

    batched, _ = sweep(tmp_path, "batched", *grid)
    for job in "01":  # history included: every epoch's losses, bit for bit
        assert metrics(sweep_dir / job) == metrics(batched / job)
