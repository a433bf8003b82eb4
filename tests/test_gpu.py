"""The CUDA path: eager and graphed training agree, and every tip still holds under a graph.

Skipped without a GPU; `make gpu-check` runs these and the GPU benchmark in one go.
"""

import json
import logging

import pytest
import torch

from conftest import cuda, make_cfg
from dltips.run_state import Job
from dltips.step import GraphedEpoch, TrainStep
from dltips.train import train, train_group

pytestmark = cuda
CUDA = ["trainer.device=cuda", "trainer.early_stopping.patience=null"]
TIMINGS = ("wall_seconds", "seconds_per_epoch", "epoch_seconds")


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def test_cuda_run_keeps_model_and_data_on_the_gpu(tmp_path):
    metrics = train(make_cfg("trainer.device=cuda"), tmp_path)
    assert metrics["device"].startswith("cuda")
    assert metrics["test/acc"] > 0.85


def test_graphed_epochs_match_eager_ones(tmp_path):
    common = [*CUDA, "trainer.tf32=false", "trainer.max_epochs=3"]
    eager = train(make_cfg(*common, "trainer.cuda_graphs=false"), tmp_path / "eager")
    graphed = train(make_cfg(*common, "trainer.cuda_graphs=true"), tmp_path / "graphed")
    for e, g in zip(eager["history"], graphed["history"], strict=True):
        assert g["val/loss"] == pytest.approx(e["val/loss"], abs=1e-3)
    assert graphed["test/acc"] == pytest.approx(eager["test/acc"], abs=0.01)


@pytest.mark.parametrize("optim", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"])
def test_every_capturable_optimizer_trains_under_a_graph(tmp_path, optim, caplog):
    caplog.set_level(logging.INFO, logger="dltips")
    metrics = train(make_cfg(*CUDA, f"optim={optim}", "trainer.cuda_graphs=true"), tmp_path)
    assert "as one CUDA graph" in caplog.text
    assert metrics["status"] == "completed" and metrics["test/acc"] > 0.5


def test_adagrad_falls_back_to_eager_with_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dltips")
    metrics = train(make_cfg(*CUDA, "optim=adagrad", "trainer.cuda_graphs=true"), tmp_path)
    assert caplog.text.count("cannot step inside a CUDA graph") == 1
    assert metrics["status"] == "completed"


def test_dropout_masks_are_fresh_on_every_replay():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10)
    ).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights never change
    step = TrainStep([model], optimizer, [torch.nn.CrossEntropyLoss()], steps_per_epoch=4)
    x, y = torch.rand(400, 784, device="cuda"), torch.randint(0, 10, (400,), device="cuda")
    generator = torch.Generator(device="cuda")
    epoch = GraphedEpoch(step, x, y, batch_size=100, generator=generator)
    losses = []
    for _ in range(2):
        generator.manual_seed(0)  # the same batches in both replays
        epoch()
        losses.append(step.losses.clone())
    assert not torch.equal(losses[0], losses[1])  # only the masks differ


@pytest.mark.parametrize("graphs", ["true", "false"])
def test_cuda_run_with_dropout_resumes_exactly(tmp_path, graphs):
    common = [*CUDA, "model.dropout=0.3", f"trainer.cuda_graphs={graphs}"]
    full = train(make_cfg(*common, "trainer.max_epochs=4"), tmp_path / "full")
    train(make_cfg(*common, "trainer.max_epochs=2"), tmp_path / "part")
    resumed = train(
        make_cfg(*common, "trainer.max_epochs=4", f"trainer.resume={tmp_path / 'part'}"),
        tmp_path / "new",
    )
    assert without_time(resumed) == without_time(full)


def test_divergence_under_a_graph_names_epoch_and_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dltips")
    cfg = make_cfg(
        *CUDA, "optim=sgd", "optim.lr=1e6", "data.normalize=none", "trainer.cuda_graphs=true"
    )
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "diverged" and metrics["epochs_trained"] == 0
    assert "at epoch 1, step " in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_bf16_l1_grad_clip_and_a_ragged_last_batch_under_a_graph(tmp_path):
    cfg = make_cfg(
        *CUDA,
        "trainer.cuda_graphs=true",
        "trainer.precision=bf16",
        "loss.l1=1e-5",
        "trainer.grad_clip=1.0",
        "data.batch_size=128",  # 3,500 images: a last batch of 44
    )
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "completed" and metrics["test/acc"] > 0.8


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_a_batched_group_on_the_gpu_trains_as_each_run_alone(tmp_path, precision):
    """The stacked step (StackedLinear, index_select gathers, per-run lr) on CUDA: each run's
    history follows the same run trained alone, eagerly, with TF32 off."""
    common = [*CUDA, "trainer.tf32=false", "trainer.max_epochs=3", f"trainer.precision={precision}"]
    settings = [["seed=0"], ["seed=1"], ["seed=2", "optim.lr=0.003"]]
    cfgs = [make_cfg(*common, "trainer.cuda_graphs=false", *s) for s in settings]
    alone = [train(c, tmp_path / f"alone{i}") for i, c in enumerate(cfgs)]
    together = train_group([Job(c, tmp_path / f"group{i}") for i, c in enumerate(cfgs)])
    tolerance = 1e-4 if precision == "32" else 2e-2  # bf16 products round at 8 bits
    for a, g in zip(alone, together, strict=True):
        assert g["device"].startswith("cuda") and g["batch"]["members"] == 3
        for ea, eg in zip(a["history"], g["history"], strict=True):
            assert eg["val/loss"] == pytest.approx(ea["val/loss"], rel=tolerance)


# a batched group as one CUDA graph: three members with their own lr, L1 and clipping, and
# a ragged last batch (3,500 images in batches of 128: a last one of 44)
GROUP = [
    ["seed=0"],
    ["seed=1", "optim.lr=0.003", "loss.l1=1e-5"],
    ["seed=2", "trainer.grad_clip=0.5"],
]


def train_members(tmp_path, name: str, settings: list[list[str]], *common: str) -> list[dict]:
    cfgs = [make_cfg(*CUDA, "data.batch_size=128", *common, *s) for s in settings]
    return train_group([Job(c, tmp_path / f"{name}{k}") for k, c in enumerate(cfgs)])


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_a_graphed_group_trains_as_the_same_members_eager(tmp_path, precision, caplog):
    caplog.set_level(logging.INFO, logger="dltips")
    common = ["trainer.tf32=false", "trainer.max_epochs=3", f"trainer.precision={precision}"]
    graphed = train_members(tmp_path, "graphed", GROUP, *common, "trainer.cuda_graphs=true")
    assert "as one CUDA graph" in caplog.text
    eager = train_members(tmp_path, "eager", GROUP, *common, "trainer.cuda_graphs=false")
    tolerance = 1e-3 if precision == "32" else 2e-2  # bf16 products round at 8 bits
    for g, e in zip(graphed, eager, strict=True):
        assert g["batch"]["members"] == 3
        for eg, ee in zip(g["history"], e["history"], strict=True):
            assert eg["val/loss"] == pytest.approx(ee["val/loss"], abs=tolerance)
            assert eg["train/loss"] == pytest.approx(ee["train/loss"], abs=tolerance)


def test_dropout_under_a_graphed_group_is_the_eager_groups_and_resumes_exactly(tmp_path):
    """Each member's dropout generator, registered with the graph, draws the eager masks
    afresh on every replay, and continues from its checkpointed state on resume."""
    dropout = [[*s, f"model.dropout={p}"] for s, p in zip(GROUP, (0.2, 0.5, 0.0))]
    common = ["trainer.tf32=false", "trainer.cuda_graphs=true"]
    full = train_members(tmp_path, "full", dropout, *common, "trainer.max_epochs=4")
    eager = ["trainer.tf32=false", "trainer.cuda_graphs=false", "trainer.max_epochs=4"]
    eager = train_members(tmp_path, "eager", dropout, *eager)
    for f, e in zip(full, eager, strict=True):
        for ef, ee in zip(f["history"], e["history"], strict=True):
            assert ef["val/loss"] == pytest.approx(ee["val/loss"], abs=1e-3)
    train_members(tmp_path, "part", dropout, *common, "trainer.max_epochs=2")
    resumed = [
        [*s, "trainer.max_epochs=4", f"trainer.resume={tmp_path / f'part{k}'}"]
        for k, s in enumerate(dropout)
    ]
    resumed = train_members(tmp_path, "new", resumed, *common)
    for f, r in zip(full, resumed, strict=True):
        assert r["history"] == f["history"] and r["test/acc"] == f["test/acc"]


def test_a_member_that_diverges_in_a_graphed_group_leaves_the_others_as_eager(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dltips")
    settings = [["seed=0"], ["seed=1", "optim.lr=1e6"], ["seed=2"]]
    common = ["optim=sgd", "trainer.tf32=false", "trainer.max_epochs=3"]
    graphed = train_members(tmp_path, "graphed", settings, *common, "trainer.cuda_graphs=true")
    assert "2 of 3 runs still train: re-captured the epoch" in caplog.text
    eager = train_members(tmp_path, "eager", settings, *common, "trainer.cuda_graphs=false")
    assert graphed[1]["status"] == eager[1]["status"] == "diverged"
    assert graphed[1]["test/acc"] == pytest.approx(eager[1]["test/acc"], abs=1e-3)
    for k in (0, 2):
        for eg, ee in zip(graphed[k]["history"], eager[k]["history"], strict=True):
            assert eg["val/loss"] == pytest.approx(ee["val/loss"], abs=1e-3)


@pytest.mark.parametrize(
    "optim", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
)
def test_every_optimizer_trains_a_graphed_group(tmp_path, optim, caplog):
    """Capturable ones step inside the graph; Adagrad trains the group eagerly, said once."""
    caplog.set_level(logging.INFO, logger="dltips")
    settings = [["seed=0"], ["seed=1"]]
    metrics = train_members(tmp_path, "g", settings, f"optim={optim}", "trainer.cuda_graphs=true")
    if optim == "adagrad":
        assert caplog.text.count("Adagrad cannot step inside a CUDA graph") == 1
        assert "as one CUDA graph" not in caplog.text
    else:
        assert "as one CUDA graph" in caplog.text
    assert all(m["status"] == "completed" and m["test/acc"] > 0.5 for m in metrics)
