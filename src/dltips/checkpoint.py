"""Crash-safe files: checkpoints and JSON written to a temporary file, then renamed."""

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from dltips.errors import CheckpointError, OutputError


def _atomic_write(path: Path, write) -> None:
    """Write through `write(file)` to a temporary file beside `path`, then rename it over."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        os_error = _find_os_error(err)
        if os_error is None:
            raise
        raise OutputError(
            f"Cannot write {path}: {os_error.strerror or os_error}. Is the disk full or the "
            f"directory read-only? The previous {path.name}, if any, is intact."
        ) from err


def _find_os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err` (torch.save reports a full disk as a RuntimeError)."""
    while err is not None:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that a killed process left behind in `folder`."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save `obj` (tensors and plain values only) atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write `obj` as indented JSON atomically."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: tensors and plain values, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load {path}: it holds objects other than tensors and plain values "
            f"(possibly code), and dltips loads checkpoints with weights_only=True. "
            f"Only resume from checkpoints that dltips wrote. ({str(err).splitlines()[0]})"
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"Cannot read checkpoint {path}: the file is truncated or corrupt "
            f"({type(err).__name__}: {err}). Resume from another checkpoint "
            f"(checkpoints/best.pt) or start the run again."
        ) from err


def resolve_resume(resume: str) -> tuple[Path, Path | None]:
    """(checkpoint file, run dir to keep writing into) for a trainer.resume value.

    A run dir means its checkpoints/last.pt; a checkpoint inside a run's checkpoints/
    folder continues that run's dir; any other checkpoint file starts a new dir (None).
    """
    path = Path(resume)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise CheckpointError(
                f"trainer.resume={resume}: no checkpoint at {ckpt}. Give a run directory "
                f"that has checkpoints/last.pt, or the path of a .pt checkpoint file."
            )
        return ckpt, path
    if not path.exists():
        raise CheckpointError(
            f"trainer.resume={resume}: no such run directory or checkpoint file. "
            f"Run directories are under outputs/DATE/TIME/ (or outputs/multirun/...)."
        )
    if path.parent.name == "checkpoints":
        return path, path.parent.parent
    return path, None
