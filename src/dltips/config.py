"""Checks of a composed config, and of the command line's values before Hydra composes,
so that a bad value fails before any training starts."""

import dataclasses
import difflib
import functools
import importlib
import math
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, ValidationError

from dltips import schema
from dltips.early_stopping import metric_mode
from dltips.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
METRICS = ("train/loss", "train/acc", "val/loss", "val/acc")


def presets(group: str) -> str:
    """'a | b | c': the options of a config group, for error messages."""
    names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    return " | ".join(names) if names else f"see conf/{group}/"


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    """A finite int or float: NaN and infinities are never a sensible setting."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_list(x: object) -> bool:
    return isinstance(x, Sequence | ListConfig) and not isinstance(x, str)


def known_keys(group: str | None = None) -> list[str]:
    """The keys the schema defines at the top level (group None) or in a group's node
    (in `model`, model=maxout's `pieces` too)."""
    prefix = f"{group}." if group else ""
    keys = (k.removeprefix(prefix) for k, _ in schema.nodes() if k.startswith(prefix))
    return [k for k in keys if "." not in k]


def _unknown_keys(node: object, known: list[str], prefix: str = "") -> list[str]:
    """One problem per key of `node` not in `known`, with the closest known key."""
    if not isinstance(node, Mapping):
        return []
    problems = []
    for key in node:
        if key in known:
            continue
        value = node.get(key)
        shown = "" if isinstance(value, Mapping) else f"={value}"
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        if close:
            hint = (
                f"did you mean {prefix}{close[0]}? Choose a group's option, or set a key that "
                f"exists, without `+`: {prefix}{close[0]}{shown}."
            )
        else:
            hint = f"the keys{' of ' + prefix[:-1] if prefix else ''} are {', '.join(known)}."
        problems.append(f"{prefix}{key}{shown} is not a setting: {hint}")
    return problems


def _target_problem(node: object, key: str, group: str, kind: type | None = None) -> str | None:
    """Why `node` (a mapping with a _target_) cannot be built, or None."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        return (
            f"{key}={node!r} is not a _target_ mapping. Pick a preset with "
            f"{group}=<{presets(group)}>."
        )
    target = node["_target_"]
    try:
        module, _, name = str(target).rpartition(".")
        obj = getattr(importlib.import_module(module), name)
    except Exception:
        return (
            f"{key}._target_={target} cannot be found. Pick a preset with "
            f"{group}=<{presets(group)}>, or name an importable class."
        )
    if kind is not None and not (isinstance(obj, type) and issubclass(obj, kind)):
        return f"{key}._target_={target} is not a {kind.__module__}.{kind.__name__}."
    return None


@functools.cache
def _scratch(cls: type) -> DictConfig:
    """An instance of a schema node to assign values to: OmegaConf checks them."""
    return OmegaConf.structured(cls)


def _kind(annotation: object) -> str:
    """'an integer', 'null or an integer', ...: what a field's type accepts, in words."""
    args = typing.get_args(annotation) or (annotation,)
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    kind = kinds[next(a for a in args if a is not type(None))]
    return f"null or {kind}" if type(None) in args else kind


def _type_problems(cfg: DictConfig, cls: type = schema.TrainConf, prefix: str = "") -> list[str]:
    """One problem per value of `cfg` that its schema type refuses. Hydra checks this while
    it composes; a config that was not composed (a checkpoint's) is checked here."""
    problems = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or f.type is Any:
            continue
        if dataclasses.is_dataclass(f.type):
            node = schema.MaxoutConf if f.type is schema.ModelConf else f.type
            problems += _type_problems(cfg, node, key + ".")
            continue
        try:
            _scratch(cls)[f.name] = value
        except ValidationError as err:
            shown = "null" if value is None else repr(value)
            problems.append(f"{key}={shown}: must be {_kind(f.type)} ({str(err).splitlines()[0]}).")
    return problems


_ABSENT = object()


def check_override_types(overrides: list[str]) -> None:
    """Raise ConfigError for command-line `overrides` whose values the schema's types refuse
    (`seed=abc`, `trainer.max_epochs=1.5`), each value of a sweep too (`-m seed=0,abc`), as
    Hydra would while it composes. Read with Hydra's own parser; an override it cannot read,
    or one that picks a group's option (`model=relu`), is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra names the syntax error
        return
    fields = dict(schema.nodes())
    problems = []
    for override in parsed:
        key = override.key_or_group
        if key not in fields or schema.is_node(fields[key]) or override.is_delete():
            continue
        if not override.is_sweep_override():
            values = [override.value()]
        elif override.is_discrete_sweep():  # seed=0,1 range(3) choice(...): each value
            values = list(override.sweep_iterator())
        else:  # interval(...): a search space, its bounds are the sweeper's to read
            continue
        for value in values:
            if isinstance(value, str) and "${" in value:  # resolved when the run reads it
                continue
            cfg = OmegaConf.create()
            OmegaConf.update(cfg, key, value)
            problems += _type_problems(cfg)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def validate(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Raise ConfigError listing every value of `cfg` that cannot work.

    The schema (dltips.schema) has typed the values; these are the checks a type cannot
    say: ranges, choices, and values that must agree with each other. `overrides` (the
    command's) tell a value given on the command line from a default.
    """
    # a key added with `+` that no code reads: most likely a misspelling, silently ignored
    problems = _unknown_keys(cfg, known_keys())
    for group in ("loss", "data", "trainer", "trainer.early_stopping"):
        problems += _unknown_keys(OmegaConf.select(cfg, group), known_keys(group), f"{group}.")
    if OmegaConf.get_type(cfg) is not schema.TrainConf:  # not composed by Hydra
        problems += _type_problems(cfg)
        if problems:
            raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    seed = cfg.seed
    check(-(2**63) <= seed < 2**64, f"seed={seed!r}: must be an integer (seed=0, 1, 2, ...).")

    m = cfg.model
    check(m.depth >= 1, f"model.depth={m.depth!r}: must be an integer >= 1.")
    if _is_list(m.width):  # Any in the schema: an int or a list
        check(
            all(_is_int(w) and w >= 1 for w in m.width),
            f"model.width={list(m.width)}: every width must be an integer >= 1.",
        )
        check(
            len(m.width) == m.depth,
            f"model.width has {len(m.width)} entries but model.depth={m.depth}: "
            f"give one width per hidden layer, or a single integer.",
        )
    else:
        check(
            _is_int(m.width) and m.width >= 1,
            f"model.width={m.width!r}: must be an integer >= 1 (or a list, one per layer).",
        )
    if m.get("params") is not None:
        check(m.params >= 1, f"model.params={m.params!r}: must be null (off) or an integer >= 1.")
        given = [o for o in overrides or [] if re.match(r"[+~]*model\.width=", o)]
        if _is_list(m.width):
            given.append(f"model.width={list(m.width)}")
        check(
            not given,
            f"model.params={m.params} chooses the widths itself, so {(given or [''])[0]} "
            "contradicts it: give one of model.params and model.width, not both.",
        )
    check(
        0 <= m.dropout < 1,
        f"model.dropout={m.dropout!r}: must be in [0, 1) (the probability of dropping a unit).",
    )
    check(
        m.init in ("default", "xavier", "kaiming"),
        f"model.init={m.init!r}: must be default, xavier or kaiming.",
    )
    check(m.get("pieces", 1) >= 1, f"model.pieces={m.get('pieces')!r}: must be an integer >= 1.")
    problems.append(_target_problem(m.activation, "model.activation", "model", torch.nn.Module))

    # optim is not typed by the schema: each torch class has its own arguments
    o = cfg.optim
    problems.append(_target_problem(o, "optim", "optim", torch.optim.Optimizer))
    check(
        _is_number(o.get("lr")) and o.get("lr") > 0,
        f"optim.lr={o.get('lr')!r}: the learning rate must be a number > 0.",
    )
    check(
        _is_number(o.get("weight_decay", 0)) and o.get("weight_decay", 0) >= 0,
        f"optim.weight_decay={o.get('weight_decay')!r}: must be a number >= 0.",
    )
    # the optimizer-specific arguments of the presets (and a few a user may add with +optim)
    if "betas" in o:
        betas = o.betas
        check(
            _is_list(betas)
            and len(betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in betas),
            f"optim.betas={betas!r}: must be two numbers in [0, 1), e.g. optim.betas=[0.9,0.999].",
        )
    for key in ("momentum", "alpha"):  # 1 or more: a moving average that never forgets
        if key in o:
            check(
                _is_number(o[key]) and 0 <= o[key] < 1,
                f"optim.{key}={o[key]!r}: must be a number in [0, 1).",
            )
    for key in ("lr_decay", "initial_accumulator_value", "dampening"):
        if key in o:
            check(
                _is_number(o[key]) and o[key] >= 0,
                f"optim.{key}={o[key]!r}: must be a number >= 0.",
            )
    if "eps" in o:
        check(
            _is_number(o.eps) and o.eps > 0,
            f"optim.eps={o.eps!r}: must be a small number > 0, e.g. 1e-8.",
        )
    for key in ("nesterov", "amsgrad", "centered", "maximize"):
        if key in o:
            check(isinstance(o[key], bool), f"optim.{key}={o[key]!r}: must be true or false.")
    for key in ("fused", "foreach", "capturable", "differentiable"):
        if key in o:
            check(
                o[key] is None or isinstance(o[key], bool),
                f"optim.{key}={o[key]!r}: must be true, false or null.",
            )
    if o.get("nesterov") is True:
        momentum = o.get("momentum", 0)
        check(
            not _is_number(momentum) or momentum > 0,
            f"optim.nesterov=true needs optim.momentum > 0 (it is {momentum}): "
            f"use optim=nesterov, or set optim.momentum.",
        )

    problems.append(_target_problem(cfg.loss.criterion, "loss.criterion", "loss", torch.nn.Module))
    check(
        math.isfinite(cfg.loss.l1) and cfg.loss.l1 >= 0,
        f"loss.l1={cfg.loss.l1!r}: must be a number >= 0 (0 = off).",
    )

    d = cfg.data
    check(d.batch_size >= 1, f"data.batch_size={d.batch_size!r}: must be an integer >= 1.")
    check(
        d.train_size is None or d.train_size >= 1,
        f"data.train_size={d.train_size!r}: must be null (all) or an integer >= 1.",
    )
    check(
        d.val_size >= 1,
        f"data.val_size={d.val_size!r}: must be an integer >= 1 (validation drives early "
        f"stopping and the best checkpoint).",
    )
    check(
        d.normalize in ("unit", "none", "standard"),
        f"data.normalize={d.normalize!r}: must be unit, none or standard.",
    )
    check(
        math.isfinite(d.test_noise_std) and d.test_noise_std >= 0,
        f"data.test_noise_std={d.test_noise_std!r}: must be a number >= 0 (0 = off).",
    )

    t = cfg.trainer
    check(t.max_epochs >= 1, f"trainer.max_epochs={t.max_epochs!r}: must be an integer >= 1.")
    try:
        device = resolve_device(t.device)
    except ConfigError as err:
        problems.append(str(err))
        device = None
    if t.cuda_graphs is True and device is not None and device.type != "cuda":
        problems.append(
            f"trainer.cuda_graphs=true needs a CUDA device, and trainer.device={t.device} runs "
            f"on the {device.type.upper()} here. Use trainer.cuda_graphs=auto (graphs wherever "
            f"CUDA is) or false."
        )
    check(
        str(t.precision) in ("32", "bf16"),
        f"trainer.precision={t.precision!r}: must be 32 or bf16.",
    )
    check(
        t.grad_clip is None or (math.isfinite(t.grad_clip) and t.grad_clip > 0),
        f"trainer.grad_clip={t.grad_clip!r}: must be null (off) or a number > 0.",
    )
    check(
        t.cuda_graphs == "auto" or isinstance(t.cuda_graphs, bool),
        f"trainer.cuda_graphs={t.cuda_graphs!r}: must be auto, true or false.",
    )
    check(
        t.num_threads is None or t.num_threads >= 1,
        f"trainer.num_threads={t.num_threads!r}: must be null (torch's default) or an "
        f"integer >= 1.",
    )
    check(
        t.checkpoint_every >= 1,
        f"trainer.checkpoint_every={t.checkpoint_every!r}: must be an integer >= 1 (1: every "
        f"epoch).",
    )
    es = t.early_stopping
    check(
        es.monitor in METRICS,
        f"trainer.early_stopping.monitor={es.monitor!r}: must be one of {', '.join(METRICS)}.",
    )
    if es.mode not in (None, "min", "max"):
        problems.append(
            f"trainer.early_stopping.mode={es.mode!r}: must be null (follows the metric), "
            f"min or max."
        )
    elif es.monitor in METRICS:
        try:
            metric_mode(es.monitor, es.mode)
        except ValueError:
            implied = metric_mode(es.monitor)
            problems.append(
                f"trainer.early_stopping.mode={es.mode} contradicts "
                f"trainer.early_stopping.monitor={es.monitor}: it would keep the worst epoch. "
                f"Drop mode (it follows the metric) or use mode={implied}."
            )
    check(
        es.patience is None or es.patience >= 1,
        f"trainer.early_stopping.patience={es.patience!r}: must be null (off) or an integer >= 1.",
    )
    check(
        math.isfinite(es.min_delta) and es.min_delta >= 0,
        f"trainer.early_stopping.min_delta={es.min_delta!r}: must be a number >= 0.",
    )

    problems = [p for p in problems if p]
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def resolve_device(name: str) -> torch.device:
    """torch.device for trainer.device (auto | cpu | cuda | cuda:N | mps), checked against the
    machine; auto picks CUDA, then Apple's MPS, then the CPU."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                "trainer.device=mps: Apple's MPS is not available on this machine (it needs a "
                "Mac with Apple silicon and a torch build with MPS). "
                "Use trainer.device=cpu or auto."
            )
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise ConfigError(f"trainer.device={name!r}: must be auto, cpu, cuda, cuda:N or mps.")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name}: CUDA is not available on this machine "
            f"(no GPU, or a CPU-only torch build). Use trainer.device=cpu or auto."
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"trainer.device={name}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s), numbered from 0."
        )
    return torch.device(name)
