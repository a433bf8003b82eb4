"""What scripts/train.py prints, as a user reads it: the start-up lines, the progress bar
(on a terminal only), --help, the refusal of a sweep preset without -m, and the data cache
when Hydra runs each job in its own directory. In this process (run_cli), but for the
progress bar, which needs a terminal of its own."""

import fcntl
import math
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, CPU_ONLY, ROOT, TINY_CLI, make_cfg, run_cli
from dltips.console import config_line, data_line
from dltips.data import load_dataset


def run_in_terminal(*args: str, cwd: Path, timeout: int = 300) -> tuple[int, str]:
    """Run scripts/<args[0]> with a 120-column terminal as its stdout and stderr, as a user
    at a shell would; its exit status and everything it wrote to the terminal."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / args[0]), *args[1:]],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **CPU_ONLY},
    )
    os.close(child)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([main], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    return process.wait(timeout=10), output.decode(errors="replace")


def steps_per_epoch() -> int:
    cfg = make_cfg()
    return math.ceil(len(load_dataset(cfg.data, seed=0).y_train) / cfg.data.batch_size)


@pytest.mark.slow  # a subprocess on a terminal
def test_start_shows_what_differs_the_data_and_the_model_and_a_bar_only_on_a_terminal(tmp_path):
    args = ["train.py", "experiment=quick", *TINY_CLI]
    (tmp_path / "tty").mkdir()
    status, shown = run_in_terminal(*args, cwd=tmp_path / "tty")
    assert status == 0, shown[-3000:]
    steps = steps_per_epoch()
    # a bar over the batches of each epoch, counting every step
    assert re.search(rf"epoch 1/2: +\d+%\|.*\| {steps}/{steps} \[", shown), shown[-3000:]
    assert "batch/s" in shown

    result = run_cli(*args, cwd=tmp_path)  # a log, not a terminal: no bar
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "batch/s" not in output and "%|" not in output
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    full = run_dir.relative_to(tmp_path) / ".hydra" / "config.yaml"
    # the overrides the command gave, as typed (the preset's own values: the full config)
    changes = "experiment=quick model.width=32 trainer.max_epochs=2"
    assert f"Config: {changes}  (full config: {full})" in output
    assert (tmp_path / full).is_file()
    assert "Sequential(" not in output  # no module printout
    cfg = make_cfg()
    data = load_dataset(cfg.data, seed=0)
    assert (
        f"Data mnist_5k: {len(data.y_train):,} train (350 per class) / {len(data.y_val):,} val "
        f"/ {len(data.y_test):,} test images, 784 features, 10 classes, batches of 100 "
        f"({steps} steps per epoch)" in output
    )
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    params = sum(t.numel() for t in state.values())
    assert f"Model: 784-32-10 ReLU MLP, {params:,} parameters, on cpu" in output


def test_data_line_says_which_subset_and_its_class_counts():
    cfg = make_cfg("data.train_size=205")
    line = data_line(cfg.data, load_dataset(cfg.data, seed=0))
    assert line.startswith("Data mnist_5k: 205 train (subset_seed=0, 20-21 per class) / 500 val")
    cfg = make_cfg("data.train_size=200", "data.subset_seed=null")
    line = data_line(cfg.data, load_dataset(cfg.data, seed=0))
    assert "200 train (the first N, 0-200 per class)" in line  # the class-sorted digits


def test_config_line_shows_the_given_overrides_as_typed(tmp_path):
    assert config_line([], tmp_path) == "Config: the defaults"
    assert config_line(None, tmp_path) == "Config: as given to train()"
    given = ["model.depth=3", "+optim.amsgrad=true", "~model.dropout", "data.root=a b"]
    assert config_line(given, tmp_path) == (
        "Config: model.depth=3 +optim.amsgrad=true '~model.dropout' 'data.root=a b'"
    )


def sweep_size(preset: str) -> int:
    """The number of jobs of a grid preset, from its hydra.sweeper.params."""
    params = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml").hydra.sweeper.params
    return math.prod(len(str(v).split(",")) for v in params.values())


@pytest.mark.parametrize("chdir", [False, True])
def test_a_sweep_preset_without_m_is_refused_with_the_command_that_runs_it(tmp_path, chdir):
    args = ["experiment=tips/depth", "trainer.max_epochs=1", f"hydra.job.chdir={chdir}".lower()]
    result = run_cli("train.py", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        f"error: experiment=tips/depth defines a sweep ({sweep_size('tips/depth')} runs) over "
        "model=sigmoid,relu,maxout, model.depth=1,2,4,6,8,10 (hydra.sweeper.params)"
    ) in result.stderr
    script = ROOT / "scripts" / "train.py"
    assert f"Run the sweep:  python {script} -m {' '.join(args)}\n" in result.stderr
    assert f"python {script} {' '.join(args)} model=sigmoid model.depth=1" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even an empty run dir


def test_one_setting_of_a_sweep_preset_trains_alone(tmp_path):
    result = run_cli(
        "train.py",
        "experiment=tips/depth",
        "model=relu",
        "model.depth=1",
        "data=mnist_5k",  # the preset's MNIST needs a download
        "data.train_size=null",
        *TINY_CLI,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    given = "experiment=tips/depth model=relu model.depth=1 data=mnist_5k data.train_size=null"
    assert f"Config: {given} {' '.join(TINY_CLI)}" in result.stdout


@pytest.mark.slow
def test_help_lists_the_groups_their_options_and_examples(tmp_path):
    result = run_cli("train.py", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for group in ("model", "optim", "loss", "data", "trainer", "hparams_search"):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}\n" in text
    tips = sorted(p.stem for p in (CONF_DIR / "experiment" / "tips").glob("*.yaml"))
    assert f"experiment/tips: {', '.join(tips)}\n" in text
    # Hydra's own groups: the launchers a sweep can use and the search's pruners
    assert (
        "hydra/launcher: basic, batched, batched_submitit_local, batched_submitit_slurm, joblib, "
        "slurm, submitit_local" in text
    )
    assert "hydra/sweeper/pruner: hyperband, median, none" in text
    examples = [line for line in text.splitlines() if line.strip().startswith("python scripts/")]
    assert len(examples) == 3 and any(" -m " in e for e in examples)
    # the values shown are the composed config's, overrides included
    shown = run_cli("train.py", "--help", "model.depth=7", cwd=tmp_path).stdout
    assert "model.depth=7 model.width=500" in shown
    assert list(tmp_path.iterdir()) == []  # help writes nothing
    hydra = run_cli("train.py", "--hydra-help", cwd=tmp_path)
    assert "== Flags ==" in hydra.stdout and "Hydra (" in hydra.stdout


@pytest.mark.slow  # builds the data cache of a new data root
def test_runs_in_their_own_dirs_share_one_data_cache_under_the_data_root(tmp_path):
    for run in ("one", "two"):  # hydra.job.chdir: each job's cwd is its run dir
        result = run_cli(
            "train.py",
            "hydra.job.chdir=true",
            f"hydra.run.dir=outputs/{run}",
            "data.root=data",  # relative: to where the command is started
            *TINY_CLI,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "outputs" / run / "metrics.json").is_file()
    assert list(tmp_path.rglob("cache/*.pt")) == [tmp_path / "data" / "cache" / "mnist_5k.pt"]
