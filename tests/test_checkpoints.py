"""Checkpoints: only a real dltips checkpoint loads, and files follow the umask."""

import json
import os
import shutil
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_cfg, run_cli
from dltips.checkpoint import load_checkpoint
from dltips.errors import CheckpointError
from dltips.run_state import Job
from dltips.train import train, train_group

TIMINGS = ("wall_seconds", "seconds_per_epoch", "epoch_seconds")


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real one-epoch run: checkpoints/last.pt, best.pt and metrics.json."""
    run = tmp_path_factory.mktemp("checkpoints") / "run"
    train(make_cfg("trainer.max_epochs=1"), run)
    return run


def edited(run_dir: Path, folder: Path, edit) -> Path:
    """A copy of the run's last.pt with `edit(checkpoint)` saved in its place."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    path = folder / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(edit(ckpt), path)
    return path


def test_checkpoints_of_a_real_run_load(run_dir):
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run_dir / "checkpoints" / name)
        assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1


def without(ckpt: dict, *keys: str) -> dict:
    """`ckpt` less the entry at `keys`, a path into its nested dicts."""
    inner = ckpt
    for key in keys[:-1]:
        inner = inner[key]
    del inner[keys[-1]]
    return ckpt


def replaced(ckpt: dict, key: str, value) -> dict:
    return {**ckpt, key: value}


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: list(c.values()), "it holds a list, not a dict"),
        (lambda c: without(c, "model"), "it has no 'model' key"),
        (lambda c: without(without(c, "rng"), "config"), "it has no 'rng', 'config' keys"),
        (lambda c: replaced(c, "epoch", "five"), "its 'epoch' is 'five', not a whole number"),
        (lambda c: replaced(c, "epoch", -1), "its 'epoch' is -1, not a whole number >= 0"),
        (lambda c: replaced(c, "epoch", 2.0), "its 'epoch' is 2.0, not a whole number"),
        (lambda c: replaced(c, "model", [1, 2]), "its 'model' is a list, not a dict"),
        (lambda c: replaced(c, "model", {"w": "x"}), "its 'model' holds 'w', which is not a"),
        (lambda c: replaced(c, "optimizer", "adam"), "its 'optimizer' is a str, not a dict"),
        (lambda c: without(c, "rng", "shuffle"), "its 'rng' has no 'shuffle' random state"),
        (lambda c: without(c, "rng", "torch"), "its 'rng' has no 'torch' random state"),
        (
            lambda c: without(c, "early_stopping", "bad_epochs"),
            "its 'early_stopping' has no 'bad_epochs'",
        ),
        (lambda c: replaced(c, "history", {}), "its 'history' is a dict, not a list"),
    ],
)
def test_a_torch_file_that_is_not_a_dltips_checkpoint_says_what_is_wrong(
    run_dir, tmp_path, edit, problem
):
    path = edited(run_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not a dltips checkpoint: {problem}")
    assert "not written by dltips, or it was damaged" in message
    assert "trainer.resume=<run dir>" in message and "best.pt" in message


def test_missing_model_is_named_at_the_command_line_not_called_a_mismatch(run_dir, tmp_path):
    edited(run_dir, tmp_path / "run", lambda c: without(c, "model"))
    out = run_cli("train.py", f"trainer.resume={tmp_path / 'run'}", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "error: " in text and "last.pt is not a dltips checkpoint: it has no 'model' key" in text
    assert "does not fit" not in text and "Traceback" not in text


@pytest.mark.parametrize("name", ["README.md", "metrics.json"])
def test_a_file_that_is_not_a_torch_file_is_called_so_at_the_command_line(run_dir, tmp_path, name):
    source = ROOT / "README.md" if name == "README.md" else run_dir / "metrics.json"
    shutil.copy(source, tmp_path / name)
    out = run_cli("train.py", f"trainer.resume={name}", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"error: {name} is not a PyTorch checkpoint: it is a text file" in text
    assert "possibly code" not in text and "weights_only" not in text
    assert "Traceback" not in text


def touch(path: Path) -> None:
    path.touch()


class Payload:
    """Unpickling this runs code: it calls touch() to create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (touch, (self.marker,))


def test_pickled_code_is_refused_by_name_without_advice_to_load_it_unsafely(run_dir, tmp_path):
    marker = tmp_path / "payload-ran"
    path = edited(run_dir, tmp_path, lambda c: replaced(c, "extra", Payload(marker)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"Refusing to load {path}: ")
    assert f"it holds a pickled {__name__}.touch, which could run code" in message
    assert "nothing in it ran" in message and "weights_only" not in message
    assert not marker.exists()


def data_pkl_offset(path: Path) -> int:
    """Where the bytes of data.pkl start inside a checkpoint's zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_length + extra_length


def test_damaged_bytes_are_called_corrupt_not_code(run_dir, tmp_path):
    path = tmp_path / "last.pt"
    data = bytearray((run_dir / "checkpoints" / "last.pt").read_bytes())
    data[data_pkl_offset(run_dir / "checkpoints" / "last.pt")] ^= 0xFF  # the pickle's opcode
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="last.pt: the file is truncated or corrupt"):
        load_checkpoint(path)


def test_a_checkpoint_cut_anywhere_is_called_truncated(run_dir, tmp_path):
    data = (run_dir / "checkpoints" / "last.pt").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        (tmp_path / "last.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="last.pt: the file is truncated or corrupt"):
            load_checkpoint(tmp_path / "last.pt")


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.slow
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        cfg = make_cfg("trainer.max_epochs=1", f"data.root={tmp_path / 'data'}")
        train(cfg, tmp_path / "run")
        (tmp_path / "plain.txt").write_text("")  # as open() makes any other file
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == expected
    written = [
        tmp_path / "run" / "metrics.json",
        tmp_path / "run" / "checkpoints" / "last.pt",
        tmp_path / "run" / "checkpoints" / "best.pt",
        tmp_path / "data" / "cache" / "mnist_5k.pt",
    ]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {
        p.name: oct(expected) for p in written
    }
    assert json.loads(written[0].read_text())["status"] == "completed"
    assert not list(tmp_path.rglob(".*.tmp"))  # renamed into place, nothing left beside


EVERY = ["trainer.max_epochs=7", "trainer.early_stopping.patience=null"]


def saves_recorded(monkeypatch) -> list[tuple[str, int, str | None]]:
    """(file, epoch, linked file) of every checkpoint train() writes from now on."""
    import dltips.run_state

    saves = []
    save = dltips.run_state.atomic_save

    def recording(obj, path, also=None):
        saves.append((Path(path).name, obj["epoch"], also and Path(also).name))
        save(obj, path, also)

    monkeypatch.setattr(dltips.run_state, "atomic_save", recording)
    return saves


@pytest.mark.slow
def test_checkpoint_every_n_epochs_trains_the_same_and_writes_less(tmp_path, monkeypatch):
    saves = saves_recorded(monkeypatch)
    every_epoch = train(make_cfg(*EVERY), tmp_path / "1")
    assert [epoch for name, epoch, _ in saves if name == "last.pt"] == list(range(8))
    saves.clear()
    sparse = train(make_cfg(*EVERY, "trainer.checkpoint_every=3"), tmp_path / "3")
    assert [epoch for name, epoch, _ in saves if name == "last.pt"] == [0, 3, 6, 7]
    assert without_time(sparse) == without_time(every_epoch)  # the same training and result
    ckpts = tmp_path / "3" / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 7
    # the best epoch's weights reach best.pt at the next save, even between multiples of 3
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == sparse["best_epoch"]


def test_checkpoint_every_n_a_diverged_run_still_reports_its_last_completed_epoch(
    tmp_path, monkeypatch
):
    # the loss turns non-finite in epoch 5: the reported weights are epoch 4's, which with
    # checkpoint_every=3 were only in memory when it diverged
    from dltips.step import TrainStep

    read = TrainStep.read

    def diverging_in_epoch_5(step, sizes):
        sums = read(step, sizes)
        step.epochs_read = getattr(step, "epochs_read", 0) + 1
        if step.epochs_read == 5:
            sums = [replace(s, first_bad_step=2, bad_loss=float("nan")) for s in sums]
        return sums

    monkeypatch.setattr(TrainStep, "read", diverging_in_epoch_5)
    common = [*EVERY, "trainer.early_stopping.restore_best=false"]
    every_epoch = train(make_cfg(*common), tmp_path / "1")
    sparse = train(make_cfg(*common, "trainer.checkpoint_every=3"), tmp_path / "3")
    assert sparse["status"] == every_epoch["status"] == "diverged"
    assert without_time(sparse) == without_time(every_epoch)
    assert load_checkpoint(tmp_path / "3" / "checkpoints" / "last.pt")["epoch"] == 4


@pytest.mark.slow  # the most expensive in-process test of its file
def test_checkpoint_every_n_in_a_batched_group(tmp_path):
    # one run stops early (patience 1), the other trains all 7 epochs
    cfgs = [["seed=0"], ["seed=1", "trainer.early_stopping.patience=1"]]

    def group(every: int) -> list[dict]:
        jobs = [
            Job(make_cfg(*EVERY, *c, f"trainer.checkpoint_every={every}"), tmp_path / f"{every}{k}")
            for k, c in enumerate(cfgs)
        ]
        return train_group(jobs)

    every_epoch, sparse = group(1), group(3)
    assert [without_time(m) for m in sparse] == [without_time(m) for m in every_epoch]
    for k, metrics in enumerate(sparse):
        last = load_checkpoint(tmp_path / f"3{k}" / "checkpoints" / "last.pt")
        assert last["epoch"] == metrics["epochs_trained"]
