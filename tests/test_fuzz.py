"""Property: any mix of overrides either trains or fails with a clean message."""

import math

from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_cfg
from dltips.errors import UserError
from dltips.train import train

# valid and invalid values for the keys a user is most likely to get wrong
CHOICES = {
    "model": ["sigmoid", "relu", "maxout", "tanh", "nope"],
    "optim": ["sgd", "adam", "adagrad", "rmsprop", "nesterov", "nope"],
    "loss": ["cross_entropy", "mse", "nope"],
    "model.depth": [-1, 0, 1, 2, "two"],
    "model.width": [0, 1, 8, "[8,4]", "wide"],
    "model.dropout": [-0.5, 0, 0.5, 1, 2],
    "model.init": ["default", "xavier", "kaiming", "zeros"],
    "optim.lr": [-1, 0, 1e-3, 0.1, 1e4, "nan", "fast"],
    "optim.weight_decay": [-1, 0, 1e-4],
    "loss.l1": [-1, 0, 1e-4],
    "data.batch_size": [0, 1, 64, 100000],
    "data.train_size": ["null", 0, 10, 200, 100000],
    "data.val_size": [0, 1, 50, 3999, 4000, 10**6],
    "data.normalize": ["unit", "none", "standard", "minmax"],
    "data.test_noise_std": [-1, 0, 1],
    "trainer.device": ["cpu", "auto", "tpu", "cuda:7"],
    "trainer.precision": ["32", "bf16", "16"],
    "trainer.grad_clip": ["null", 0, 1.0],
    "trainer.early_stopping.monitor": ["val/loss", "val/acc", "test/acc"],
    "trainer.early_stopping.mode": ["min", "max", "up"],
    "trainer.early_stopping.patience": ["null", 0, 1, 3],
}

overrides = st.dictionaries(
    st.sampled_from(sorted(CHOICES)), st.integers(0, 10**6), min_size=1, max_size=6
).map(lambda d: [f"{k}={CHOICES[k][i % len(CHOICES[k])]}" for k, i in d.items()])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides)
def test_overrides_train_or_fail_cleanly(tmp_path_factory, chosen):
    # small data, one epoch: every example takes well under a second
    base = ["trainer.max_epochs=1", "data.train_size=200", "data.val_size=50"]
    try:
        cfg = make_cfg(*base, *chosen)
        metrics = train(cfg, tmp_path_factory.mktemp("fuzz"))
    except (UserError, HydraException) as err:
        message = str(err)
        assert message.strip() and "Traceback" not in message
        return
    assert metrics["status"] in ("completed", "diverged")
    if metrics["status"] == "completed":
        assert 0 <= metrics["test/acc"] <= 1 and math.isfinite(metrics["train/loss"])
