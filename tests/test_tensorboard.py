"""TensorBoard at a glance: runs named by what a sweep varies, learning curves first,
gradient norms as log10, an HParams table that starts with the swept keys."""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from conftest import CONF_DIR, TINY_CLI, make_cfg, run_cli
from dltips.tensorboard_log import (
    FINAL,
    METRICS,
    events_dir,
    experiment_summary,
    job_swept_keys,
    log_sweep_hparams,
    open_writer,
    pass_swept_keys,
    read_session,
    run_label,
    swept_keys,
)
from dltips.train import train


def events(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder)).Reload()


def experiment(folder: Path):
    content = events(folder).PluginTagToContent(metadata.PLUGIN_NAME)
    return metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])


def tag_groups(tags: list[str]) -> list[str]:
    """Tag groups in the order TensorBoard lists them (by name; the first two are open)."""
    return sorted({t.split("/", 1)[0] for t in tags}, key=str.lower)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real 2-job sweep; seed=1 is the same in both jobs, so only `model` varies."""
    tmp = tmp_path_factory.mktemp("tb")
    folder = tmp / "sweep"
    result = run_cli(
        "train.py", "-m", "model=sigmoid,relu", "seed=1", *TINY_CLI,
        f"hydra.sweep.dir={folder}", cwd=tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder


def test_sweep_runs_are_named_by_the_swept_keys_in_numbered_job_dirs(sweep_dir):
    # job dirs keep their numbers (a resumed sweep finds them); the events in each are the
    # TensorBoard run `<job>/<swept overrides>`
    runs = sorted(
        p.parent.relative_to(sweep_dir).as_posix() for p in sweep_dir.glob("*/*/*tfevents*")
    )
    assert runs == ["0/model=sigmoid", "1/model=relu"]
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "metrics.json").read_text())["status"] == "completed"


def test_sweep_hparams_start_with_the_swept_keys_and_val_test_metrics(sweep_dir):
    # one experiment for all of the sweep's runs: its columns are what differs between them
    exp = experiment(sweep_dir / "hparams")
    assert [(h.name, h.differs) for h in exp.hparam_infos] == [
        ("status", False),
        ("model/activation", True),
    ]
    assert {v.string_value for v in exp.hparam_infos[1].domain_discrete.values} == {
        "Sigmoid",
        "ReLU",
    }
    assert [m.display_name for m in exp.metric_infos][:2] == ["val/acc", "test/acc"]
    for job, label in (("0", "model=sigmoid"), ("1", "model=relu")):
        run = events(sweep_dir / job / label)
        tags = run.PluginTagToContent(metadata.PLUGIN_NAME)
        assert metadata.EXPERIMENT_TAG not in tags  # the sweep's one is the only one
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        for info in exp.metric_infos:  # every column of the table has its value
            (point,) = run.Scalars(info.name.tag)
            assert point.value == pytest.approx(metrics[info.display_name])
    sessions = [
        read_session(sweep_dir / "0" / "model=sigmoid"),
        read_session(sweep_dir / "1" / "model=relu"),
    ]
    assert [s["model/activation"] for s in sessions] == ["Sigmoid", "ReLU"]


@pytest.mark.slow
def test_resumed_sweep_job_writes_into_the_same_tensorboard_run(sweep_dir, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    (copy / "1" / "metrics.json").unlink()  # as if killed before its end
    result = run_cli(
        "train.py", "-m", "model=sigmoid,relu", "seed=1", *TINY_CLI,
        f"hydra.sweep.dir={copy}", f"sweep.resume={copy}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((copy / "1" / "metrics.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (copy / "1").iterdir() if p.is_dir()) == [
        ".hydra",
        "checkpoints",
        "model=relu",
    ]
    assert [e.step for e in events(copy / "1" / "model=relu").Scalars("val/acc")] == [1, 2]
    assert [h.name for h in experiment(copy / "hparams").hparam_infos] == [
        "status",
        "model/activation",
    ]


def test_single_run_puts_learning_curves_first_and_grad_norms_as_log10(tmp_path):
    metrics = train(make_cfg("model=sigmoid", "model.depth=3"), tmp_path)
    assert events_dir(tmp_path) == tmp_path  # a single run: events in its own dir
    run = events(tmp_path)
    tags = run.Tags()["scalars"]
    assert tag_groups(tags)[:2] == ["train", "val"]  # the two groups TensorBoard opens
    assert tag_groups(tags)[-1] == FINAL.rstrip("/")
    for epoch in metrics["history"]:
        for layer in ("hidden1", "hidden2", "hidden3", "output"):
            (point,) = [
                e
                for e in run.Scalars(f"weight_grad_norm_log10/{layer}")
                if e.step == epoch["epoch"]
            ]
            assert point.value == pytest.approx(math.log10(epoch[f"grad_norm/{layer}"]), abs=1e-5)
    # a single run has its own experiment: the final metrics, val and test first
    exp = experiment(tmp_path)
    assert [m.display_name for m in exp.metric_infos] == list(METRICS)
    for info in exp.metric_infos:
        assert run.Scalars(info.name.tag)[-1].value == pytest.approx(metrics[info.display_name])


def sweep_config(*arguments: str, params: dict | None = None) -> DictConfig:
    """A sweep's config as Hydra gives on_multirun_start: the command's overrides, the
    sweeper's params (a preset's)."""
    hydra = {"overrides": {"task": list(arguments), "hydra": []}, "sweeper": {"params": params}}
    return OmegaConf.create({"hydra": hydra})


def test_run_label_names_only_swept_keys_and_is_a_safe_bounded_folder_name():
    sweep = sweep_config(
        "experiment=lecture/step1,lecture/step4",
        "trainer.max_epochs=3",
        "trainer.device=cpu,cuda",  # how to run, not what: never part of the name
        "optim.lr=tag(log, interval(0.0001, 0.1))",
        params={"model.depth": "1,2"},
    )
    keys = swept_keys(sweep)
    assert keys == ["model.depth", "experiment", "trainer.device", "optim.lr"]
    first = ["model.depth=2", "experiment=lecture/step4", "trainer.max_epochs=3",
             "trainer.device=cpu", "optim.lr=0.00012345678901"]  # fmt: skip
    assert run_label(keys, first) == "model.depth=2,experiment=lecture-step4,optim.lr=0.0001235"
    label = run_label(keys, ["model.depth=1", f"experiment={'x' * 200}", "optim.lr=0.001"])
    assert len(label) == 80 and "/" not in label
    # every swept key stays in the name: the long value is cut, not the keys after it
    assert label.startswith("model.depth=1,experiment=xxx") and label.endswith("...,optim.lr=0.001")
    assert run_label([], ["model=relu"]) is None  # a single run


def test_each_job_gets_its_sweeps_keys_through_the_hydra_overrides():
    # Hydra composes every job's config anew from the sweep's hydra overrides: the keys
    # travel there, to jobs in this process or another; a sweep that varies nothing adds none
    sweep = sweep_config("model=sigmoid,relu", "optim.lr=tag(log, interval(0.001, 0.1))")
    pass_swept_keys(sweep)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        job = compose("train", list(sweep.hydra.overrides.hydra), return_hydra_config=True)
        single = compose("train", ["model=relu"], return_hydra_config=True)
    assert job_swept_keys(job.hydra) == ["model", "optim.lr"]
    assert job_swept_keys(single.hydra) == []
    fixed = sweep_config("model=relu")
    pass_swept_keys(fixed)
    assert list(fixed.hydra.overrides.hydra) == []


def test_a_run_keeps_writing_where_its_events_are(tmp_path):
    old = tmp_path / "0"
    old.mkdir()
    (old / "events.out.tfevents.1.host").write_bytes(b"")  # a job of an earlier version
    assert events_dir(old, "model=sigmoid") == old
    assert events_dir(tmp_path / "1", "model=relu") == tmp_path / "1" / "model=relu"


@pytest.mark.slow
def test_a_resumed_runs_events_sort_after_the_interrupted_runs(tmp_path):
    # TensorBoard reads a run's event files in name order, which starts with the second a
    # file was made in: a run resumed within a second of its start could come first
    first = open_writer(tmp_path, first_epoch=1)
    first.add_scalar("val/loss", 1.0, 1)
    first.close()
    (old,) = tmp_path.glob("events.out.tfevents.*")
    _, _, _, seconds, rest = old.name.split(".", 4)
    # its second is the next one, so the resumed file is made in the same second or before
    old.rename(tmp_path / f"events.out.tfevents.{int(time.time()) + 1}.{rest}")
    resumed = open_writer(tmp_path, first_epoch=2)
    resumed.add_scalar("val/loss", 0.5, 2)
    resumed.close()
    assert sorted(tmp_path.glob("events.out.tfevents.*"))[0].name.endswith(rest)
    accumulator = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in accumulator.Scalars("val/loss")] == [1, 2]
    # a file stamped an hour ahead (another machine's clock): no waiting for it
    newest = max(tmp_path.glob("events.out.tfevents.*"))
    newest.rename(tmp_path / f"events.out.tfevents.{int(time.time()) + 3600}.other.1.0")
    started = time.monotonic()
    open_writer(tmp_path, first_epoch=3).close()
    assert time.monotonic() - started < 1


@pytest.mark.slow
def test_the_hparams_table_shows_each_runs_status_first(tmp_path):
    # two runs as a sweep's jobs: one completed, one diverged (SGD at lr 1e30)
    for job_dir, lr in (("0", "0.1"), ("1", "1e30")):
        train(make_cfg("optim=sgd", f"optim.lr={lr}", "trainer.max_epochs=1"), tmp_path / job_dir)
    assert [read_session(tmp_path / j)["status"] for j in "01"] == ["completed", "diverged"]
    log_sweep_hparams(tmp_path)
    first = experiment(tmp_path / "hparams").hparam_infos[0]
    assert first.name == "status" and first.differs
    assert [v.string_value for v in first.domain_discrete.values] == ["completed", "diverged"]
    # and the session's own status: a diverged run's session failed
    ends = [
        metadata.parse_session_end_info_plugin_data(
            events(tmp_path / j).PluginTagToContent(metadata.PLUGIN_NAME)[
                metadata.SESSION_END_INFO_TAG
            ]
        ).status
        for j in "01"
    ]
    assert ends == [api_pb2.Status.Value("STATUS_SUCCESS"), api_pb2.Status.Value("STATUS_FAILURE")]


def test_a_column_of_numbers_and_none_is_filtered_by_checkboxes():
    # data.train_size=1000,null: an interval filter would fail on "none", a regexp on 1000
    sessions = [{"data/train_size": 1000, "seed": 0}, {"data/train_size": "none", "seed": 0}]
    content = experiment_summary(sessions).value[0].metadata.plugin_data.content
    (info,) = metadata.parse_experiment_plugin_data(content).hparam_infos
    assert info.type == api_pb2.DATA_TYPE_STRING
    assert [v.WhichOneof("kind") for v in info.domain_discrete.values] == [
        "number_value",
        "string_value",
    ]
