"""Hydra's override grammar turned into a Ray Tune search space.

| override                          | Tune domain                                   |
| --------------------------------- | --------------------------------------------- |
| `key=a,b,c`                       | grid: every value, as Hydra's basic sweeper   |
| `key=shuffle(a,b,c)`              | grid, run in a seeded random order            |
| `key=choice(a,b,c)`               | sampled categorical                           |
| `key=range(a,b[,step])`           | sampled integer in [a, b) honouring step      |
| `key=interval(a,b)`               | uniform float                                 |
| `key=tag(log, interval(a,b))`     | log-uniform float (`log` works on range too)  |
| `key=tag(int, interval(a,b))`     | uniform integer in [a, b]                     |
| `key=value`                       | fixed: passed to every trial as written       |

Early stopping judges each trial against the trials before it, so a sorted list (learning
rates from small to large) is ASHA's worst case: every trial beats the ones before it and none is
stopped. `shuffle_grid` runs every grid in a random order, seeded so that a sweep repeats.

Sampled values are numbers, booleans, null or override-ready strings, so a trial's overrides are
`key=<value>` and the best ones can be pasted back on the command line.
"""

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    ValueType,
)
from hydra.errors import CompactHydraException, HydraException
from ray import tune

SUPPORTED_TAGS = {"log", "int"}


class SearchSpaceError(CompactHydraException, ValueError):
    """An override the sweeper cannot turn into a search space (printed without a traceback)."""


@dataclass
class SearchSpace:
    """What a sweep varies (Tune domains by override key) and what it keeps fixed."""

    domains: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)  # key -> its sweep override, as given
    # The fixed overrides that a single run of a trial's configuration needs: all but the
    # sweep's own (`search=...`, `search.*`) and Hydra's (`hydra.*`, `hydra/...`).
    run_fixed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The swept keys as the user wrote them, for the log."""
        return " ".join(self.written[key] for key in self.domains) or "(nothing swept)"

    def varies(self, *groups: str) -> bool:
        """Whether a swept key is one of the config `groups` or a key inside one."""
        keys = [key.lstrip("+~") for key in self.domains]
        return any(key == group or key.startswith(f"{group}.") for key in keys for group in groups)

    @property
    def has_grid(self) -> bool:
        return any(_is_grid(domain) for domain in self.domains.values())

    @property
    def samples(self) -> bool:
        """Whether any swept key is drawn at random (a grid is not)."""
        return any(not _is_grid(domain) for domain in self.domains.values())

    def repeats(self, num_samples: int) -> int:
        """How many times Tune should go over the grid: `num_samples` when keys are sampled
        (each pass draws them anew), once when none is, as each pass would repeat the same
        trials with the same seed."""
        return num_samples if self.samples else 1

    def num_trials(self, num_samples: int) -> int:
        """How many trials Tune makes of this space: `num_samples` of every grid combination."""
        grids = [domain["grid_search"] for domain in self.domains.values() if _is_grid(domain)]
        return num_samples * math.prod(len(values) for values in grids)

    def trial_overrides(self, sampled: Mapping[str, Any]) -> list[str]:
        """The overrides of one trial: the fixed ones, then `key=value` for each sampled key."""
        return self.fixed + [f"{key}={format_value(value)}" for key, value in sampled.items()]


def parse(arguments: Iterable[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(arguments))
    except HydraException as error:
        raise SearchSpaceError(str(error)) from error


def build(
    arguments: Iterable[str],
    params: Mapping[str, Any] | None = None,
    *,
    shuffle_grid: bool = False,
    seed: int = 0,
) -> SearchSpace:
    """The search space of `arguments` (command line) and `params` (the `search.params` config).

    A key given on the command line wins over the same key in `params`. With `shuffle_grid`,
    every grid runs in a random order (`shuffle(a,b,c)` always does), seeded by `seed`.
    """
    overrides = parse(arguments)
    given = {override.get_key_element() for override in overrides}
    from_config = [
        f"{key}={value}" if isinstance(value, str) else f"{key}={format_value(value)}"
        for key, value in (params or {}).items()
        if key not in given
    ]
    space = SearchSpace()
    for override in parse(from_config) + overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            line = override.input_line or f"{key}={override.get_value_element_as_str()}"
            space.fixed.append(line)
            group = override.key_or_group
            if not (override.is_hydra_override() or group.split(".")[0] == "search"):
                space.run_fixed.append(line)
            continue
        if override.is_hydra_override():
            raise SearchSpaceError(
                f"{override.input_line}: Hydra's own settings cannot be swept; sweep your "
                "config's keys instead"
            )
        if override.is_delete():
            raise SearchSpaceError(f"{override.input_line}: a deletion cannot be swept")
        space.domains[key] = domain(override, shuffle_grid=shuffle_grid, seed=seed)
        space.written[key] = override.input_line or key
    return space


def domain(override: Override, *, shuffle_grid: bool = False, seed: int = 0) -> Any:
    """The Tune domain of one sweep override; a grid's values shuffled if asked."""
    sweep = override.value()
    line = override.input_line
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        raise SearchSpaceError(f"{line}: glob() is not supported; list the options with choice()")
    unknown = set(sweep.tags) - SUPPORTED_TAGS
    if unknown:
        raise SearchSpaceError(
            f"{line}: unsupported tag(s) {sorted(unknown)}; known: {sorted(SUPPORTED_TAGS)}"
        )
    log = "log" in sweep.tags
    grid = isinstance(sweep, ChoiceSweep) and sweep.simple_form
    if getattr(sweep, "shuffle", False) and not grid:
        raise SearchSpaceError(
            f"{line}: shuffle() orders a list of values, as in shuffle(a,b,c); a sampled "
            "search has no order"
        )
    if isinstance(sweep, ChoiceSweep):
        values = [_sample_value(element) for element in sweep.list]
        if not values:
            raise SearchSpaceError(f"{line}: an empty choice")
        if log:
            raise SearchSpaceError(f"{line}: tag(log) needs interval() or range(), not a choice")
        if not grid:
            return tune.choice(values)
        if shuffle_grid or sweep.shuffle:
            random.Random(seed).shuffle(values)
        return tune.grid_search(values)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"{line}: the range is empty (its stop is exclusive)")
        integers = all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step))
        if integers and sweep.step == 1:
            return (tune.lograndint if log else tune.randint)(sweep.start, sweep.stop)
        if log:
            raise SearchSpaceError(f"{line}: tag(log) on range() needs a step of 1")
        return tune.choice(values)
    if isinstance(sweep, IntervalSweep):
        low, high = float(sweep.start), float(sweep.end)
        if not low < high:
            raise SearchSpaceError(f"{line}: interval() needs start < end")
        if log and low <= 0:
            raise SearchSpaceError(f"{line}: tag(log, interval()) needs a start above 0")
        if "int" in sweep.tags:
            # Tune's integer domains exclude the upper bound; interval() includes it.
            return (tune.lograndint if log else tune.randint)(int(low), int(high) + 1)
        return (tune.loguniform if log else tune.uniform)(low, high)
    raise SearchSpaceError(f"{line}: this kind of sweep is not supported")


def _sample_value(element: Any) -> Any:
    """Numbers, booleans and null stay as they are; everything else becomes override text."""
    if element is None or isinstance(element, bool | int | float):
        return element
    return Override._get_value_element_as_str(element)


def format_value(value: Any) -> str:
    """A sampled value as the right-hand side of an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars from some searchers
        return format_value(value.item())
    return Override._get_value_element_as_str(value)


def _is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}
