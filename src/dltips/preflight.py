"""Checks that run before Hydra writes anything: a bad run dir or a mismatched resume is
refused while every file already written is still as it was.

`StartChecks` is a Hydra callback (conf/train.yaml): Hydra calls it after composing the
config and before it creates the run or sweep dir, writes `.hydra/` or launches a job.
"""

import itertools
import logging
import shlex
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dltips.pruning import SWEEPER as OPTUNA_SWEEPER
from dltips.resume import hydra_override, override_arg
from dltips.runs import recorded_overrides, settings_of

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

log = logging.getLogger(__name__)


class PreflightError(SystemExit):
    """Stops the command with `error: <message>` and exit status 1, before anything is written."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def check_same_job(job_dir: Path, overrides: list[str], sweep_dir: Path) -> None:
    """Refuse to resume `job_dir` with other overrides than it was started with."""
    recorded = recorded_overrides(job_dir)
    if recorded is None:
        return
    old, new = settings_of(recorded), settings_of(overrides)
    changes = [
        f"{k}: {old.get(k, '(not set)')} -> {new.get(k, '(not set)')}"
        for k in dict.fromkeys([*old, *new])
        if old.get(k) != new.get(k)
    ]
    if changes:
        raise PreflightError(
            f"sweep.resume={sweep_dir}: job {job_dir.name} was run with other overrides than "
            f"this command gives it:\n    " + "\n    ".join(changes) + "\n"
            f"  A resumed sweep must repeat the original sweep's overrides, in the same order "
            f"(job {job_dir.name} ran with: {' '.join(recorded)}). Nothing was changed. To run "
            f"other settings, start a new sweep (leave out sweep.resume)."
        )


def check_writable(folder: Path, key: str) -> None:
    """Create `folder` and a file in it, or explain why that is impossible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise _cannot_write(folder, key, err) from None


def _cannot_write(folder: Path, key: str, err: OSError) -> PreflightError:
    return PreflightError(
        f"Cannot write the output directory {folder}: {err.strerror or err}.\n"
        f"  Run from a writable directory, or choose one with {key}=<path>."
    )


def claim_clock_named_dir(config: DictConfig, mode: str) -> Path | None:
    """hydra.<mode>.dir (`mode` "run" or "sweep") when it is named by the clock, as the
    default outputs/DATE/TIME is: created now, or `<TIME>_2`, `_3`, ... when another command
    started in the same second has it, and set in `config`, so that Hydra writes there.
    None for a dir named otherwise (by the user), which is used as it is.

    mkdir is atomic: commands started in the same second each get a dir of their own
    instead of writing into one, where their results would overwrite each other's under
    each other's settings.
    """
    node, key = config.hydra[mode], f"hydra.{mode}.dir"
    if "${now:" not in str(OmegaConf.to_container(node, resolve=False)["dir"]):
        return None
    folder = Path(node.dir)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cannot_write(folder, key, err) from None
    for n in itertools.count(1):
        claimed = folder if n == 1 else folder.with_name(f"{folder.name}_{n}")
        try:
            claimed.mkdir()
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise _cannot_write(claimed, key, err) from None
    if claimed != folder:
        log.info(
            "%s is taken (another command started in the same second): writing to %s",
            folder,
            claimed,
        )
        with read_write(config.hydra), open_dict(config.hydra):
            node.dir = str(claimed)
            if mode == "sweep":  # each job's config is composed anew from these overrides
                config.hydra.overrides.hydra.append(hydra_override(key, claimed))
    return claimed


def sweep_command(sweep_dir: Path) -> str:
    """The overrides a sweep was started with, from its multirun.yaml, each followed by a
    space; '<the sweep's overrides> ' when it has none to read."""
    try:
        task = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
    except Exception:  # no such sweep, or not one dltips wrote: the user knows the command
        return "<the sweep's overrides> "
    return "".join(f"{shlex.quote(o)} " for o in task if not o.startswith("sweep.resume="))


def holds_a_run(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir() or (folder / "metrics.json").is_file()


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in job order, as Hydra's grid sweeper will launch them: the
    product of the swept values, the sweeper's params first, then the command's overrides
    (a key given again keeps its place and takes the later value). None when another
    sweeper decides the jobs, or for a sweep the grid sweeper refuses (Hydra reports it)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments = params + list(config.hydra.overrides.task)
    grid: dict[str, list[str]] = {}
    try:
        for override in OverridesParser.create().parse_overrides(arguments):
            key = override.get_key_element()
            if not override.is_sweep_override():
                grid[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                grid[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            else:  # interval(): the grid sweeper refuses it
                return None
    except Exception:  # e.g. glob(): Hydra itself reports those; each job still checks itself
        return None
    return [list(job) for job in itertools.product(*grid.values())]


class StartChecks(Callback):
    """Refuse, before anything is written, what would overwrite or mislabel earlier results."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.sweep.resume is not None:
            raise PreflightError(
                f"sweep.resume continues a sweep, and this command is a single run (no -m): "
                f"it would train a new run instead. Run the sweep's own command with -m: "
                f"python scripts/train.py -m {sweep_command(Path(config.sweep.resume))}"
                f"{override_arg('sweep.resume', config.sweep.resume)}"
            )
        claimed = None if config.trainer.resume else claim_clock_named_dir(config, "run")
        run_dir = claimed or Path(config.hydra.run.dir)
        if not config.trainer.resume and holds_a_run(run_dir):
            raise PreflightError(
                f"{run_dir} already holds a run. Continue it with "
                f"{override_arg('trainer.resume', run_dir)}, or choose a new hydra.run.dir."
            )
        check_writable(run_dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        members = config.hydra.launcher.get("max_members")
        if members is not None and (type(members) is not int or members < 1):
            raise PreflightError(
                f"hydra.launcher.max_members={members!r}: must be a positive integer (runs per "
                f"group at most) or null (as many as fit in memory)."
            )
        overrides = list(config.hydra.overrides.task)
        if any(o.split("=", 1)[0].lstrip("+~") == "trainer.resume" for o in overrides):
            raise PreflightError(
                "trainer.resume continues one run and cannot be given to a sweep (-m): every "
                "job would train in that one run's directory. To continue an interrupted "
                "sweep, run the same command plus sweep.resume=<sweep dir>."
            )
        resume = config.sweep.resume
        claimed = None if resume is not None else claim_clock_named_dir(config, "sweep")
        sweep_dir = claimed or Path(config.hydra.sweep.dir)
        if resume is None:
            if sweep_dir.is_dir() and any(holds_a_run(p) for p in sweep_dir.iterdir()):
                raise PreflightError(
                    f"{sweep_dir} already holds a sweep. Continue it with the same command "
                    f"plus {override_arg('sweep.resume', sweep_dir)}, or choose a new "
                    f"hydra.sweep.dir."
                )
        else:
            if not sweep_dir.is_dir():
                raise PreflightError(
                    f"sweep.resume={resume}: no such sweep directory. Sweeps are under "
                    f"outputs/multirun/DATE/TIME/."
                )
            check_resumed_sweep(config, sweep_dir)
        check_writable(sweep_dir, "hydra.sweep.dir")


def check_resumed_sweep(config: DictConfig, sweep_dir: Path) -> None:
    """Every job that already has a dir must be given the overrides it was started with."""
    if config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
        return  # it checks its study before any trial: the same search, no job dir reused
    jobs = sweep_jobs(config)
    if jobs is None:
        raise PreflightError(
            f"sweep.resume works with grid sweeps (Hydra's basic sweeper); "
            f"{config.hydra.sweeper.get('_target_')} decides its jobs anew each time, so "
            f"resuming it could give old job dirs new settings. Start a new search instead."
        )
    if OmegaConf.to_container(config.hydra.sweep)["subdir"] != "${hydra.job.num}":
        return  # job dirs named otherwise: each job checks its own dir when it starts
    existing = sorted(int(p.name) for p in sweep_dir.iterdir() if p.name.isdigit())
    if existing and existing[-1] >= len(jobs):
        raise PreflightError(
            f"sweep.resume={sweep_dir}: the sweep has jobs 0 to {existing[-1]}, but this "
            f"command makes {len(jobs)}. Repeat the original sweep's overrides (see "
            f"{sweep_dir / 'multirun.yaml'}, hydra.overrides.task). Nothing was changed."
        )
    for num in existing:
        check_same_job(sweep_dir / str(num), jobs[num], sweep_dir)
