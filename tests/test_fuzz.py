"""Property: any mix of overrides trains, or fails with a message that names a key it set;
a value that is wrong in every context never trains."""

from typing import NamedTuple

import pytest
import torch
from hydra.errors import HydraException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import make_cfg
from dltips.errors import UserError
from dltips.train import train

# small data, one epoch: every example takes well under a second
BASE = {"trainer.max_epochs": 1, "data.train_size": 200, "data.val_size": 50}


class Drawn(NamedTuple):
    value: object
    valid: bool  # False: wrong whatever else is set (caught composing, validating, splitting
    # the data or building the loss); True: valid alone, maybe not with the other values


def valid(*values: object) -> st.SearchStrategy[Drawn]:
    return st.sampled_from(values).map(lambda v: Drawn(v, True))


def invalid(*values: object) -> st.SearchStrategy[Drawn]:
    return st.sampled_from(values).map(lambda v: Drawn(v, False))


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
    "model.width": valid(1, 8, [8, 4]),  # a list: one width per layer (model.depth=2)
    "model.dropout": valid(0, 0.5),
    "model.init": valid("default", "xavier", "kaiming"),
    "optim.lr": valid(1e-3, 0.1, 1e4),  # 1e4 may diverge: a valid outcome
    "optim.weight_decay": valid(0, 1e-4),
    # only some optimizers have these keys
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

# values that must fail whatever else is set
INVALID = {
    "model": invalid("nope"),
    "optim": invalid("nope"),
    "loss": invalid("nope"),
    # L1Loss builds, but cannot take class indices
    "loss.criterion._target_": invalid("torch.nn.Foo", "torch.optim.SGD", "torch.nn.L1Loss"),
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
    "data.train_size": invalid(0, "all", 100000),  # mnist_5k has 4000 training images
    "data.val_size": invalid(0, -5, 4000, 10**6),  # no training data left
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


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """trainer.num_threads sets torch's global thread count: restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def named(message: str, keys: set[str]) -> set[str]:
    """The keys `message` names (a group's option as Hydra names it: model/nope)."""
    return {k for k in keys if k in message or k.replace(".", "/") in message}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OVERRIDES)
@pytest.mark.slow
def test_overrides_train_or_fail_naming_a_key(tmp_path_factory, drawn):
    args = [f"{k}={hydra_value(v)}" for k, v in BASE.items() if k not in drawn]
    args += [f"{k}={hydra_value(d.value)}" for k, d in drawn.items()]
    keys = {k.removeprefix("+") for k in {*drawn, *BASE}}
    wrong = {k for k, d in drawn.items() if not d.valid}
    try:
        cfg = make_cfg(*args)
        metrics = train(cfg, tmp_path_factory.mktemp("fuzz"))
    except HydraException as err:  # composing: an option, a key, a value's type
        event("fails composing")  # see pytest --hypothesis-show-statistics
        first = str(err).splitlines()[0]
        assert named(first, keys), f"none of {keys} named in: {err}"
        assert "Traceback" not in f"{err}\n{err.__cause__}"
        return
    except UserError as err:  # validate(), the data split, building the loss
        event("fails checking")
        problems = str(err).removeprefix("Invalid config:\n  - ").split("\n  - ")
        for problem in problems:  # validate() lists every problem, one a line
            assert "\n" not in problem, f"more than one line: {problem}"
            assert named(problem, keys), f"none of {keys} named in: {problem}"
        assert "Traceback" not in str(err)
        return
    event("trains")
    assert not wrong, f"trained with {wrong} set to {[drawn[k].value for k in wrong]}"
    assert metrics["status"] in ("completed", "diverged")
    if metrics["status"] == "completed":
        assert metrics["epochs_trained"] == 1 and 0 <= metrics["test/acc"] <= 1
