"""Property: any mix of overrides trains when every value is valid, and otherwise fails
with a message that names the bad key."""

from typing import NamedTuple

import pytest
import torch
from hydra.errors import HydraException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import CONF_DIR, make_cfg
from dltips.errors import UserError
from dltips.train import train

# where a bad value is caught, in the order train() meets them: composing the config
# (Hydra), validate(), splitting the data, building the model and loss
STAGES = ("compose", "validate", "data", "build")
MNIST_5K_TRAIN = 4000  # images in mnist_5k's training split, before the validation hold-out
# small data, one epoch: every example takes well under a second
BASE = {"trainer.max_epochs": 1, "data.train_size": 200, "data.val_size": 50}


class Drawn(NamedTuple):
    value: object
    stage: str | None  # None: a valid value; else where it must fail


def valid(*values: object) -> st.SearchStrategy[Drawn]:
    return st.sampled_from(values).map(lambda v: Drawn(v, None))


def invalid(*values: object, stage: str = "validate") -> st.SearchStrategy[Drawn]:
    return st.sampled_from(values).map(lambda v: Drawn(v, stage))


def cuda(index: int) -> tuple[str, ...]:
    """cuda:N, where this machine has it."""
    return (f"cuda:{index}",) if index < torch.cuda.device_count() else ()


def cuda_missing(index: int) -> tuple[str, ...]:
    return () if cuda(index) else (f"cuda:{index}",)


# values that must train, for the keys a user is most likely to get wrong
VALID = {
    "model": valid("sigmoid", "relu", "maxout", "tanh", "elu"),
    "optim": valid("sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"),
    "loss": valid("cross_entropy", "mse"),
    "loss.criterion._target_": valid("torch.nn.CrossEntropyLoss", "torch.nn.MultiMarginLoss"),
    "seed": valid(0, 1),
    "model.depth": valid(1, 2),
    "model.width": valid(1, 8, [8, 4]),  # a list: one width per layer (see expected())
    "model.dropout": valid(0, 0.5),
    "model.init": valid("default", "xavier", "kaiming"),
    "optim.lr": valid(1e-3, 0.1, 1e4),  # 1e4 may diverge: a valid outcome
    "optim.weight_decay": valid(0, 1e-4),
    # only some optimizers have these keys (see expected())
    "optim.betas": valid([0.9, 0.999], [0.0, 0.5]),
    "optim.momentum": valid(0, 0.9),
    "optim.alpha": valid(0.9, 0.99),
    "loss.l1": valid(0, 1e-4),
    "data.batch_size": valid(16, 64, 100000),  # larger than the data: one batch
    "data.train_size": valid(None, 10, 200),
    "data.val_size": valid(1, 50, 3999),
    "data.normalize": valid("unit", "none", "standard"),
    "data.test_noise_std": valid(0, 1),
    "trainer.device": valid("cpu", "auto", *cuda(0), *cuda(7)),
    "trainer.precision": valid("32", "bf16"),
    "trainer.grad_clip": valid(None, 1.0),
    "trainer.num_threads": valid(None, 1, 2),
    "trainer.cuda_graphs": valid("auto", True, False),
    "trainer.tf32": valid(True, False),
    "trainer.flush_denormal": valid(True, False),
    "trainer.early_stopping.monitor": valid("val/loss", "val/acc", "train/loss"),
    "trainer.early_stopping.mode": valid(None, "min", "max"),  # must match monitor
    "trainer.early_stopping.patience": valid(None, 1, 3),
}

# values that must fail, and where: validate() unless said otherwise
INVALID = {
    "model": invalid("nope", stage="compose"),
    "optim": invalid("nope", stage="compose"),
    "loss": invalid("nope", stage="compose"),
    "loss.criterion._target_": (
        invalid("torch.nn.Foo", "torch.optim.SGD")
        | invalid("torch.nn.L1Loss", stage="build")  # builds, but cannot take class indices
    ),
    "seed": invalid("abc", 1.5),
    "model.depth": invalid(0, -1, "two"),
    "model.width": invalid(0, "wide", [8, 0]),
    "model.dropout": invalid(-0.5, 1, "half"),
    "model.init": invalid("zeros"),
    "optim.lr": invalid(-1, 0, "nan", "inf", "fast"),
    "optim.weight_decay": invalid(-1, "lots"),
    "optim.betas": invalid([0.9], [0.9, 1.5], 0.9),
    "optim.momentum": invalid(-0.1, 1, "high"),
    "optim.alpha": invalid(1, "x"),
    "loss.l1": invalid(-1),
    "data.batch_size": invalid(0, 2.5),
    "data.train_size": invalid(0, "all") | invalid(100000, stage="data"),
    "data.val_size": invalid(0, -5) | invalid(4000, 10**6, stage="data"),  # no training data
    "data.normalize": invalid("minmax"),
    "data.test_noise_std": invalid(-1),
    "trainer.device": invalid("tpu", "gpu", *cuda_missing(0), *cuda_missing(7)),
    "trainer.precision": invalid("16"),
    "trainer.grad_clip": invalid(0, -1),
    "trainer.num_threads": invalid(0, -1, "many"),
    "trainer.cuda_graphs": invalid("maybe", "on"),
    "trainer.tf32": invalid("maybe"),
    "trainer.flush_denormal": invalid("maybe"),
    "trainer.early_stopping.monitor": invalid("test/acc"),
    "trainer.early_stopping.mode": invalid("up"),
    "trainer.early_stopping.patience": invalid(0, "two"),
    "+modle": invalid("sigmoid"),  # a misspelt group, added with +
    "+trainer.max_epoch": invalid(2),  # a misspelt key, added with +
}


def overrides(pool: dict[str, st.SearchStrategy[Drawn]]) -> st.SearchStrategy[dict]:
    """A few keys of `pool`, each with a value drawn from its strategy."""
    keys = st.sets(st.sampled_from(sorted(pool)), min_size=1, max_size=6)
    return keys.flatmap(lambda ks: st.fixed_dictionaries({k: pool[k] for k in sorted(ks)}))


# half the examples only valid values (most of them train), half any mix
any_value = {k: st.one_of([p[k] for p in (VALID, INVALID) if k in p]) for k in VALID | INVALID}
OVERRIDES = overrides(VALID) | overrides(any_value)


def hydra_value(value: object) -> str:
    """`value` as it is typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def preset_keys(group: str, option: str) -> set[str]:
    return set(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))


def expected(drawn: dict[str, Drawn]) -> tuple[str | None, set[str]]:
    """Where the drawn overrides must fail (None: they must train), and the keys that
    stage's message names."""
    stage = {k: d.stage for k, d in drawn.items() if d.stage}
    value = {**BASE, **{k: d.value for k, d in drawn.items()}}

    # values that are valid alone but not together
    optim = value.get("optim", "adam")
    if "optim" not in stage:
        for key in ("optim.betas", "optim.momentum", "optim.alpha"):
            if key in drawn and key.split(".")[1] not in preset_keys("optim", optim):
                stage[key] = "compose"  # no such key in that preset: Hydra refuses it
        if optim == "nesterov" and value.get("optim.momentum") == 0:
            stage["optim.momentum"] = "validate"
    depth, width = value.get("model.depth", 2), value.get("model.width")
    if isinstance(width, list) and "model.depth" not in stage and len(width) != depth:
        stage["model.width"] = "validate"
    mode = value.get("trainer.early_stopping.mode")
    monitor = value.get("trainer.early_stopping.monitor", "val/loss")
    implied = "max" if monitor.endswith("/acc") else "min"
    if mode in ("min", "max") and "trainer.early_stopping.monitor" not in stage and mode != implied:
        stage["trainer.early_stopping.mode"] = "validate"
    device = str(value.get("trainer.device", "cpu"))
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if value.get("trainer.cuda_graphs") is True and on_cpu and "trainer.device" not in stage:
        stage["trainer.cuda_graphs"] = "validate"  # graphs need a CUDA device
    train_size, val_size = value["data.train_size"], value["data.val_size"]
    sizes_valid = not any(k in stage for k in ("data.train_size", "data.val_size"))
    if sizes_valid and train_size is not None and train_size > MNIST_5K_TRAIN - val_size:
        stage["data.train_size"] = "data"  # more than the hold-out leaves

    if not stage:
        return None, set()
    first = min(stage.values(), key=STAGES.index)
    return first, {k.removeprefix("+") for k, s in stage.items() if s == first}


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """trainer.num_threads sets torch's global thread count: restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OVERRIDES)
def test_overrides_train_or_fail_naming_the_bad_key(tmp_path_factory, drawn):
    stage, keys = expected(drawn)
    event(f"fails at {stage}" if stage else "trains")  # see pytest --hypothesis-show-statistics
    args = [f"{k}={hydra_value(v)}" for k, v in BASE.items() if k not in drawn]
    args += [f"{k}={hydra_value(d.value)}" for k, d in drawn.items()]
    try:
        cfg = make_cfg(*args)
        metrics = train(cfg, tmp_path_factory.mktemp("fuzz"))
    except (UserError, HydraException) as err:
        message = str(err)
        assert stage is not None, f"valid overrides failed: {message}"
        assert isinstance(err, HydraException if stage == "compose" else UserError), message
        named = {k for k in keys if k in message}
        if stage == "validate":  # validate() reports every problem at once
            assert named == keys, f"{keys - named} not named in: {message}"
        else:  # Hydra and the data split stop at the first problem
            assert named, f"none of {keys} named in: {message}"
        assert "Traceback" not in message
        return
    assert stage is None, f"trained, but should have failed at {stage} naming {keys}"
    assert metrics["status"] in ("completed", "diverged")
    if metrics["status"] == "completed":
        assert metrics["epochs_trained"] == 1 and 0 <= metrics["test/acc"] <= 1
