"""The batched launcher is a Hydra launcher: Hydra's own launcher test suites pass with it
(another app's jobs run as with the basic launcher), and a user's callbacks see each
batched job start before it trains and end with its result."""

import json
import math

import pytest
from hydra import version
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from conftest import run_cli


@pytest.fixture(autouse=True)
def hydra_version_base_unset():
    """Hydra's suites run apps without a version_base (chdir into each job's dir); any
    compose with version_base="1.3" earlier in this process sets it for the process."""
    base = version.VersionBase.instance()
    saved, base.version_base = base.version_base, version._UNSPECIFIED_
    yield
    base.version_base = saved


@pytest.mark.parametrize("launcher_name, overrides", [("batched", [])])
class TestBatchedLauncher(LauncherTestSuite):
    """Hydra's launcher suite, as hydra-joblib-launcher runs it."""


@pytest.mark.slow
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [
                    {"override hydra/launcher": "batched"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"},
                ]
            },
            ["-m"],
        )
    ],
)
class TestBatchedLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite: apps in a subprocess, their dirs, names and cwd."""


@pytest.mark.slow
def test_a_user_callback_sees_each_batched_job_start_before_training_and_end_after(tmp_path):
    record = tmp_path / "callback.jsonl"
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=batched",
        "seed=0,1",
        "model.width=32",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "+hydra.callbacks.record._target_=record_callback.RecordCallback",
        f"+hydra.callbacks.record.path={record}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Batched 1 group: jobs 0,1" in output
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(e["event"], e["job"]) for e in events] == [
        ("start", 0),
        ("start", 1),
        ("end", 0),
        ("end", 1),
    ]
    for start in events[:2]:
        assert start["metrics"] is None  # not trained yet
    for end in events[2:]:
        metrics = end["metrics"]  # trained: what the run wrote
        assert end["status"] == "COMPLETED" and metrics["status"] == "completed"
        assert "test/acc" in metrics and metrics["batch"]["members"] == 2
        # the job's return value is the task's, as with the basic launcher: its objective
        monitor = "val/loss"
        best = [h[monitor] for h in metrics["history"] if h["epoch"] == metrics["best_epoch"]]
        assert isinstance(end["return_value"], float) and math.isclose(end["return_value"], best[0])
