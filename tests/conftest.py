"""Shared fixtures: configs composed from conf/ and shrunk so every run takes seconds."""

import contextlib
import gc
import hashlib
import io
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import dltips.task
from dltips.sweep import threads_per_job

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# small and fast, but still real data and the real loop; on the CPU even where a GPU is
# (tests of the GPU path say trainer.device=cuda and are marked @cuda)
TINY = ["model.width=64", "trainer.max_epochs=3", "trainer.device=cpu"]
# scripts run in a subprocess see no GPU: CPU results, and no CUDA start-up per process
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}

# `pytest` runs the tests in one worker process per core (pytest-xdist's `-n auto`, set in
# pyproject.toml): each worker, and each script it starts, gets its share of the cores.
# With torch's default of a thread per core in every worker, the suite ran over 4 times slower.
# The share is what a parallel sweep's jobs get (dltips.sweep.threads_per_job).
THREADS = threads_per_job(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 0)))
if THREADS:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory) -> Path:
    """One data dir for the whole session (its cache is built once), never the repo's data/."""
    root = tmp_path_factory.mktemp("data")
    old = os.environ.get("DLTIPS_DATA_DIR")
    os.environ["DLTIPS_DATA_DIR"] = str(root)
    yield root
    if old is None:
        del os.environ["DLTIPS_DATA_DIR"]
    else:
        os.environ["DLTIPS_DATA_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def process_settings() -> None:
    """The process-wide settings scripts/train.py makes before a run of the defaults
    (denormals flushed, malloc's heap): train() called in-process leaves them as they are."""
    from dltips.process import configure_process

    configure_process(make_cfg())


def make_cfg(*overrides: str, tiny: bool = True) -> DictConfig:
    """The train config with `overrides` (after the TINY ones), as scripts/train.py sees it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*(TINY if tiny else []), *overrides])


def run_script(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a script of scripts/ as a user would, capturing stdout and stderr together."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **CPU_ONLY},
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a script of scripts/ in this process, as `run_script` does in a new one: same
    arguments, working dir, exit status and output, without 2-3 s of imports per call.

    For tests where the process boundary is not the point (not signals, locks, start-up).
    The script's `__main__` block runs with `sys.argv` set; what it leaves behind in the
    process (Hydra's global state, logging handlers, the working dir, torch's thread
    count, the SIGINT handler, frozen garbage) is put back as it was.
    """
    script = str(ROOT / "scripts" / args[0])
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = {
        lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(lg, logging.Logger)
    }
    threads, sigint, old_cwd = torch.get_num_threads(), signal.getsignal(signal.SIGINT), os.getcwd()
    GlobalHydra.instance().clear()
    returncode = 0
    try:
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            mock.patch.object(sys, "argv", [script, *args[1:]]),
            mock.patch.dict(os.environ, {"HYDRA_FULL_ERROR": "0"}),
            mock.patch("torch.cuda.is_available", return_value=False),  # as CPU_ONLY does
            mock.patch.object(dltips.task, "STARTED", time.time()),  # when a process would start
        ):
            os.chdir(cwd)
            logging.getLogger().handlers[:] = []  # a new process's root logger: no handler
            logging.getLogger().setLevel(logging.WARNING)  # (pytest's), so basicConfig works
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exit_:  # what the interpreter makes of sys.exit(code)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
                returncode = exit_.code if isinstance(exit_.code, int) else int(bool(exit_.code))
            except Exception:
                traceback.print_exc()
                returncode = 1
    finally:
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if not isinstance(lg, logging.Logger):
                continue
            handlers, *state = saved.get(lg, ([], logging.NOTSET, True, False))
            for h in set(lg.handlers) - set(handlers):
                h.close()
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = state
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)
        signal.signal(signal.SIGINT, sigint)
        gc.unfreeze()  # the script's start-up froze every object, this test's garbage too
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def start_script(*args: str, cwd: Path) -> subprocess.Popen:
    """Start a script of scripts/ in the background (to signal it), output captured as text."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / args[0]), *args[1:]],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **CPU_ONLY},
    )


def wait_for(condition, timeout: float = 60, what: str = "condition") -> None:
    """Poll `condition()` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def slurm() -> None:
    """A working SLURM: .ci/start_slurm.sh starts one on this machine (as root)."""
    if shutil.which("sinfo") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and cannot be (no apt-get)")
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "start_slurm.sh")], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.skip(f"SLURM could not start: {result.stderr.strip()}")


# the smallest CLI run that still learns: a few seconds, most of it start-up
TINY_CLI = ["model.width=32", "trainer.max_epochs=2"]


def file_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`: to assert nothing changed."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
