"""The search space, from Hydra's override syntax (hydra.sweeper.params and the command line).

`choice(a, b)` is categorical, `range(1, 4)` the integers 1 to 4 (the upper end included,
as in hydra-optuna-sweeper), `interval(0, 0.7)` a float, `tag(log, interval(1e-4, 0.1))` a
float on a log scale; anything else is a fixed override that every trial gets.
"""

from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of a sweep override (choice, range or interval)."""
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    if isinstance(value, RangeSweep):
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):  # Hydra makes both ends floats
        return FloatDistribution(value.start, value.end, log="log" in value.tags)
    raise ValueError(
        f"{override.input_line}: Optuna searches choice(...), range(...), interval(...) and "
        f"tag(log, interval(...)); a glob or a comma list is not a search space."
    )


def search_space(
    params: Mapping[str, Any] | None, arguments: list[str]
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """({key: distribution}, {key: fixed value}) of hydra.sweeper.params and the command line's
    overrides; the command line wins over params for the same key."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():  # a comma list (a grid elsewhere) is a choice here
            space[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return space, fixed


def trial_overrides(
    space: dict[str, BaseDistribution], params: dict[str, Any], fixed: dict[str, str]
) -> list[str]:
    """A trial's overrides: its sampled values in the order of the search space, then the
    fixed ones."""
    sampled = [f"{key}={Transformer.encode(params[key])}" for key in space]
    return sampled + [f"{key}={value}" for key, value in fixed.items()]
