"""scripts/train.py as a user runs it, from a project-like folder: in this process (run_cli)
where only the arguments and outputs matter, in a subprocess where start-up is the point."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_CLI, run_cli


def test_single_run_prints_accuracies_and_writes_its_outputs(tmp_path):
    result = run_cli("train.py", "model=relu", "optim=adam", *TINY_CLI, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "train/acc" in output and "val/acc" in output and "test/acc" in output
    (run_dir,) = (tmp_path / "outputs").glob("*/*")  # outputs/DATE/TIME
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5  # chance is 0.1; learning itself is tested in test_train
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_multirun_grid_makes_one_dir_per_job(tmp_path):
    result = run_cli(
        "train.py", "-m", "model=sigmoid,relu", "optim=sgd,adam", *TINY_CLI, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")  # multirun/DATE/TIME
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").is_file())
    assert jobs == ["0", "1", "2", "3"]
    overrides = {
        (sweep_dir / j / ".hydra" / "overrides.yaml").read_text().replace("\n", " ") for j in jobs
    }
    assert len(overrides) == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=foo"], "Could not find 'model/foo'"),
        (["optim=foo"], "Could not find 'optim/foo'"),
        (["model.activation._target_=torch.nn.Foo"], "torch.nn.Foo cannot be found"),
        (["optim._target_=torch.optim.Nope"], "torch.optim.Nope cannot be found"),
        (["model.depth=0"], "model.depth=0: must be an integer >= 1"),
        (["model.width=0"], "model.width=0: must be an integer >= 1"),
        (["model.dropout=1.0"], "model.dropout=1.0: must be in [0, 1)"),
        (["optim.lr=0"], "optim.lr=0: the learning rate must be a number > 0"),
        (["data.val_size=4000"], "data.val_size=4000 leaves no training data"),
        (["data=mnist", "data.download=false"], "data=mnist_5k works offline"),
        (["trainer.resume=no/such/run"], "no such run directory"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, overrides, message):
    result = run_cli("train.py", *TINY_CLI, *overrides, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path):
    result = run_cli("train.py", "trainer.device=cuda", *TINY_CLI, cwd=tmp_path)
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr


@pytest.mark.parametrize("name", ["train.py", "eval.py"])
@pytest.mark.slow
def test_start_up_leaves_the_garbage_collector_on_with_its_objects_frozen(tmp_path, name):
    # the scripts turn the collector off while they import torch and Hydra; what runs next
    # (a sweep of many jobs above all) needs it on again, or its cyclic garbage would pile up
    script = ROOT / "scripts" / name
    probe = (
        "import gc, runpy\n"
        f"runpy.run_path({str(script)!r}, run_name='imported')\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    enabled, frozen = result.stdout.split()
    assert enabled == "True"
    assert int(frozen) > 100_000  # torch's and Hydra's objects, left out of every collection
