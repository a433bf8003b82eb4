"""TensorBoard logging: per-epoch scalars, per-layer gradient norms, HParams.

What `tensorboard --logdir <sweep dir>` shows without a click:
- runs named by what the sweep varies: a sweep job writes its events into a folder of its
  job dir named by its swept overrides, so job 0 is the run `0/model=sigmoid,optim=sgd`;
- the learning curves first: tag groups open in name order and only the first two are open,
  so `train/*` and `val/*` come first, then `weight_grad_norm_log10/*` (log10 of each
  layer's gradient norm, readable where the norms span orders of magnitude), then the final
  metrics under `~final/*` (`~` sorts last), which the HParams tab reads its values from;
- an HParams table of each run's status (runs.run_status: completed, stopped early,
  diverged, pruned), the swept keys and the val/test metrics first: at its end a sweep
  writes the experiment (which keys, which metrics, in which order) once, into
  `<sweep dir>/hparams/`; each job writes only its own values (a session).
"""

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp  # `hparams.api` without TensorFlow
from torch.utils.tensorboard import SummaryWriter

from dltips.resume import hydra_override
from dltips.runs import USABLE, settings_of
from dltips.schema import hparams, nodes

log = logging.getLogger(__name__)

FINAL = "~final/"  # tag prefix of the final metrics: sorts after every other tag group
GRAD_NORM = "weight_grad_norm_log10/"  # sorts after train/ and val/
# the HParams table's metric columns, in this order: validation and test first
METRICS = ("val/acc", "test/acc", "val/loss", "test/loss", "train/acc", "train/loss")
MAX_LABEL = 80  # characters of a run's label at most: it is a folder name
STATUS = "status"  # the HParams column of a run's status (runs.STATUSES): always the first
HPARAMS_DIR = "hparams"  # the sweep's experiment: a TensorBoard run of its own
SWEPT_ENV = "DLTIPS_SWEPT_KEYS"  # a sweep job's hydra.job.env_set: the keys its sweep varies


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the sweep of `config` (a sweep's config, as on_multirun_start gets it)
    varies, in command-line order, the sweeper's `params` (a preset's) first."""
    params = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params) if params else {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except Exception as err:  # a sweeper's own syntax: unnamed runs, never a failed sweep
        log.warning("Cannot tell which keys the sweep varies (%s); runs are not named", err)
        return []
    keys = [o.key_or_group for o in overrides if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def pass_swept_keys(config: DictConfig) -> None:
    """Give each job of the sweep of `config` the keys the sweep varies, which its own config
    lacks (its hydra.overrides.task holds its values only): as hydra.job.env_set.SWEPT_ENV,
    through the sweep's hydra overrides, which Hydra composes every job's config with, in
    this process or another (a SLURM job)."""
    keys = swept_keys(config)
    if keys:
        override = hydra_override(f"++hydra.job.env_set.{SWEPT_ENV}", " ".join(keys))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.hydra.append(override)


def job_swept_keys(hydra_config: DictConfig) -> list[str]:
    """The keys the sweep of a job varies, from the job's Hydra config (HydraConfig.get()):
    what pass_swept_keys gave it; none for a single run."""
    return hydra_config.job.env_set.get(SWEPT_ENV, "").split()


def run_label(keys: list[str], overrides: list[str]) -> str | None:
    """A sweep job's swept overrides as a folder name (`model=sigmoid,optim=sgd`): the
    `keys` the sweep varies (job_swept_keys) with their values in the job's `overrides`
    (hydra.overrides.task); None when it varies nothing (a single run: no keys).

    Slashes and other characters a folder name cannot hold become `-`, long numbers are
    cut to 4 significant digits, and the longest values so that the name has MAX_LABEL
    characters at most and still every swept key: the job number in front of it keeps each
    run's name unique.
    """
    settings = settings_of(overrides)
    pairs = [(k, _short_value(settings[k])) for k in keys if k in settings]
    # every key stays: the longest values are cut (to 4 characters at least) to fit
    while len(_joined(pairs)) > MAX_LABEL:
        i = max(range(len(pairs)), key=lambda j: len(pairs[j][1]))
        key, value = pairs[i]
        if len(value) <= 4:
            break
        pairs[i] = (key, value[: len(value) - 4] + "...")
    label = re.sub(r"[^\w.,=+\-\[\]()]", "-", _joined(pairs))
    if len(label) > MAX_LABEL:  # too many keys even with short values
        label = label[: MAX_LABEL - 3] + "..."
    return label or None


def _joined(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def _short_value(value: str) -> str:
    """0.00012345678 -> 0.0001235: an Optuna trial's floats, short enough for a name."""
    if len(value) <= 8:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def events_dir(run_dir: Path, label: str | None = None) -> Path:
    """Where a run writes its events: where it wrote them before (a resumed run stays one
    TensorBoard run), else its folder `label` (run_label) in a sweep, else the run dir."""
    run_dir = Path(run_dir)
    for pattern in ("events.out.tfevents.*", "*/events.out.tfevents.*"):
        found = sorted(run_dir.glob(pattern))
        if found:
            return found[0].parent
    return run_dir / label if label else run_dir


def _sweep_of(events: Path) -> Path | None:
    """The sweep dir of a job's events dir (the job dir or a folder in it), or None."""
    for folder in (events.parent, events.parent.parent):
        if (folder / "multirun.yaml").is_file():
            return folder
    return None


def open_writer(run_dir: Path, first_epoch: int, label: str | None = None) -> SummaryWriter:
    """A writer on the run's events dir (events_dir); on resume, events at or after
    `first_epoch` are dropped."""
    folder = events_dir(run_dir, label)
    if first_epoch > 1:
        wait_to_sort_after(folder)
    return SummaryWriter(log_dir=str(folder), purge_step=first_epoch if first_epoch > 1 else None)


def wait_to_sort_after(folder: Path) -> None:
    """Make sure a new event file in `folder` sorts after the ones there.

    TensorBoard reads a run's event files in name order, and a name starts with the second
    it was created in (events.out.tfevents.<seconds>.<host>.<pid>...). A resumed run's file
    made in the same second as the interrupted run's could sort first, and its epochs would
    then come before the earlier ones. In that rare case (a run resumed within a second of
    its start) this waits for the next second. It waits 2 s at most: a file stamped
    further ahead comes from another machine's clock, and waiting would not help.
    """
    seconds = []
    for path in folder.glob("events.out.tfevents.*"):
        stamp = path.name.split(".")[3]
        if stamp.isdigit():
            seconds.append(int(stamp))
    wait = max(seconds) + 1 - time.time() if seconds else 0.0
    if 0 < wait <= 2:
        time.sleep(wait)


def log_epoch(writer: SummaryWriter, epoch: int, scalars: dict[str, float]) -> None:
    """One point per tag at step `epoch` (train/loss, val/acc, train/lr...); a gradient norm
    `grad_norm/<layer>` is written as its log10, `weight_grad_norm_log10/<layer>`. The
    writer's thread writes them; a checkpoint's save flushes them (dltips.run_state)."""
    for tag, value in scalars.items():
        if tag == "epoch":
            continue
        if tag.startswith("grad_norm/"):
            if not value > 0:  # a zero norm has no log; a gap says more than -inf
                continue
            tag, value = GRAD_NORM + tag.removeprefix("grad_norm/"), math.log10(value)
        writer.add_scalar(tag, value, epoch)


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def key_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's main hyperparameters (the schema's `hparam` keys) as flat str/int/float/bool
    values for the HParams tab: a class by its name, a list as its text."""
    defaults = {key: f.default for key, f in nodes()}  # optim keys its class lacks
    values = {}
    for name, key in hparams().items():
        value = OmegaConf.select(cfg, key, default=defaults[key])
        if isinstance(value, DictConfig) or key.endswith("._target_"):
            value = _short(value._target_ if isinstance(value, DictConfig) else value)
        values[name] = str(list(value)) if isinstance(value, ListConfig) else value
    # the HParams plugin takes only str, int, float and bool
    return {k: "none" if v is None else v for k, v in values.items()}


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """HParams plugin data as a summary (what summary_v2 does for the two it builds)."""
    plugin = metadata.create_summary_metadata(data)
    return Summary(value=[Summary.Value(tag=tag, metadata=plugin, tensor=metadata.NULL_TENSOR)])


def _hparam_info(name: str, values: list[Any], differs: bool) -> api_pb2.HParamInfo:
    """A column of the HParams table: a number is filtered by an interval, a str or bool by
    a checkbox per value."""
    info = api_pb2.HParamInfo(name=name, differs=differs)
    kinds = {type(v) for v in values}
    if kinds <= {int, float}:
        info.type = api_pb2.DATA_TYPE_FLOAT64
    elif len(kinds) == 1:
        hp.Discrete(dict.fromkeys(values)).update_hparam_info(info)
    else:  # "none" and numbers (data/train_size): checkboxes too, which hp.Discrete refuses
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(dict.fromkeys(values))
    return info


def experiment_summary(sessions: list[dict[str, Any]]) -> Summary:
    """The HParams experiment: the hyperparameters whose value differs between the
    `sessions` (all of them when none differs: a single run) and the final metrics, METRICS
    first. TensorBoard ticks the first five hyperparameters: the ones that differ.

    Not hp.hparams_config_pb: it cannot mark a column as differing."""
    names = list(dict.fromkeys(k for s in sessions for k in s))
    differs = [k for k in names if len({repr(s.get(k)) for s in sessions}) > 1]
    shown = sorted(k for k in differs or names if k != STATUS)  # as TensorBoard lists them
    if STATUS in names:  # first (ticked), a filter of each status, even when all agree
        shown.insert(0, STATUS)
    infos = [_hparam_info(n, [s[n] for s in sessions if n in s], n in differs) for n in shown]
    metrics = [hp.Metric(FINAL + m, display_name=m).as_proto() for m in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment)
    return _summary(metadata.EXPERIMENT_TAG, data)


def log_hparams(
    writer: SummaryWriter, hparam_values: dict[str, Any], final: dict[str, float], step: int
) -> None:
    """Fill the HParams tab with this run (a session) and its final metrics; its status
    (runs.run_status) is the hyperparameter STATUS, the table's first column.

    The metrics are written as scalars `~final/<name>`, which is where the plugin reads
    their values from. A single run also writes the experiment (which columns the table
    has); a sweep job leaves that to the sweep (log_sweep_hparams), which knows what varies.
    """
    # trial_id "": a row of its own (by default runs of the same values share one)
    summaries = [hp.hparams_pb(hparam_values, trial_id="")]
    # a diverged or pruned run's session failed: the table's status filter tells them apart
    usable = hparam_values.get(STATUS, "completed") in USABLE
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if usable else api_pb2.STATUS_FAILURE
    )
    summaries.append(
        _summary(
            metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)
        )
    )
    if _sweep_of(Path(writer.log_dir)) is None:
        summaries.insert(0, experiment_summary([hparam_values]))
    for summary in summaries:
        writer.file_writer.add_summary(summary)
    for name, value in final.items():
        writer.add_scalar(FINAL + name, value, step)
    writer.flush()


def read_session(events: Path) -> dict[str, Any] | None:
    """The hyperparameters a run's events dir holds (its session start), or None."""
    for path in sorted(Path(events).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    start = metadata.parse_session_start_info_plugin_data(
                        value.metadata.plugin_data.content
                    )
                    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return None


def log_sweep_hparams(sweep_dir: Path) -> Path | None:
    """Write the sweep's HParams experiment, the hyperparameters that differ between its
    jobs, into `<sweep dir>/hparams/` (rewritten when the sweep is resumed). The file, or
    None when no job has finished."""
    sweep_dir = Path(sweep_dir)
    found = sweep_dir.glob("*/events.out.tfevents.*"), sweep_dir.glob("*/*/events.out.tfevents.*")
    dirs = sorted({p.parent for files in found for p in files} - {sweep_dir / HPARAMS_DIR})
    sessions = [s for s in map(read_session, dirs) if s]
    if not sessions:
        return None
    target = sweep_dir / HPARAMS_DIR / "events.out.tfevents.hparams"
    tmp = sweep_dir / HPARAMS_DIR / ".tmp"
    with SummaryWriter(log_dir=str(tmp)) as writer:
        writer.file_writer.add_summary(experiment_summary(sessions))
    (written,) = tmp.glob("events.out.tfevents.*")
    written.replace(target)  # a reader sees the old file or the new one, never half of one
    tmp.rmdir()
    return target
