"""OmegaConf resolvers that conf/train.yaml uses to choose where a run writes.

Registered on `import dltips`, so that every process that runs a job has them (a SLURM or
joblib worker imports dltips when it unpickles the task).
"""

from pathlib import Path

from omegaconf import OmegaConf


def if_null(value, default):
    """`value`, or `default` when it is null: hydra.sweep.dir is sweep.resume when given."""
    return default if value is None else value


def run_dir(resume, default: str) -> str:
    """hydra.run.dir: the run that `trainer.resume` continues (its train.log goes on), else
    a new `default` dir."""
    from dltips.checkpoint import continued_run_dir  # torch: only when a run is set up

    continued = continued_run_dir(resume)
    return str(continued) if continued is not None else default


def hydra_subdir(output_dir: str) -> str | None:
    """hydra.output_subdir: `.hydra` for a new run dir; null for one that already has it, so
    that resuming (or refusing to) never rewrites how the run was started."""
    return None if (Path(output_dir) / ".hydra").exists() else ".hydra"


def register() -> None:
    for name, resolver in (
        ("if_null", if_null),
        ("dltips_run_dir", run_dir),
        ("dltips_hydra_subdir", hydra_subdir),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
