"""The training loop on the real bundled digits: learns, stops, resumes, logs."""

import json
import platform
import resource
import subprocess
import sys
from unittest import mock

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import make_cfg, run_cli
from dltips.checkpoint import load_checkpoint
from dltips.config import resolve_device, validate
from dltips.errors import CheckpointError, ConfigError
from dltips.models import linear_layers, widths_for_params
from dltips.train import train

TIMINGS = ("wall_seconds", "seconds_per_epoch", "epoch_seconds")


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One short run of the default model (relu, adam), shared by the checks below."""
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train(make_cfg(), run_dir)


def test_short_run_learns_far_above_chance(default_run):
    run_dir, metrics = default_run
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] > 0.8  # chance is 0.10
    assert metrics["train/acc"] >= metrics["test/acc"] - 0.05
    assert metrics["epochs_trained"] == 3 and metrics["device"] == "cpu"
    assert metrics["num_params"] == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "test/loss",
        "test/acc",
        "best_epoch",
        "epochs_trained",
        "stopped_early",
        "wall_seconds",
        "device",
        "num_params",
    ):
        assert on_disk[key] == metrics[key]


def test_final_train_acc_is_an_eval_pass_not_the_running_average(default_run):
    _, metrics = default_run
    last = metrics["history"][-1]
    assert metrics["best_epoch"] == 3
    assert metrics["train/acc"] != last["train/acc"]  # measured again, in eval mode
    assert metrics["val/acc"] == last["val/acc"]


def test_same_seed_gives_identical_metrics(tmp_path, default_run):
    _, first = default_run
    assert without_time(train(make_cfg(), tmp_path)) == without_time(first)


def test_checkpoints_hold_plain_state(default_run):
    run_dir, _ = default_run
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run_dir / "checkpoints" / name)
        assert {"model", "optimizer", "epoch", "rng", "early_stopping", "history"} <= ckpt.keys()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 3


def test_tensorboard_has_scalars_grad_norms_and_hparams(default_run):
    run_dir, metrics = default_run
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "train/lr",
        "weight_grad_norm_log10/hidden1",
        "weight_grad_norm_log10/hidden2",
        "weight_grad_norm_log10/output",
        "~final/test/acc",
        "~final/train/acc",
    } <= tags
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2, 3]
    assert events.Scalars("~final/test/acc")[0].value == pytest.approx(metrics["test/acc"])

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert "~final/test/acc" in {m.name.tag for m in experiment.metric_infos}
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model/activation"].string_value == "ReLU"
    assert start.hparams["optim/lr"].number_value == pytest.approx(0.001)


def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path):
    # 200 images and a large lr overfit fast, so the validation loss turns up early
    cfg = make_cfg(
        "data.train_size=200",
        "trainer.max_epochs=40",
        "optim.lr=0.01",
        "trainer.early_stopping.patience=2",
    )
    metrics = train(cfg, tmp_path)
    best = metrics["best_epoch"]
    assert metrics["stopped_early"] and metrics["epochs_trained"] < 40
    assert metrics["epochs_trained"] == best + 2
    assert metrics["val/loss"] == pytest.approx(metrics["history"][best - 1]["val/loss"])
    assert metrics["val/loss"] < metrics["history"][-1]["val/loss"]


def test_without_restore_best_the_last_weights_are_reported(tmp_path):
    cfg = make_cfg(
        "data.train_size=200",
        "trainer.max_epochs=40",
        "optim.lr=0.01",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.restore_best=false",
    )
    metrics = train(cfg, tmp_path)
    assert metrics["val/loss"] == pytest.approx(metrics["history"][-1]["val/loss"])


def test_monitor_val_acc_in_max_mode(tmp_path):
    cfg = make_cfg("trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=max")
    metrics = train(cfg, tmp_path)
    best = max(h["val/acc"] for h in metrics["history"])
    assert metrics["val/acc"] == best


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    common = ["model.dropout=0.3", "trainer.early_stopping.patience=null"]  # dropout: RNG state
    full = train(make_cfg(*common, "trainer.max_epochs=4"), tmp_path / "full")
    train(make_cfg(*common, "trainer.max_epochs=2"), tmp_path / "part")
    resumed = train(
        make_cfg(*common, "trainer.max_epochs=4", f"trainer.resume={tmp_path / 'part'}"),
        tmp_path / "new",
    )
    # started with 2 epochs, labelled with the 4 it trained (summaries group it with "full")
    assert resumed.pop("resumed_with") == {"trainer.max_epochs": "4"}
    assert without_time(resumed) == without_time(full)
    # the resumed run keeps writing into its own dir, and TensorBoard has each epoch once
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["epochs_trained"] == 4
    steps = [e.step for e in EventAccumulator(str(tmp_path / "part")).Reload().Scalars("val/acc")]
    assert steps == [1, 2, 3, 4]


def test_resume_from_a_different_architecture_is_refused(tmp_path):
    train(make_cfg("trainer.max_epochs=1"), tmp_path / "a")
    cfg = make_cfg("model.width=32", f"trainer.resume={tmp_path / 'a'}")
    with pytest.raises(CheckpointError, match="other settings") as err:
        train(cfg, tmp_path / "b")
    assert "model.width: 64 -> 32" in str(err.value)


def test_resume_from_a_missing_dir_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        train(make_cfg(f"trainer.resume={tmp_path / 'nope'}"), tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=sigmoid", "optim=adam"],
        ["model=relu", "optim=momentum"],
        ["model=maxout", "optim=sgd"],
        ["model=tanh", "loss=mse", "optim=rmsprop"],
        ["model=elu", "loss.l1=0.0001", "optim=adagrad"],
        ["model=leaky_relu", "trainer.grad_clip=1.0", "optim=nesterov", "data.normalize=standard"],
        ["trainer.precision=bf16", "optim=adamw", "data.batch_size=32"],
    ],
)
def test_variants_learn(tmp_path, overrides):
    metrics = train(make_cfg(*overrides), tmp_path)
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] > 0.5, overrides


def test_deep_sigmoid_gradients_vanish_towards_the_input(tmp_path):
    cfg = make_cfg("model=sigmoid", "model.depth=8", "optim=sgd", "trainer.max_epochs=1")
    train(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path)).Reload()
    first = events.Scalars("weight_grad_norm_log10/hidden1")[0].value
    last = events.Scalars("weight_grad_norm_log10/output")[0].value
    assert first < last - 2  # log10: 100 times smaller


def test_divergence_stops_the_run_and_is_recorded(tmp_path):
    cfg = make_cfg("optim=sgd", "optim.lr=1e6", "data.normalize=none", "trainer.max_epochs=5")
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "diverged"
    assert metrics["epochs_trained"] < 5
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_bad_config_fails_before_writing_anything(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(make_cfg("model.depth=0", "optim.lr=-1", "model.dropout=1.0"), tmp_path)
    message = str(err.value)
    assert (
        "model.depth=0" in message and "optim.lr=-1" in message and "model.dropout=1.0" in message
    )
    assert not any(tmp_path.iterdir())


def test_auto_device_picks_what_the_machine_has(tmp_path):
    metrics = train(make_cfg("trainer.device=auto", "trainer.max_epochs=1"), tmp_path)
    assert metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_device_picks_cuda_then_apples_mps_then_the_cpu():
    """MPS with torch's availability checks patched: unmeasured on real Apple hardware."""
    for cuda, mps, wanted in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        with (
            mock.patch("torch.cuda.is_available", return_value=cuda),
            mock.patch("torch.backends.mps.is_available", return_value=mps),
        ):
            assert resolve_device("auto").type == wanted
    with mock.patch("torch.backends.mps.is_available", return_value=True):
        assert resolve_device("mps") == torch.device("mps")
        with pytest.raises(ConfigError, match="CUDA device, and trainer.device=mps runs on"):
            validate(make_cfg("trainer.device=mps", "trainer.cuda_graphs=true"))  # graphs: CUDA's
    with (
        mock.patch("torch.backends.mps.is_available", return_value=False),
        pytest.raises(ConfigError, match="trainer.device=mps: Apple's MPS is not available"),
    ):
        resolve_device("mps")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
@pytest.mark.slow
def test_on_the_cpu_freed_memory_is_reused_without_page_faults():
    # a batched step frees and allocates buffers of tens of MB; glibc by default hands them
    # back to the OS, and every page is faulted in again on the next step
    code = """
import resource, torch
from dltips.process import keep_freed_memory
keep_freed_memory()
def churn():  # 20 MiB each, written; 64 MiB, more than glibc ever keeps by default
    a, b, c = torch.ones(5 << 20), torch.ones(5 << 20), torch.ones(16 << 20)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pages = 104 * 2**20 // resource.getpagesize()  # what fresh mappings fault in
    assert float(result.stdout) < pages / 4


@pytest.mark.parametrize("model", ["relu", "sigmoid", "maxout"])
def test_model_params_builds_a_network_of_that_size(model):
    cfg = make_cfg(f"model={model}")
    for depth in range(1, 11):
        for budget in (100_000, 287_654, 650_000, 1_500_000):
            cfg.model.depth, cfg.model.params = depth, budget
            net = instantiate(cfg.model, in_features=784, num_classes=10)
            count = sum(p.numel() for p in net.parameters())
            assert abs(count - budget) <= 0.01 * budget, (model, depth, budget, count)
            assert len(linear_layers(net)) == depth + 1
    # below 100,000: the nearest uniform width
    net = instantiate(make_cfg("model.depth=3", "model.params=5000").model, 784, 10)
    widths = {layer.in_features for layer in linear_layers(net)[1:]}
    assert len(widths) == 1


def test_model_params_prints_the_widths_and_the_count_and_refuses_a_width(tmp_path):
    args = ["model.params=120000", "model.depth=3", "hydra.run.dir=run"]
    result = run_cli("train.py", *args, "trainer.max_epochs=1", "data.train_size=200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    widths = "-".join(str(w) for w in widths_for_params(120_000, 784, 10, 3))
    count = metrics["num_params"]
    assert abs(count - 120_000) <= 1200
    assert f"Model: 784-{widths}-10 ReLU MLP, {count:,} parameters (model.params=120,000: " in (
        result.stdout + result.stderr
    )
    for given in (["model.width=300"], ["model.width=[10,10,10]"]):
        with pytest.raises(ConfigError, match="contradicts it: give one of model.params and"):
            overrides = ["model.params=120000", "model.depth=3", *given]
            validate(make_cfg(*overrides), overrides)
