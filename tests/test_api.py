"""dltips.run: a run from Python writes what scripts/train.py writes and returns its metrics."""

import json

import pytest

import dltips
from dltips.errors import UserError


@pytest.mark.slow
def test_run_from_python_returns_the_metrics_it_writes_with_the_clis_outputs(tmp_path):
    run_dir, record = tmp_path / "run", tmp_path / "callback.jsonl"
    callback = [  # a user's Hydra callback (tests/record_callback.py), as the CLI takes it
        "+hydra.callbacks.record._target_=record_callback.RecordCallback",
        f"+hydra.callbacks.record.path={record}",
    ]
    metrics = dltips.run(
        ["model.width=32", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", *callback]
    )
    written = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == written["test/acc"] > 0.3  # chance is 0.1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "model.width=32" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "test/acc" in (run_dir / "train.log").read_text()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    # the config's callbacks ran around the job: the user's, and the start checks
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(e["event"], e["metrics"] is None) for e in events] == [("start", True), ("end", False)]
    assert events[1]["status"] == "COMPLETED"
    assert events[1]["return_value"]["test/acc"] == metrics["test/acc"]
    with pytest.raises(SystemExit, match="already holds a run"):
        dltips.run([f"hydra.run.dir={run_dir}"])


def test_a_bad_config_raises_and_leaves_no_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run dir would be outputs/DATE/TIME here
    with pytest.raises(UserError, match="model.depth=0"):
        dltips.run(["model.depth=0"])
    assert not list(tmp_path.iterdir())
