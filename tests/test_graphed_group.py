"""A batched group's epoch as one CUDA graph, on the CPU: GraphedEpoch's eager twin.

The twin is the graphed path with the capture replaced by direct calls (the same warm-up,
rewind, static permutation buffers and re-captures), so what decides what is captured,
the membership changes and the dropout generators' states are checked here; the graph
itself is tests/test_gpu.py's. train_group picks the twin when `captures_graphs` says yes
on the CPU, which only these tests make it do.
"""

import contextlib
import logging

import pytest
import torch

import dltips.train
from conftest import make_cfg
from dltips.checkpoint import load_checkpoint
from dltips.run_state import Job
from dltips.step import GraphedEpoch
from dltips.train import train_group

# a ragged last batch: 1,000 training images in batches of 128 (7 full ones and 104)
SMALL = [
    "model.width=16",
    "trainer.early_stopping.patience=null",
    "data.train_size=1000",
    "data.batch_size=128",
]


@pytest.fixture
def twin(monkeypatch) -> list[GraphedEpoch]:
    """train_group "captures" on the CPU: the GraphedEpochs it made, eager twins."""
    made = []

    def recorded(*args, **kwargs):
        made.append(GraphedEpoch(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(dltips.train, "captures_graphs", lambda device, setting: True)
    monkeypatch.setattr(dltips.train, "GraphedEpoch", recorded)
    return made


def group(tmp_path, name: str, settings: list[list[str]], *common: str) -> list[dict]:
    cfgs = [make_cfg(*SMALL, *common, *s) for s in settings]
    return train_group([Job(c, tmp_path / f"{name}{k}") for k, c in enumerate(cfgs)])


# dropout drawn from each member's generator, L1 and clipping on one member, Adam
MEMBERS = [
    ["seed=0", "model.dropout=0.3"],
    ["seed=1", "model.dropout=0.5", "loss.l1=1e-4", "trainer.grad_clip=0.5"],
]


@pytest.mark.slow
def test_the_graphed_groups_twin_trains_as_the_eager_group_and_resumes(
    tmp_path, twin, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="dltips")
    graphed = group(tmp_path, "graphed", MEMBERS, "trainer.max_epochs=2")
    assert len(twin) == 1 and twin[0].captures == 1 and twin[0].sizes[-1] == 1000 % 128
    assert "Captured an epoch (8 steps) as one CUDA graph" in caplog.text
    # resumed after epoch 1: the dropout and shuffle generators continue from the states
    # the checkpoint saved after the epoch, in a new capture
    group(tmp_path, "part", MEMBERS, "trainer.max_epochs=1")
    resumed = [
        make_cfg(*SMALL, *s, "trainer.max_epochs=2", f"trainer.resume={tmp_path / f'part{k}'}")
        for k, s in enumerate(MEMBERS)
    ]
    resumed = train_group([Job(c, tmp_path / f"new{k}") for k, c in enumerate(resumed)])
    monkeypatch.setattr(dltips.train, "captures_graphs", lambda device, setting: False)
    eager = group(tmp_path, "eager", MEMBERS, "trainer.max_epochs=2")
    for g, e, r in zip(graphed, eager, resumed, strict=True):
        assert g["history"] == e["history"]  # the same steps, masks and shuffles: bit for bit
        assert r["history"] == g["history"] and r["test/acc"] == g["test/acc"]
    ckpt = load_checkpoint(tmp_path / "graphed1" / "checkpoints" / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0].get("capturable") is False  # CPU: not asked


@pytest.mark.slow
def test_a_member_that_stops_or_diverges_is_recaptured_out_with_its_weights_kept(
    tmp_path, twin, monkeypatch
):
    settings = [
        ["seed=0"],
        # min_delta 10: no epoch after the first counts as better; patience 1 stops at epoch 2
        ["seed=1", "trainer.early_stopping.min_delta=10", "trainer.early_stopping.patience=1"],
        ["seed=2", "optim.lr=1e6"],  # diverges in epoch 1
    ]
    common = ["optim=momentum", "trainer.max_epochs=3"]
    graphed = group(tmp_path, "graphed", settings, *common)
    (epoch,) = twin
    assert epoch.captures == 3  # the first, then after epoch 1 (diverged) and 2 (stopped)
    assert [m["status"] for m in graphed] == ["completed", "completed", "diverged"]
    assert graphed[1]["epochs_trained"] == 2 and graphed[2]["epochs_trained"] == 0
    models = epoch.step.models  # in the stack's order
    for k in (1, 2):  # the frozen ones: exactly their reported weights, after later epochs
        reported = load_checkpoint(tmp_path / f"graphed{k}" / graphed[k]["checkpoint"])["model"]
        matches = [m for m in models if _equal(m.state_dict(), reported)]
        assert len(matches) == 1
    # the steps that ran, ran as the eager group's
    monkeypatch.setattr(dltips.train, "captures_graphs", lambda device, setting: False)
    eager = group(tmp_path, "eager", settings, *common)
    for g, e in zip(graphed, eager, strict=True):
        assert g["history"] == e["history"] and g["test/acc"] == e["test/acc"]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Graph:
    """torch.cuda.CUDAGraph on the CPU: records what is registered, replays nothing."""

    def __init__(self) -> None:
        self.generators, self.replays = [], 0

    def register_generator_state(self, generator: torch.Generator) -> None:
        self.generators.append(generator)

    def replay(self) -> None:
        self.replays += 1


def test_the_capture_registers_each_members_dropout_generator(monkeypatch, tmp_path):
    """The CUDA lines of GraphedEpoch.capture, with torch.cuda's graph and streams mocked:
    each member's generator is registered with every new graph (the capture runs the
    epoch's steps once here, where recording would only record them)."""
    graphs, made = [], []

    class Stream:
        def wait_stream(self, other) -> None:
            pass

    def graphed(*args, **kwargs) -> GraphedEpoch:
        made.append(GraphedEpoch(*args, **{**kwargs, "eager": False}))
        return made[-1]

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: graphs.append(_Graph()) or graphs[-1])
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(dltips.train, "captures_graphs", lambda device, setting: True)
    monkeypatch.setattr(dltips.train, "GraphedEpoch", graphed)
    group(tmp_path, "g", MEMBERS, "trainer.max_epochs=1")
    (epoch,) = made
    assert len(graphs) == 1 and graphs[0].replays == 1
    assert graphs[0].generators == epoch.step.generators and len(graphs[0].generators) == 2
    epoch.capture()  # a re-capture: a new graph, the generators registered with it
    assert len(graphs) == 2 and graphs[1].generators == epoch.step.generators
