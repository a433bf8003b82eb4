"""The training step's pieces on the CPU: sums read once, divergence found, warm-up undone."""

import copy

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import make_cfg
from dltips.data import load_dataset
from dltips.models import build_mlp
from dltips.run_state import OPTIMIZER_WIDE
from dltips.stacked import StackedMLP, member_losses
from dltips.step import (
    Rewind,
    TrainStep,
    batch_sizes,
    device_options,
    epoch_batches,
    run_epoch,
    supports_capture,
)
from dltips.train import train


def build(*overrides: str):
    """Model, optimizer, loss and data of a tiny config, as train() builds them."""
    cfg = make_cfg("data.train_size=300", *overrides)
    data = load_dataset(cfg.data, seed=0)
    torch.manual_seed(0)
    model = instantiate(cfg.model, in_features=784, num_classes=10)
    optimizer = instantiate(cfg.optim)(params=model.parameters())
    return cfg, data, model, optimizer, instantiate(cfg.loss.criterion)


def test_batches_cover_the_data_once_with_a_ragged_last_batch():
    batches = list(epoch_batches(250, 64, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == batch_sizes(250, 64) == [64, 64, 64, 58]
    assert sorted(torch.cat(batches).tolist()) == list(range(250))


def test_sums_equal_what_the_steps_computed_one_by_one():
    cfg, data, model, optimizer, criterion = build("optim=sgd")
    sizes = batch_sizes(len(data.y_train), 64)
    step = TrainStep([model], optimizer, [criterion], steps_per_epoch=len(sizes))
    reference = copy.deepcopy(model)
    batches = list(epoch_batches(len(data.y_train), 64, torch.Generator().manual_seed(0)))
    ran = run_epoch(step, data.x_train, data.y_train, batches)
    (sums,) = step.read(ran)
    # the same updates by hand: plain SGD, lr from the config
    losses, correct = [], 0
    ref_opt = torch.optim.SGD(reference.parameters(), lr=cfg.optim.lr)
    for batch in batches:
        logits = reference(data.x_train[batch])
        loss = criterion(logits, data.y_train[batch])
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        losses.append(loss.item() * len(batch))
        correct += (logits.argmax(1) == data.y_train[batch]).sum().item()
    assert ran == sizes
    assert sums.loss == pytest.approx(sum(losses) / len(data.y_train), rel=1e-5)
    assert sums.correct == correct and sums.first_bad_step is None
    assert len(sums.grad_norms) == 3 and all(g > 0 for g in sums.grad_norms)


def test_a_non_finite_loss_is_found_with_its_step():
    _, data, model, optimizer, criterion = build(
        "optim=sgd", "optim.lr=1e6", "data.normalize=none", "data.train_size=null"
    )
    sizes = batch_sizes(len(data.y_train), 100)
    step = TrainStep([model], optimizer, [criterion], steps_per_epoch=len(sizes))
    batches = epoch_batches(len(data.y_train), 100, torch.Generator().manual_seed(0))
    ran = run_epoch(step, data.x_train, data.y_train, batches)
    (sums,) = step.read(ran)
    losses = step.losses[: len(ran), 0]
    first = int((~torch.isfinite(losses)).nonzero()[0]) + 1
    assert sums.first_bad_step == first and first > 1  # the first steps were finite
    assert not torch.isfinite(torch.tensor(sums.bad_loss))


def test_divergence_reports_weights_from_before_the_bad_step(tmp_path):
    cfg = make_cfg("optim=sgd", "optim.lr=1e6", "data.normalize=none", "trainer.max_epochs=5")
    metrics = train(cfg, tmp_path)
    assert metrics["status"] == "diverged"
    # the reported weights are the initial ones (last.pt of epoch 0): finite predictions
    assert metrics["test/acc"] is not None and 0 <= metrics["test/acc"] <= 1


@pytest.mark.parametrize(
    "optim", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
)
@pytest.mark.parametrize("resumed", [False, True])
def test_rewind_makes_warm_up_steps_leave_no_trace(optim, resumed):
    """What a CUDA graph's warm-up does, on the CPU: train, rewind, train again."""
    cfg, data, model, optimizer, criterion = build(f"optim={optim}", "model.dropout=0.3")
    sizes = batch_sizes(len(data.y_train), 50)
    step = TrainStep([model], optimizer, [criterion], steps_per_epoch=len(sizes))
    batches = list(epoch_batches(len(data.y_train), 50, torch.Generator().manual_seed(1)))
    if resumed:  # optimizer state exists before the warm-up: it must get its values back
        run_epoch(step, data.x_train, data.y_train, batches[:2])
    expected_model = copy.deepcopy(model)
    expected_state = copy.deepcopy(optimizer.state_dict())

    rewind = Rewind(list(model.state_dict().values()), optimizer)
    run_epoch(step, data.x_train, data.y_train, batches[:3])  # the warm-up
    rewind()
    run_epoch(step, data.x_train, data.y_train, batches)

    torch.set_rng_state(rewind.cpu_rng)  # the same dropout masks for the reference
    expected_opt = instantiate(cfg.optim)(params=expected_model.parameters())
    expected_opt.load_state_dict(expected_state)
    expected_step = TrainStep([expected_model], expected_opt, [criterion], len(sizes))
    run_epoch(expected_step, data.x_train, data.y_train, batches)
    for got, want in zip(model.parameters(), expected_model.parameters()):
        torch.testing.assert_close(got, want)


def test_which_optimizers_can_step_inside_a_cuda_graph():
    assert supports_capture(torch.optim.Adam) and supports_capture(torch.optim.AdamW)
    assert supports_capture(torch.optim.RMSprop) and supports_capture(torch.optim.SGD)
    assert not supports_capture(torch.optim.Adagrad)  # its step count stays on the CPU


def test_optimizer_options_fit_the_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # torch has a fused Adagrad for the CPU only: on CUDA the configured fused=true is dropped
    assert device_options(torch.optim.Adagrad, cuda, True, graphed=False) == {"fused": None}
    assert device_options(torch.optim.Adagrad, cpu, True, graphed=False) == {}
    assert device_options(torch.optim.Adam, cuda, True, graphed=True) == {"capturable": True}
    assert device_options(torch.optim.SGD, cuda, True, graphed=True) == {}  # no step counter
    # the options reach every param group: a run's settings never carry fused=true along
    cfg = make_cfg("optim=adagrad")
    settings = OmegaConf.to_container(cfg.optim)
    group = {k: v for k, v in settings.items() if k not in OPTIMIZER_WIDE}
    params = [{"params": [torch.zeros(2, requires_grad=True)], **group}]
    optimizer = instantiate(cfg.optim)(params=params, fused=None)  # Adagrad's options on CUDA
    assert not optimizer.param_groups[0]["fused"]


def test_cuda_graphs_on_the_cpu_is_a_config_error():
    from dltips.config import validate
    from dltips.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true needs a CUDA device"):
        validate(make_cfg("trainer.cuda_graphs=true"))
    validate(make_cfg("trainer.cuda_graphs=auto"))  # auto: off on the CPU, no error


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_member_losses_are_each_members_own_criterion(loss):
    cfg = make_cfg(f"loss={loss}", "data.train_size=300")
    data = load_dataset(cfg.data, seed=0)
    models = []
    for k in range(3):
        torch.manual_seed(k)
        models.append(build_mlp(784, 10, depth=1, width=16, activation=torch.nn.ReLU))
    stack = StackedMLP(models)
    criteria = [instantiate(cfg.loss.criterion) for _ in models]
    x, y = data.x_train[:60].view(3, 20, 784), data.y_train[:60].view(3, 20)
    with torch.no_grad():
        got = member_losses(criteria, stack.forward(x), y)
        want = torch.stack([c(m(x[k]), y[k]) for k, (c, m) in enumerate(zip(criteria, models))])
    torch.testing.assert_close(got, want)


def test_a_batched_group_needs_networks_whose_activations_have_no_parameters():
    models = [build_mlp(784, 10, depth=1, width=8, activation=torch.nn.PReLU) for _ in "ab"]
    with pytest.raises(ValueError, match="linear layers only"):
        StackedMLP(models)
    with pytest.raises(ValueError, match="pass `stack`"):
        TrainStep(models, None, [torch.nn.CrossEntropyLoss()] * 2, steps_per_epoch=1)
