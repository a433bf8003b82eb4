"""Bad input a user can type: a clear message, a non-zero exit, no traceback."""

import pytest
import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import make_cfg, run_cli
from dltips.config import known_keys, validate
from dltips.data import load_dataset
from dltips.errors import ConfigError
from dltips.losses import check_criterion
from dltips.task import check_command_line
from dltips.train import train

TINY_CLI = ["model.width=32", "trainer.max_epochs=1", "data.train_size=200", "data.val_size=50"]


@pytest.mark.slow  # the most expensive in-process test of its file
def test_early_stopping_on_val_acc_keeps_the_best_epoch(tmp_path):
    # mode is left null: it follows the metric, max for an accuracy
    cfg = make_cfg(
        "trainer.early_stopping.monitor=val/acc",
        "trainer.early_stopping.patience=2",
        "trainer.max_epochs=6",
        "optim.lr=0.01",  # noisy enough that val/acc goes up and down
    )
    metrics = train(cfg, tmp_path)
    accs = [h["val/acc"] for h in metrics["history"]]
    assert min(accs) < max(accs)  # else any epoch would be "the best"
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert best["val/acc"] == max(accs)
    assert metrics["val/acc"] == best["val/acc"]  # the reported weights are the best epoch's


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=min"],
            "use mode=max",
        ),
        (["trainer.early_stopping.mode=max"], "use mode=min"),  # the default monitor is val/loss
    ],
)
def test_a_mode_that_contradicts_the_metric_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    monitor = make_cfg(*overrides).trainer.early_stopping.monitor
    assert f"contradicts trainer.early_stopping.monitor={monitor}" in str(err.value)
    assert "Drop mode" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=-1", "seed=18446744073709551616"], "seed=18446744073709551616: must be an"),
        (["trainer.num_threads=-1"], "trainer.num_threads=-1: must be null"),
        (["trainer.num_threads=0"], "trainer.num_threads=0: must be null"),
        (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0: must be an integer >= 1"),
        (["trainer.cuda_graphs=on"], "trainer.cuda_graphs='on': must be auto, true or false"),
        (["trainer.early_stopping.mode=up"], "trainer.early_stopping.mode='up': must be null"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9]: must be two numbers in [0, 1)"),
        (["optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
        (["optim.betas=0.9"], "optim.betas=0.9: must be two numbers"),
        (["optim=momentum", "optim.momentum=high"], "optim.momentum='high': must be a number"),
        (["optim=momentum", "optim.momentum=1"], "optim.momentum=1: must be a number in [0, 1)"),
        (["optim=rmsprop", "optim.alpha=x"], "optim.alpha='x': must be a number in [0, 1)"),
        (["optim=rmsprop", "optim.alpha=1.5"], "optim.alpha=1.5: must be a number in [0, 1)"),
        (["+optim.eps=tiny"], "optim.eps='tiny': must be a small number > 0"),
        (["optim=nesterov", "optim.nesterov=maybe"], "optim.nesterov='maybe': must be true"),
        (["optim=nesterov", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
        (["optim=sgd", "optim.fused=yes"], "optim.fused='yes': must be true, false or null"),
        (["optim.lr=inf"], "optim.lr=inf: the learning rate must be a number > 0"),
        (["optim.lr=nan"], "optim.lr=nan: the learning rate must be a number > 0"),
        (["+modle=sigmoid"], "modle=sigmoid is not a setting: did you mean model?"),
        (["+modle=sigmoid"], "without `+`: model=sigmoid"),
        (["+seeds=3"], "seeds=3 is not a setting: did you mean seed?"),
        (["+trainer.max_epoch=5"], "did you mean trainer.max_epochs? "),
        (["+trainer.early_stopping.patiance=3"], "did you mean trainer.early_stopping.patience?"),
        (
            ["+data.trainsize=10"],
            "data.trainsize=10 is not a setting: did you mean data.train_size",
        ),
        (
            ["+xyz=1"],
            "xyz=1 is not a setting: the keys are seed, sweep, lecture, model, optim, loss",
        ),
    ],
)
def test_bad_value_is_named_with_what_it_must_be(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("seed=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
        ("model.depth=two", "Value 'two' of type 'str' could not be converted to Integer"),
        ("model.dropout=half", "Value 'half' of type 'str' could not be converted to Float"),
        ("trainer.num_threads=many", "Value 'many' of type 'str' could not be converted to Int"),
        ("trainer.flush_denormal=maybe", "Value 'maybe' is not a valid bool (type str)"),
        ("trainer.tf32=maybe", "Value 'maybe' is not a valid bool (type str)"),
    ],
)
def test_a_value_of_the_wrong_type_fails_composing_naming_the_key(override, message):
    # the schema's types (dltips.schema): Hydra refuses the override while it composes
    with pytest.raises(HydraException) as err:
        make_cfg(override)
    assert str(err.value) == f"Error merging override {override}"  # one line, with the key
    assert str(err.value.__cause__).startswith(message)
    assert f"full_key: {override.split('=')[0]}" in str(err.value.__cause__)


def test_a_config_not_composed_is_typed_by_validate():
    # a checkpoint's config (dltips.evaluation) reaches validate() without Hydra's types
    cfg = OmegaConf.to_container(make_cfg("model=maxout"))
    cfg["seed"], cfg["trainer"]["tf32"], cfg["model"]["pieces"] = "abc", "maybe", 1.5
    with pytest.raises(ConfigError) as err:
        validate(OmegaConf.create(cfg))
    assert str(err.value).splitlines()[1:] == [
        "  - seed='abc': must be an integer (Value 'abc' of type 'str' could not be converted "
        "to Integer).",
        "  - model.pieces=1.5: must be an integer (Value '1.5' of type 'float' could not be "
        "converted to Integer).",
        "  - trainer.tf32='maybe': must be true or false (Value 'maybe' is not a valid bool "
        "(type str)).",
    ]
    validate(OmegaConf.create(OmegaConf.to_container(make_cfg())))  # a good one passes


def test_every_problem_is_reported_at_once():
    cfg = make_cfg("model.depth=0", "trainer.num_threads=0", "optim.betas=[0.9]", "+modle=relu")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).count("\n  - ") == 4


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.early_stopping.monitor=val/acc"],
        ["trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=max"],
        ["trainer.early_stopping.monitor=train/loss", "trainer.early_stopping.mode=min"],
        ["seed=-1", "trainer.num_threads=2", "trainer.flush_denormal=false"],
        ["optim=sgd", "+optim.nesterov=true", "+optim.momentum=0.5"],
        ["optim=adam", "optim.betas=[0.0,0.99]", "+optim.eps=1e-6", "+optim.amsgrad=true"],
    ],
)
def test_good_values_pass(overrides):
    validate(make_cfg(*overrides))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["seed=abc"], "seed='abc': must be an integer"),
        (["model.depth=two"], "model.depth='two': must be an integer"),
        (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5: must be an integer"),
        (["-m", "seed=0,abc"], "seed='abc': must be an integer"),  # each value of a sweep
        (["-m", "trainer.tf32=true,maybe"], "trainer.tf32='maybe': must be true or false"),
    ],
)
def test_cli_wrong_type_is_one_error_line_and_writes_nothing(tmp_path, arguments, message):
    # checked before Hydra starts: its own message takes seven lines, and a sweep's would
    # leave the sweep dir behind
    result = run_cli("train.py", *TINY_CLI, *arguments, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {message} (Value ")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "arguments",
    [
        ["-m", "seed=0,1"],
        ["-m", "seed=range(3)", "model.depth=choice(1,2)", "model=sigmoid,relu"],
        ["-m", "hparams_search=optuna", "optim.lr=tag(log, interval(0.0001, 0.1))"],
        ["seed=${oc.env:SEED,0}", "data.train_size=null", "trainer.tf32=yes", "+optim.eps=x"],
        ["--cfg", "job", "seed=abc"],  # Hydra's own options: Hydra's own messages
    ],
)
def test_cli_sweeps_and_good_values_are_not_type_errors(arguments):
    check_command_line(arguments)  # raises SystemExit for a type error


def test_known_keys_are_the_composed_configs_keys():
    cfg = make_cfg()
    assert known_keys() == list(cfg)
    assert known_keys("trainer") == list(cfg.trainer)
    assert known_keys("trainer.early_stopping") == list(cfg.trainer.early_stopping)
    assert set(known_keys("data")) >= set(make_cfg("data=mnist").data)


@pytest.fixture(scope="module")
def logits_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """A real model's logits for two training images, and their labels."""
    cfg = make_cfg()
    data = load_dataset(cfg.data, seed=cfg.seed)
    model = instantiate(cfg.model, in_features=data.in_features, num_classes=data.num_classes)
    with torch.no_grad():
        return model.eval()(data.x_train[:2]), data.y_train[:2]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_check_criterion_accepts_the_loss_presets(loss, logits_and_labels):
    check_criterion(instantiate(make_cfg(f"loss={loss}").loss.criterion), *logits_and_labels)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("torch.nn.L1Loss", "RuntimeError: The size of tensor a (10) must match"),
        ("torch.nn.BCEWithLogitsLoss", "ValueError: Target size"),
        ("torch.nn.KLDivLoss", "RuntimeError: kl_div"),
    ],
)
def test_check_criterion_rejects_a_loss_for_other_targets(target, error, logits_and_labels):
    criterion = instantiate(make_cfg(f"loss.criterion._target_={target}").loss.criterion)
    with pytest.raises(ConfigError) as err:
        check_criterion(criterion, *logits_and_labels)
    message = str(err.value)
    assert message.startswith(
        f"loss.criterion._target_={target} cannot compare the model's (N, 10) logits with "
        f"class-index labels ({error}"
    )
    assert "loss=<cross_entropy | mse>" in message
    assert "\n" not in message  # the underlying error in one line


def test_check_criterion_rejects_a_loss_per_example(logits_and_labels):
    with pytest.raises(ConfigError, match=r"returns shape \(2,\), not a single number"):
        check_criterion(torch.nn.CrossEntropyLoss(reduction="none"), *logits_and_labels)


def test_a_loss_for_other_targets_fails_before_any_output(tmp_path):
    cfg = make_cfg("loss.criterion._target_=torch.nn.L1Loss", *TINY_CLI)
    with pytest.raises(ConfigError, match="loss.criterion._target_=torch.nn.L1Loss cannot compare"):
        train(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("overrides", "messages"),
    [
        (
            ["trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=min"],
            [
                "trainer.early_stopping.mode=min contradicts "
                "trainer.early_stopping.monitor=val/acc",
                "Drop mode (it follows the metric) or use mode=max.",
            ],
        ),
        (
            ["model.depth=0", "trainer.num_threads=0", "optim.betas=[0.9]"],
            [
                "model.depth=0: must be an integer >= 1",
                "trainer.num_threads=0: must be null (torch's default) or an integer >= 1",
                "optim.betas=[0.9]: must be two numbers in [0, 1)",
            ],
        ),
        (
            ["model.params=100000"],  # TINY_CLI gives model.width=32
            [
                "model.params=100000 chooses the widths itself, so model.width=32 contradicts "
                "it: give one of model.params and model.width, not both."
            ],
        ),
        (
            ["trainer.num_threads=-1"],
            ["trainer.num_threads=-1: must be null (torch's default) or an integer >= 1"],
        ),
        (
            ["+modle=sigmoid"],
            ["modle=sigmoid is not a setting: did you mean model?", "`+`: model=sigmoid"],
        ),
        (
            ["loss.criterion._target_=torch.nn.L1Loss"],
            [
                "loss.criterion._target_=torch.nn.L1Loss cannot compare the model's "
                "(N, 10) logits with class-index labels (RuntimeError: ",
                "Use a preset, loss=<cross_entropy | mse>",
            ],
        ),
    ],
)
def test_cli_bad_input_exits_with_the_message(tmp_path, overrides, messages):
    result = run_cli("train.py", *TINY_CLI, *overrides, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "error: " in result.stderr  # scripts/train.py's way of reporting a UserError
    for message in messages:
        assert message in result.stderr
    assert "Traceback" not in output
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("metrics.json"))
