"""Sweeps: summaries, failure isolation, resume, parallel jobs, SLURM, TensorBoard (Optuna
searches: test_optuna.py)."""

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_CLI, make_cfg, run_cli, run_script
from dltips.runs import summarize
from dltips.sweep import threads_per_job
from dltips.train import train


def sweep(
    tmp_path: Path, *overrides: str, name: str = "sweep", in_subprocess=False, timeout=300
) -> Path:
    """A finished CLI sweep; `in_subprocess` for launchers that send the task to other
    processes (joblib, submitit), which must find it in a script run as a script."""
    sweep_dir = tmp_path / name
    args = ["train.py", "-m", *TINY_CLI, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    result = (
        run_script(*args, cwd=tmp_path, timeout=timeout)
        if in_subprocess
        else run_cli(*args, cwd=tmp_path)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir


def statuses(sweep_dir: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/metrics.json")
    }


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep_dir = sweep(tmp_path, "model.depth=0,1,2")
    assert statuses(sweep_dir) == {"0": "failed", "1": "completed", "2": "completed"}
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert list(summary["status"]) == ["completed", "completed", "failed"]  # failures last
    assert "model.depth=0: must be an integer >= 1" in summary["error"].iloc[2]
    assert summary["val/loss"].iloc[0] <= summary["val/loss"].iloc[1]  # sorted by monitor
    assert "failed" in (sweep_dir / "summary.md").read_text()


def test_diverged_job_ends_early_with_its_status(tmp_path):
    sweep_dir = sweep(tmp_path, "optim=sgd", "optim.lr=0.1,1e6", "data.normalize=none")
    assert statuses(sweep_dir) == {"0": "completed", "1": "diverged"}
    assert set(pd.read_csv(sweep_dir / "summary.csv")["status"]) == {"completed", "diverged"}


@pytest.mark.slow
def test_seed_sweep_gets_a_mean_and_std_table(tmp_path):
    sweep_dir = sweep(tmp_path, "model=sigmoid,relu", "seed=0,1")
    text = (sweep_dir / "summary.md").read_text()
    assert "Mean ± std over seeds" in text
    seeds = summarize(sweep_dir)["seeds"]
    assert list(seeds["model"]) == ["sigmoid", "relu"] and list(seeds["runs"]) == ["2 of 2"] * 2
    assert all("±" in v for v in seeds["test/acc"])


@pytest.mark.slow
def test_resumed_sweep_runs_only_unfinished_jobs_in_place(tmp_path):
    sweep_dir = sweep(tmp_path, "model=sigmoid,relu,tanh")
    done = (sweep_dir / "0" / "metrics.json").read_text()
    (sweep_dir / "1" / "metrics.json").unlink()  # as if killed before its end
    shutil.rmtree(sweep_dir / "2")  # as if never started
    result = run_cli(
        "train.py",
        "-m",
        *TINY_CLI,
        "model=sigmoid,relu,tanh",
        f"sweep.resume={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Already completed, skipped" in result.stdout + result.stderr
    assert (sweep_dir / "0" / "metrics.json").read_text() == done  # untouched
    assert statuses(sweep_dir) == {"0": "completed", "1": "completed", "2": "completed"}
    assert (
        not list((tmp_path / "outputs").glob("multirun/*"))
        if (tmp_path / "outputs").exists()
        else True
    )
    assert len(pd.read_csv(sweep_dir / "summary.csv")) == 3


@pytest.mark.slow
def test_summarize_script_reads_an_unfinished_sweep(tmp_path):
    sweep_dir = sweep(tmp_path, "model=sigmoid,relu")
    (sweep_dir / "1" / "metrics.json").unlink()
    (sweep_dir / "summary.csv").unlink()
    result = run_cli("summarize.py", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert sorted(summary["status"]) == ["completed", "unfinished"]


@pytest.mark.slow
def test_plot_script_writes_curves_and_one_plot_per_swept_key(tmp_path):
    sweep_dir = sweep(tmp_path, "model=sigmoid,relu", "optim=sgd,adam")
    result = run_cli("plot.py", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("curves.png", "model.png", "optim.png"):
        png = sweep_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_threads_per_job_share_the_cores():
    assert threads_per_job(None, cores=8) is None
    assert threads_per_job(2, cores=8) == 4
    assert threads_per_job(-1, cores=8) == 1
    assert threads_per_job(16, cores=8) == 1


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_with_shared_cores(tmp_path):
    sweep_dir = sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=sigmoid,relu",
        in_subprocess=True,
    )
    assert statuses(sweep_dir) == {"0": "completed", "1": "completed"}
    threads = {json.loads(p.read_text())["num_threads"] for p in sweep_dir.glob("*/metrics.json")}
    assert threads == {threads_per_job(2)}
    assert (sweep_dir / "summary.csv").is_file()


@pytest.mark.slow
def test_slurm_launcher_runs_a_sweep_as_slurm_jobs(tmp_path, slurm):
    sweep_dir = sweep(
        tmp_path,
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.mem_gb=1",
        "model=sigmoid,relu",
        in_subprocess=True,
        timeout=600,
    )
    assert statuses(sweep_dir) == {"0": "completed", "1": "completed"}
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert list(summary["status"]) == ["completed"] * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_lists_every_run_with_scalars_and_hparams(tmp_path):
    sweep_dir = sweep(tmp_path, "model=sigmoid,relu", "optim=sgd,adam")
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tensorboard"),
            "--logdir",
            str(sweep_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline and len(runs) < 5:
            with contextlib.suppress(OSError):
                runs = get_json(f"{base}/runs")
            time.sleep(0.5)
        # each job is named by its swept overrides; the sweep's HParams experiment is a run too
        assert sorted(runs) == [
            "0/model=sigmoid,optim=sgd",
            "1/model=sigmoid,optim=adam",
            "2/model=relu,optim=sgd",
            "3/model=relu,optim=adam",
            "hparams",
        ]
        tags = get_json(f"{base}/plugin/scalars/tags")
        for run in sorted(runs)[:4]:
            assert {
                "train/loss",
                "val/acc",
                "weight_grad_norm_log10/hidden1",
                "~final/test/acc",
            } <= set(tags[run])
        groups = get_json(
            f"{base}/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "startIndex": 0,
                "sliceSize": 10,
                "allowedStatuses": [
                    "STATUS_UNKNOWN",
                    "STATUS_SUCCESS",
                    "STATUS_FAILURE",
                    "STATUS_RUNNING",
                ],
                "colParams": [
                    {"metric": {"tag": "~final/test/acc", "group": ""}, "order": "ORDER_DESC"}
                ],
            },
        )["sessionGroups"]
        assert len(groups) == 4
        summary = pd.read_csv(sweep_dir / "summary.csv").set_index("run")
        for group in groups:
            run = int(group["name"].split("/")[0])
            assert group["hparams"]["model/activation"] in ("Sigmoid", "ReLU")
            test_acc = next(
                m["value"] for m in group["metricValues"] if m["name"]["tag"] == "~final/test/acc"
            )
            assert test_acc == pytest.approx(summary.loc[run, "test/acc"])
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_in_process_summary_of_runs_made_by_train(tmp_path):
    for seed in (0, 1):
        train(make_cfg(f"seed={seed}", "trainer.max_epochs=1"), tmp_path / f"s{seed}")
    tables = summarize(tmp_path)
    assert sorted(tables["runs"]["run"]) == ["s0", "s1"]
