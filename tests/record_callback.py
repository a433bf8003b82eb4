"""A user's Hydra callback for tests: records each job's start and end in a JSON-lines file."""

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class RecordCallback(Callback):
    """Appends what a logger or notifier would see: the job, whether it has trained yet
    (its metrics.json), and at the end its status and return value."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.record("start", config)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = job_return._return_value  # the property raises for a failed job
        self.record("end", config, status=job_return.status.name, return_value=value)

    def record(self, event: str, config: DictConfig, **fields: Any) -> None:
        metrics = Path(config.hydra.runtime.output_dir) / "metrics.json"
        line = {
            "event": event,
            "job": OmegaConf.select(config, "hydra.job.num"),  # None: a single run
            "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
            **fields,
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line, default=repr) + "\n")
