"""Batched sweeps: runs trained together equal the same runs trained alone."""

import copy
import json
import re
import signal
from itertools import product
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import file_digests, make_cfg, run_cli, start_script, wait_for
from dltips.checkpoint import load_checkpoint
from dltips.data import load_dataset
from dltips.group import (
    cpu_too_large,
    free_memory,
    group_jobs,
    group_key,
    memory_cap,
    num_params,
)
from dltips.models import build_mlp
from dltips.run_state import Job
from dltips.stacked import MemberOptimizer, StackedLinear, StackedMLP, member_losses
from dltips.train import train, train_group

SMALL = ["model.width=32", "trainer.max_epochs=3", "trainer.early_stopping.patience=null"]
TIMINGS = ("wall_seconds", "seconds_per_epoch", "epoch_seconds", "batch", "num_threads")
OPTIMS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]


@pytest.fixture(autouse=True)
def one_thread():
    """Every host computes these comparisons with one thread, as each of CI's two test
    workers does. torch's thread count changes the rounding of a matrix product, and over
    epochs a 1e-7 difference can grow: with 16 threads, the nesterov run below alone
    differs from itself with 2 threads by 8e-4 at epoch 3, while its group matches the
    2-thread run to 1e-6 (2026-11-27)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def alone_and_together(tmp_path: Path, overrides: list[list[str]]) -> tuple[list, list]:
    cfgs = [make_cfg(*SMALL, *o) for o in overrides]
    alone = [train(cfg, tmp_path / f"alone{i}") for i, cfg in enumerate(cfgs)]
    together = train_group([Job(cfg, tmp_path / f"group{i}") for i, cfg in enumerate(cfgs)])
    return alone, together


def assert_same_training(alone: dict, together: dict, rel: float = 1e-4) -> None:
    assert together["best_epoch"] == alone["best_epoch"]
    assert together["epochs_trained"] == alone["epochs_trained"]
    for a, b in zip(alone["history"], together["history"], strict=True):
        for key in ("train/loss", "val/loss", "val/acc"):
            assert b[key] == pytest.approx(a[key], rel=rel), (key, a["epoch"])


@pytest.mark.parametrize("optim", OPTIMS)
@pytest.mark.slow
def test_each_run_of_a_group_trains_as_it_would_alone(tmp_path, optim):
    lr = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.01}.get(optim, 0.001)
    # runs 0, 2 and 3 share their optimizer settings (one param group over their rows of
    # the stacked weights), run 1 has its own lr and weight decay
    settings = [
        [f"optim={optim}", "seed=0", f"optim.lr={lr}"],
        [f"optim={optim}", "seed=1", f"optim.lr={lr * 3}", "optim.weight_decay=0.001"],
        [f"optim={optim}", "seed=2", f"optim.lr={lr}", "loss.l1=0.0001", "trainer.grad_clip=0.5"],
        [f"optim={optim}", "seed=3", f"optim.lr={lr}", "trainer.grad_clip=5"],
    ]
    alone, together = alone_and_together(tmp_path, settings)
    for a, b in zip(alone, together):
        assert_same_training(a, b)
    assert [t["batch"] for t in together] == [{"members": 4, "member": k} for k in range(4)]
    # same files and keys as a sequential run, plus "batch"
    assert set(together[0]) - set(alone[0]) == {"batch"}

    def names(run: str) -> set[str]:
        return {p.name.split(".")[0] for p in (tmp_path / run).rglob("*")}  # events.out...

    assert names("group0") == names("alone0")


@pytest.mark.parametrize("optim", OPTIMS)
def test_the_group_optimizer_is_each_members_torch_optimizer_and_frozen_means_frozen(optim):
    cfg = make_cfg(f"optim={optim}", "data.train_size=300")
    data = load_dataset(cfg.data, seed=0)
    lrs = [cfg.optim.lr, cfg.optim.lr, cfg.optim.lr * 3, cfg.optim.lr]  # blocks 0-1 | 2 | 3
    models = []
    for k in range(4):
        torch.manual_seed(k)
        models.append(build_mlp(784, 10, depth=1, width=16, activation=torch.nn.ReLU))
    alone = [copy.deepcopy(m) for m in models]
    references = [instantiate(cfg.optim)(params=m.parameters(), lr=lr) for m, lr in zip(alone, lrs)]
    stack = StackedMLP(models)
    settings = [{"lr": lr} for lr in lrs]
    group = MemberOptimizer(
        lambda g: instantiate(cfg.optim)(params=g), stack.member_params, settings, stack
    )
    assert len(group.torch.param_groups) == 3
    criterion = torch.nn.CrossEntropyLoss()
    for step in range(4):
        rows = torch.arange(step * 40, step * 40 + 40).view(4, 10)
        x, y = data.x_train[rows], data.y_train[rows]
        stack.zero_grad()
        member_losses([criterion] * 4, stack.forward(x), y).sum().backward()
        group.step()
        for k in range(4):
            if step < 2 or k != 1:  # member 1 freezes after two steps
                references[k].zero_grad()
                criterion(alone[k](x[k]), y[k]).backward()
                references[k].step()
        if step == 1:
            frozen = copy.deepcopy(group.member_state(1))
            group.freeze(1)
    for k in range(4):
        for got, want in zip(models[k].parameters(), alone[k].parameters(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        state, want = group.member_state(k), references[k].state_dict()
        assert state["param_groups"] == want["param_groups"]
        torch.testing.assert_close(state["state"], want["state"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(group.member_state(1), frozen, rtol=0, atol=0)


def test_stacked_linear_has_baddbmms_gradients_in_the_weights_own_layout():
    digits = load_dataset(make_cfg().data, seed=0).x_train[:60].view(3, 20, 784).double()
    weight = torch.randn(3, 16, 784, dtype=torch.double, requires_grad=True)
    bias = torch.randn(3, 16, dtype=torch.double, requires_grad=True)
    h = digits.clone().requires_grad_()
    # numerical gradients of 4 digits' central 64 pixels (all 784: 37,632 weights, seconds)
    pixels = [t[..., 360:424].detach().requires_grad_() for t in (h[:, :4], weight)]
    assert torch.autograd.gradcheck(StackedLinear.apply, (*pixels, bias))
    wanted = torch.autograd.grad(
        torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)).tanh().sum(), [h, weight, bias]
    )
    got = torch.autograd.grad(StackedLinear.apply(h, weight, bias).tanh().sum(), [h, weight, bias])
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b)
    assert got[1].is_contiguous()  # no copy into the leaf's layout at every step
    weight32 = weight.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # trainer.precision=bf16
        out = StackedLinear.apply(digits.float(), weight32, bias.detach().float())
    out.float().sum().backward()
    assert (out.dtype, weight32.grad.dtype) == (torch.bfloat16, torch.float32)


@pytest.mark.slow
def test_dropout_draws_each_runs_own_masks_reproducibly(tmp_path):
    settings = [["seed=0", "model.dropout=0.3"], ["seed=1", "model.dropout=0.5"]]
    cfgs = [make_cfg(*SMALL, *s) for s in settings]
    first = train_group([Job(c, tmp_path / f"a{i}") for i, c in enumerate(cfgs)])
    again = train_group([Job(c, tmp_path / f"b{i}") for i, c in enumerate(cfgs)])
    for a, b in zip(first, again):
        assert a["history"] == b["history"] and a["test/acc"] == b["test/acc"]
    assert first[0]["test/acc"] > 0.6 and first[1]["test/acc"] > 0.6  # it learns (chance: 0.1)


def test_a_run_that_stops_early_is_frozen_while_the_others_train_on(tmp_path):
    # min_delta 10: no epoch after the first counts as better; patience 1 stops at epoch 2
    stops = ["seed=1", "trainer.early_stopping.min_delta=10", "trainer.early_stopping.patience=1"]
    alone, together = alone_and_together(tmp_path, [["seed=0"], stops])
    assert together[1]["epochs_trained"] == 2 and together[1]["stopped_early"]
    assert load_checkpoint(tmp_path / "group1" / "checkpoints" / "last.pt")["epoch"] == 2
    assert_same_training(alone[1], together[1])
    assert_same_training(alone[0], together[0])  # its neighbour trained all 3 epochs


def test_a_run_that_diverges_is_frozen_and_the_others_are_unaffected(tmp_path):
    settings = [["optim=sgd", "seed=0"], ["optim=sgd", "seed=1", "optim.lr=1e6"]]
    alone, together = alone_and_together(tmp_path, settings)
    assert together[1]["status"] == alone[1]["status"] == "diverged"
    assert together[1]["epochs_trained"] == alone[1]["epochs_trained"]
    assert_same_training(alone[0], together[0])


def test_a_runs_checkpoint_resumes_alone_and_loads_into_a_plain_network(tmp_path):
    cfgs = [make_cfg(*SMALL, f"seed={s}") for s in (0, 1)]
    train_group([Job(c, tmp_path / f"g{i}") for i, c in enumerate(cfgs)])
    ckpt = load_checkpoint(tmp_path / "g1" / "checkpoints" / "last.pt")
    net = build_mlp(784, 10, depth=2, width=32, activation=torch.nn.ReLU)
    net.load_state_dict(ckpt["model"])
    more = make_cfg(*SMALL, "seed=1", "trainer.max_epochs=4", f"trainer.resume={tmp_path / 'g1'}")
    longer = train(more, tmp_path / "x")
    straight = train(make_cfg(*SMALL, "seed=1", "trainer.max_epochs=4"), tmp_path / "y")
    assert_same_training(straight, longer)


@pytest.mark.slow
def test_runs_group_by_shape_and_split_at_the_cap():
    cfgs = [make_cfg(f"model={m}", f"seed={s}") for m in ("sigmoid", "relu") for s in (0, 1, 2)]
    keys = [group_key(c) for c in cfgs]
    assert group_jobs(keys, None) == [[0, 1, 2], [3, 4, 5]]
    assert group_jobs(keys, 2) == [[0, 1], [2], [3, 4], [5]]
    other = [make_cfg("seed=0", "model.width=32"), make_cfg("seed=0", "optim.lr=0.5")]
    assert group_jobs([group_key(c) for c in other], None) == [[0], [1]]  # width splits
    assert group_jobs(keys, {keys[0]: 1, keys[3]: 5}) == [[0], [1], [2], [3, 4, 5]]


def test_on_the_cpu_only_networks_that_gain_from_batching_are_grouped():
    small = make_cfg("trainer.device=cpu")  # 784-64-64-10
    lecture = make_cfg("experiment=lecture/step4", "trainer.device=cpu", tiny=False)  # 13 x 689
    assert num_params(lecture) == sum(
        p.numel() for p in instantiate(lecture.model, 784, 10).parameters()
    )
    assert cpu_too_large(lecture, "cpu") and memory_cap(lecture, *free_memory(lecture)) == 1
    assert not cpu_too_large(small, "cpu") and memory_cap(small, *free_memory(small)) > 1
    assert not cpu_too_large(lecture, "cuda")  # a GPU gains from batching it


@pytest.mark.slow
def test_batched_sweep_through_the_cli(tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=batched",
        "model=sigmoid,relu",
        "seed=0,1,2",
        *SMALL,
        f"hydra.sweep.dir={tmp_path / 'ok'}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Batched 2 groups: jobs 0,1,2 | jobs 3,4,5" in output
    # the console: what the runs of a group share once per group, each job's lines in order
    assert output.count("Training 3 runs together as one batched model") == 2
    assert output.count("Data mnist_5k:") == 2
    assert output.count("Config:") == 6
    # each job's config line names its own group choice (its own overrides)
    configs = [re.search(rf"job{j}\]\[INFO\] - Config: (.*)", output)[1] for j in range(6)]
    assert ["model=sigmoid" in c.split() for c in configs] == [True] * 3 + [False] * 3
    firsts = [output.index(f"[dltips.train.job{j}][INFO] - epoch 1/3") for j in range(6)]
    assert firsts[:3] == sorted(firsts[:3]) and firsts[3:] == sorted(firsts[3:])
    metrics = [
        json.loads((tmp_path / "ok" / str(j) / "metrics.json").read_text()) for j in range(6)
    ]
    assert [m["batch"]["members"] for m in metrics] == [3] * 6
    for j in range(6):
        log = (tmp_path / "ok" / str(j) / "train.log").read_text()
        assert "epoch 3/3" in log and f"Outputs in {tmp_path / 'ok' / str(j)}" in log
        assert "Training 3 runs together" in log and "Data mnist_5k:" in log  # every job's
        assert (tmp_path / "ok" / str(j) / ".hydra" / "overrides.yaml").is_file()
    # each job's TensorBoard run is named by its own values of the swept keys
    runs = sorted(p.parent.relative_to(tmp_path / "ok") for p in tmp_path.glob("ok/*/*/*tfevents*"))
    assert [r.as_posix() for r in runs] == [
        f"{j}/model={m},seed={s}" for j, (m, s) in enumerate(product(("sigmoid", "relu"), range(3)))
    ]
    assert (tmp_path / "ok" / "summary.md").is_file()


@pytest.mark.slow
def test_a_bad_job_fails_alone_and_the_rest_train_together(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=batched",
        "optim.lr=-1,0.001,0.003",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    status = [json.loads((sweep_dir / j / "metrics.json").read_text()) for j in "012"]
    assert status[0]["status"] == "failed" and "optim.lr=-1" in status[0]["error"]
    assert [s["batch"] for s in status[1:]] == [{"members": 2, "member": k} for k in (0, 1)]


@pytest.mark.slow
def test_interrupted_group_resumes_to_the_uninterrupted_result(tmp_path):
    command = [
        "-m",
        "hydra/launcher=batched",
        "seed=0,1",
        "model.width=32",
        "data.batch_size=10",
        "model.dropout=0.2",
        "trainer.max_epochs=3",
        "trainer.early_stopping.patience=null",
    ]
    straight = run_cli("train.py", *command, f"hydra.sweep.dir={tmp_path / 'full'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    sweep_dir = tmp_path / "cut"
    proc = start_script("train.py", *command, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    last = sweep_dir / "1" / "checkpoints" / "last.pt"
    wait_for(lambda: last.is_file() and load_checkpoint(last)["epoch"] >= 1, what="epoch 1")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert "sweep.resume=" in out
    assert all(
        load_checkpoint(sweep_dir / j / "checkpoints" / "last.pt")["epoch"] >= 1 for j in "01"
    )

    resumed = run_cli("train.py", *command, f"sweep.resume={sweep_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for j in "01":
        a = json.loads((tmp_path / "full" / j / "metrics.json").read_text())
        b = json.loads((sweep_dir / j / "metrics.json").read_text())
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {
            k: v for k, v in b.items() if k not in TIMINGS
        }
    before = file_digests(sweep_dir / "0")
    again = run_cli("train.py", *command, f"sweep.resume={sweep_dir}", cwd=tmp_path)
    assert again.returncode == 0 and "Already completed, skipped" in again.stdout + again.stderr
    assert {k: v for k, v in file_digests(sweep_dir / "0").items() if k != "train.log"} == {
        k: v for k, v in before.items() if k != "train.log"
    }


def test_an_improved_epoch_is_written_once_and_linked_as_best(tmp_path, monkeypatch):
    cfg = make_cfg(*SMALL, "trainer.max_epochs=1")
    train(cfg, tmp_path / "linked")
    ckpts = tmp_path / "linked" / "checkpoints"
    assert (ckpts / "best.pt").samefile(ckpts / "last.pt")  # epoch 1 is the best so far

    def no_links(*args):
        raise PermissionError("no hard links here")

    monkeypatch.setattr("os.link", no_links)  # a file system without them: a copy
    train(cfg, tmp_path / "copied")
    ckpts = tmp_path / "copied" / "checkpoints"
    assert not (ckpts / "best.pt").samefile(ckpts / "last.pt")
    assert (ckpts / "best.pt").read_bytes() == (ckpts / "last.pt").read_bytes()
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == 1


@pytest.mark.slow
def test_bench_times_runs_alone_against_one_group(tmp_path):
    result = run_cli(
        "bench.py", "--members", "2", "--epochs", "1", "--alone", "1", "--width", "32", cwd=tmp_path
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "2 runs of 784-32-32-10 on mnist_5k, 1 epochs (cpu)" in result.stdout
    figures = json.loads((tmp_path / "outputs" / "bench.json").read_text())
    assert figures["members"] == 2 and figures["batched_model_epochs_per_s"] > 0
    assert figures["batched_vs_sequential"] == pytest.approx(
        figures["batched_model_epochs_per_s"] / figures["sequential_model_epochs_per_s"]
    )


@pytest.mark.slow
def test_a_batched_sweep_of_several_shapes_matches_the_sequential_sweep(tmp_path):
    # the README's claim: losses within 1e-3 relative, accuracies within a few images
    grid = ["model.width=32,64", "seed=0,1", "trainer.max_epochs=3"]
    shown = {}
    for launcher in ("batched", "basic"):
        result = run_cli(
            "train.py", "-m", f"hydra/launcher={launcher}", *grid,
            f"hydra.sweep.dir={tmp_path / launcher}", cwd=tmp_path,
        )  # fmt: skip
        shown[launcher] = result.stdout + result.stderr
        assert result.returncode == 0, shown[launcher][-3000:]
    assert "Batched 2 groups: jobs 0,1 | jobs 2,3" in shown["batched"]
    for job in range(4):
        alone, together = (
            json.loads((tmp_path / launcher / str(job) / "metrics.json").read_text())
            for launcher in ("basic", "batched")
        )
        assert together["batch"]["members"] == 2
        for a, b in zip(alone["history"], together["history"], strict=True):
            for key in ("train/loss", "val/loss"):
                assert b[key] == pytest.approx(a[key], rel=1e-3), (job, a["epoch"], key)
            assert abs(b["train/acc"] - a["train/acc"]) * 3500 <= 3, (job, a["epoch"])
            assert abs(b["val/acc"] - a["val/acc"]) * 500 <= 3, (job, a["epoch"])
