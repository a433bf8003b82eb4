"""Every option of every config group composes, validates and builds."""

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF_DIR, make_cfg
from dltips.config import validate
from dltips.config_docs import DOC, render
from dltips.models import Maxout, linear_layers


def options(group: str) -> list[str]:
    return sorted(
        p.relative_to(CONF_DIR / group).with_suffix("").as_posix()
        for p in (CONF_DIR / group).rglob("*.yaml")
    )


def test_every_group_has_its_options():
    assert options("model") == ["elu", "leaky_relu", "maxout", "relu", "sigmoid", "tanh"]
    assert options("optim") == [
        "adagrad",
        "adam",
        "adamw",
        "momentum",
        "nesterov",
        "rmsprop",
        "sgd",
    ]
    assert options("loss") == ["cross_entropy", "mse"]
    assert options("data") == ["fashion_mnist", "mnist", "mnist_5k"]


@pytest.mark.parametrize("name", options("model"))
def test_model_builds_and_maps_images_to_logits(name):
    cfg = make_cfg(f"model={name}", "model.dropout=0.5")
    validate(cfg)
    model = instantiate(cfg.model, in_features=784, num_classes=10)
    assert model(torch.rand(8, 784)).shape == (8, 10)
    assert len(linear_layers(model)) == cfg.model.depth + 1
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == cfg.model.depth


def test_maxout_layers_have_pieces_times_width_outputs():
    cfg = make_cfg("model=maxout", "model.pieces=3", "model.width=[20,10]")
    model = instantiate(cfg.model, in_features=784, num_classes=10)
    assert [m.out_features for m in linear_layers(model)] == [60, 30, 10]
    assert all(m.pieces == 3 for m in model.modules() if isinstance(m, Maxout))
    assert model(torch.rand(2, 784)).shape == (2, 10)


@pytest.mark.parametrize("init", ["default", "xavier", "kaiming"])
def test_init_schemes(init):
    cfg = make_cfg(f"model.init={init}")
    model = instantiate(cfg.model, in_features=784, num_classes=10)
    biases = torch.cat([m.bias for m in linear_layers(model)])
    assert (biases == 0).all() == (init != "default")


@pytest.mark.parametrize("name", options("optim"))
def test_optimizer_builds_from_its_partial(name):
    cfg = make_cfg(f"optim={name}")
    validate(cfg)
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = instantiate(cfg.optim)(params=params)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr


@pytest.mark.parametrize("name", options("loss"))
def test_loss_builds_and_is_lowest_for_the_right_class(name):
    criterion = instantiate(make_cfg(f"loss={name}").loss.criterion)
    target = torch.tensor([3, 7])
    right = torch.nn.functional.one_hot(target, 10).float() * 10
    assert criterion(right, target) < criterion(-right, target)


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_compose(name):
    cfg = make_cfg(f"data={name}")
    validate(cfg)
    assert cfg.data.name == name
    assert cfg.data.batch_size == 100 and cfg.data.normalize == "unit"


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_presets_compose_and_validate(name):
    cfg = make_cfg(f"experiment={name}", tiny=False)
    validate(cfg)
    instantiate(cfg.model, in_features=784, num_classes=10)


@pytest.mark.parametrize("name", options("hparams_search"))
def test_search_presets_compose_and_validate(name):
    cfg = make_cfg(f"hparams_search={name}")
    validate(cfg)  # e.g. its early_stopping.mode agrees with the metric it maximizes


def test_data_root_follows_the_environment(data_root):
    assert make_cfg().data.root == str(data_root)


def test_configuration_docs_are_generated_from_the_schema():
    text = DOC.read_text(encoding="utf-8")
    assert render(text) == text, "out of date: run python scripts/config_docs.py"
    assert "| `trainer.early_stopping.patience` | int \\| null | `5` |" in text
