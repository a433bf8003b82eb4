"""dltips.run: a run from Python writes what scripts/train.py writes and returns its metrics."""

import json

import pytest

import dltips
from dltips.errors import UserError


def test_run_from_python_returns_the_metrics_it_writes_with_the_clis_outputs(tmp_path):
    run_dir = tmp_path / "run"
    metrics = dltips.run(["model.width=32", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"])
    written = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == written["test/acc"] > 0.3  # chance is 0.1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "model.width=32" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "test/acc" in (run_dir / "train.log").read_text()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_a_bad_config_raises_and_leaves_no_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run dir would be outputs/DATE/TIME here
    with pytest.raises(UserError, match="model.depth=0"):
        dltips.run(["model.depth=0"])
    assert not list(tmp_path.iterdir())
