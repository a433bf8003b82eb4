"""Crash-safe files (written to a temporary file, then renamed), and checkpoints loaded
only when they are what dltips writes."""

import json
import os
import pickle
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from dltips.errors import CheckpointError, OutputError, RunInUse

# what a dltips checkpoint holds: train.py's state() writes these keys
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "early_stopping", "history", "rng", "config")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (since PyTorch 1.6)
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # older torch.save format


def _atomic_write(path: Path, write, also: Path | None = None) -> None:
    """Write through `write(file)` to a temporary file beside `path`, then rename it over.

    With `also`, the same file replaces `also` first (a hard link, or a copy where the file
    system has none), so that `also` is never older than `path`.
    """
    path = Path(path)
    tmp = other = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if also is not None:
            other = _link_or_copy(tmp, Path(also))
            os.replace(other, also)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    except BaseException as err:
        for left in (tmp, other):
            if left is not None:
                left.unlink(missing_ok=True)
        os_error = find_os_error(err)
        if os_error is None:
            raise
        raise OutputError(
            f"Cannot write {path}: {os_error.strerror or os_error}. Is the disk full or the "
            f"directory read-only? The previous {path.name}, if any, is intact."
        ) from err


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file `.<name>.<random>.tmp` beside `path`, open for writing.

    Created with mode 0666 like open() does, so the umask applies (tempfile.mkstemp would
    make it 0600, and os.replace keeps that mode).
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer's temporary: draw another name
            continue


def _link_or_copy(source: Path, path: Path) -> Path:
    """A new temporary file beside `path` with the contents of `source`: a hard link to it
    (no bytes written twice), or a copy where links are not allowed."""
    fd, tmp = _create_temporary(path)
    os.close(fd)
    try:
        tmp.unlink()
        os.link(source, tmp)
    except OSError:  # e.g. a file system without hard links: copy the bytes
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
    return tmp


def find_os_error(err: BaseException | None) -> OSError | None:
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


def atomic_save(obj: Any, path: Path, also: Path | None = None) -> None:
    """torch.save `obj` (tensors and plain values only) atomically; with `also`, the same
    file is written there too (best.pt of an epoch that is also last.pt)."""
    _atomic_write(path, lambda f: torch.save(obj, f), also)


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write `obj` as indented JSON atomically."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A dltips checkpoint, loaded with weights_only=True: tensors and plain values, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    _check_torch_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        damaged = _first_damaged_member(path)
        if damaged:  # garbled bytes also upset the unpickler: not a sign of code
            raise _damaged(path, f"{damaged} in the zip archive fails its CRC check") from err
        raise CheckpointError(
            f"Refusing to load {path}: besides tensors and plain values it holds "
            f"{_unpickler_complaint(err)}, which could run code, and dltips never runs code "
            f"from a file (nothing in it ran). dltips did not write it: resume from a "
            f"checkpoint that dltips wrote (a run directory's checkpoints/last.pt or best.pt)."
        ) from err
    except Exception as err:
        raise _damaged(path, f"{type(err).__name__}: {_first_sentence(str(err))}") from err
    problem = _what_is_wrong(ckpt)
    if problem:
        raise CheckpointError(
            f"{path} is not a dltips checkpoint: {problem}. It was not written by dltips, or "
            f"it was damaged or edited since. Resume from a run directory "
            f"(trainer.resume=<run dir> uses its checkpoints/last.pt) or from another "
            f"checkpoint, such as the run's checkpoints/best.pt."
        )
    return ckpt


def _check_torch_file(path: Path) -> None:
    """Raise unless `path` starts like a file that torch.save wrote (zip or legacy format)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(LEGACY_MAGIC):
        return
    if not head.startswith(ZIP_MAGIC):
        if not head:
            what = "it is empty"
        elif _is_text(head):
            what = "it is a text file, not the zip archive that torch.save writes"
        else:
            what = "it is not the zip archive that torch.save writes"
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: {what}. Give trainer.resume a run "
            f"directory or a .pt file from a run's checkpoints/ folder."
        )
    if not zipfile.is_zipfile(path):  # the zip's directory is at its end: cut off
        raise _damaged(path, "the zip archive has no central directory")
    with zipfile.ZipFile(path) as archive:
        if not any(Path(name).name == "data.pkl" for name in archive.namelist()):
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint: it is a zip archive without the "
                f"data.pkl that torch.save writes. Give trainer.resume a run directory or a "
                f".pt file from a run's checkpoints/ folder."
            )


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (JSON, YAML, Markdown, ...)."""
    if b"\0" in head:
        return False
    try:
        head.decode()
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end is fine
        return err.start >= len(head) - 3
    return True


def _first_damaged_member(path: Path) -> str | None:
    """The first file in the zip archive at `path` whose bytes fail their CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except Exception as err:  # a header too broken to check is damage too
        return f"a member ({type(err).__name__}: {err})"


def _damaged(path: Path, detail: str) -> CheckpointError:
    """The error for a torch file that cannot be read to the end."""
    return CheckpointError(
        f"Cannot read checkpoint {path}: the file is truncated or corrupt ({detail}). Resume "
        f"from another checkpoint (checkpoints/best.pt) or start the run again."
    )


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s|\n", text.strip(), maxsplit=1)[0]


def _unpickler_complaint(err: pickle.UnpicklingError) -> str:
    """What torch's weights_only unpickler refused, without its advice to load it unsafely."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"a pickled {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]*\S)", text)
    if found:
        return f"other pickled objects ({_first_sentence(found.group(1))})"
    return "other pickled objects (possibly code)"


def _what_is_wrong(ckpt: Any) -> str | None:
    """Why `ckpt` is not what train.py's state() writes, or None if it is."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a dict of training state"
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        return f"it has no {keys} key{'s' if len(missing) > 1 else ''}"
    epoch = ckpt["epoch"]
    if type(epoch) is not int or epoch < 0:  # not bool either, though True == 1
        return f"its 'epoch' is {epoch!r}, not a whole number >= 0"
    for key in ("model", "optimizer", "early_stopping", "rng", "config"):
        if not isinstance(ckpt[key], dict):
            return f"its {key!r} is a {type(ckpt[key]).__name__}, not a dict"
    not_tensors = [k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"its 'model' holds {not_tensors[0]!r}, which is not a tensor"
    for key in ("torch", "shuffle"):
        if not isinstance(ckpt["rng"].get(key), torch.Tensor):
            return f"its 'rng' has no {key!r} random state"
    missing = [k for k in ("best", "best_epoch", "bad_epochs") if k not in ckpt["early_stopping"]]
    if missing:
        return f"its 'early_stopping' has no {', '.join(repr(k) for k in missing)}"
    if not isinstance(ckpt["history"], list):
        return f"its 'history' is a {type(ckpt['history']).__name__}, not a list"
    return None


@contextmanager
def sole_writer(run_dirs: list[Path]) -> Iterator[None]:
    """Hold an exclusive lock on each run dir while training writes into it: RunInUse when
    another process holds one (a run resumed while it still trains, a sweep resumed twice),
    before anything is written. The kernel drops a lock when its process ends, however it
    ends. Where the file system cannot lock (some network mounts), runs train unlocked."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    busy = []
    with ExitStack() as held:
        for run_dir in run_dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir, os.O_RDONLY)
            held.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy.append(run_dir)
            except OSError:  # a file system that cannot lock: train unlocked, as before
                pass
        if busy:
            raise RunInUse(
                busy,
                f"{', '.join(map(str, busy))}: another process is training "
                f"{'this run' if len(busy) == 1 else 'these runs'} right now (was it resumed "
                f"twice?). Nothing was written. Let it finish, or stop it (Ctrl-C saves its "
                f"last epoch) and resume again.",
            )
        yield


def continued_run_dir(resume: str | None) -> Path | None:
    """The run dir that `trainer.resume=<resume>` keeps writing into, or None for a new one.

    A run dir continues itself; a checkpoint inside a run's checkpoints/ folder continues
    that run; any other checkpoint file (or a path that does not exist) starts a new dir.
    """
    if resume is None:
        return None
    path = Path(str(resume))
    if path.is_dir():
        return path
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent
    return None


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
    return path, continued_run_dir(resume)
