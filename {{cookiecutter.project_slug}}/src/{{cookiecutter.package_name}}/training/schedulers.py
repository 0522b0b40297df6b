"""Learning-rate schedulers, one builder per file in `configs/scheduler/`.

Pick one with `python train.py scheduler=cosine` (or step, plateau, onecycle; `none` is a
constant learning rate). The config is a Hydra partial: the model's `configure_optimizers`
passes `build` the optimizer and the run's length, and Lightning steps what comes back.

To add a scheduler, write a function here with the same first three parameters
(`optimizer`, `total_steps`, `steps_per_epoch`), its own keyword parameters and
`name: str = "<option>"` (the config's `name` key, ignored), returning Lightning's
lr-scheduler dict; then add `configs/scheduler/<option>.yaml` pointing `_target_` at it.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

SchedulerFactory = Callable[..., dict[str, Any]]


def build(
    factory: SchedulerFactory | None,
    optimizer: torch.optim.Optimizer,
    total_steps: int | float,
    max_epochs: int,
) -> dict[str, Any] | None:
    """Lightning's lr-scheduler dict for `optimizer`, or None when no scheduler is configured.

    `total_steps` is the whole run's optimizer steps (`trainer.estimated_stepping_batches`). It
    is infinite when Lightning cannot know an epoch's length (a streamed dataset without a row
    count); then so is `steps_per_epoch`, and only the schedulers that count in epochs work.
    """
    if factory is None:
        return None
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(
            f"trainer.max_epochs must be an integer of at least 1 to schedule the learning "
            f"rate, got {max_epochs!r}"
        )
    if math.isfinite(total_steps):
        total_steps = int(total_steps)
        steps_per_epoch = max(1, total_steps // max_epochs)
    else:
        steps_per_epoch = total_steps
    return factory(optimizer=optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)


def cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.0,
    name: str = "cosine",
) -> dict[str, Any]:
    """Linear warmup to the configured lr, then cosine annealing to `min_lr_ratio` * lr.

    Warmup starts at lr / (warmup steps + 1) and takes `warmup_fraction` of the run (at least
    one step when the fraction is above 0, always leaving at least one step of annealing). The
    floor is computed from the first parameter group's lr.
    """
    _check("warmup_fraction", warmup_fraction, lambda v: 0 <= v < 1, "in [0, 1)")
    _check("min_lr_ratio", min_lr_ratio, lambda v: 0 <= v <= 1, "in [0, 1]")
    total_steps = _known_steps(total_steps, "cosine")
    warmup_steps = max(1, int(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    warmup_steps = min(warmup_steps, total_steps - 1)
    floor = min_lr_ratio * optimizer.param_groups[0]["lr"]
    anneal = lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps - warmup_steps, eta_min=floor
    )
    if warmup_steps == 0:
        return _per("step", anneal)
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps
    )
    schedule = lr_scheduler.SequentialLR(
        optimizer, schedulers=[warmup, anneal], milestones=[warmup_steps]
    )
    return _per("step", schedule)


def step(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    step_epochs: int = 10,
    gamma: float = 0.1,
    name: str = "step",
) -> dict[str, Any]:
    """Multiply the lr by `gamma` every `step_epochs` epochs."""
    _check("step_epochs", step_epochs, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    _check("gamma", gamma, lambda v: 0 < v <= 1, "in (0, 1]")
    return _per("epoch", lr_scheduler.StepLR(optimizer, step_size=step_epochs, gamma=gamma))


def plateau(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    monitor: str = "val_loss",
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 5,
    name: str = "plateau",
) -> dict[str, Any]:
    """Multiply the lr by `factor` once `monitor` has not improved for `patience` epochs.

    Lightning passes the scheduler the epoch's value of `monitor`, which must be logged every
    epoch (validation's metrics are logged before the epoch's schedulers step).
    """
    _check("monitor", monitor, lambda v: isinstance(v, str) and v != "", "a metric's name")
    _check("mode", mode, lambda v: v in ("min", "max"), "min or max")
    _check("factor", factor, lambda v: 0 < v < 1, "in (0, 1)")
    _check("patience", patience, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    scheduler = lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience
    )
    return {**_per("epoch", scheduler), "monitor": monitor}


def onecycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.3,
    cycle_momentum: bool = False,
    name: str = "onecycle",
) -> dict[str, Any]:
    """The 1cycle policy: up to the configured lr over `pct_start` of the run, then far below.

    It starts at lr / 25 and ends at lr / 25e4 (torch's defaults). The peak is each parameter
    group's configured lr. `cycle_momentum` also cycles momentum (Adam's beta1) between 0.95
    and 0.85 as the original policy does; off by default so the optimizer's setting holds.
    """
    _check("pct_start", pct_start, lambda v: 0 < v < 1, "in (0, 1)")
    _check("cycle_momentum", cycle_momentum, lambda v: isinstance(v, bool), "true or false")
    total_steps = _known_steps(total_steps, "onecycle")
    peaks = [group["lr"] for group in optimizer.param_groups]
    scheduler = lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peaks,
        total_steps=total_steps,
        pct_start=pct_start,
        cycle_momentum=cycle_momentum,
    )
    return _per("step", scheduler)


def _per(interval: str, scheduler: Any) -> dict[str, Any]:
    return {"scheduler": scheduler, "interval": interval, "frequency": 1}


def _check(key: str, value: Any, test: Callable[[Any], bool], expected: str) -> None:
    """Raise a ValueError naming the config key when `test(value)` fails (or cannot compare)."""
    try:
        ok = bool(test(value))
    except TypeError:  # e.g. a string where a number belongs
        ok = False
    if not ok:
        raise ValueError(f"scheduler.{key} must be {expected}, got {value!r}")


def _known_steps(total_steps: int | float, option: str) -> int:
    """Per-step schedules need the run's length in advance."""
    if not math.isfinite(total_steps):
        raise ValueError(
            f"scheduler={option} needs the run's number of steps, but an epoch's length is "
            "unknown (a streamed dataset without a row count); use scheduler=step or plateau"
        )
    if total_steps < 1:
        raise ValueError(f"scheduler={option} needs at least 1 training step, got {total_steps}")
    return int(total_steps)
