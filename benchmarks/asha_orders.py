"""How many trial-epochs ASHA saves depends on the order the trials arrive in: replay the orders.

Row 3 measures one sweep, in one order. To say what to expect in general, this reads the
per-epoch validation loss of every run of a basic multirun (each ran all its epochs; read from
its TensorBoard) and feeds those curves to Ray Tune's own ASHAScheduler, set up as the project's
`search=asha`, for many orders of the runs, two trials at a time. It prints the trial-epochs of
the order as given, of the project's seeded shuffle (`search.shuffle_grid`) and their
distribution over random orders. A replay, not a sweep: trials advance in step, one epoch each.

    python -m benchmarks.asha_orders --project build/bench/research-project \\
        build/bench/work/sweeps/basic_0 build/bench/work/sweeps/long_basic_0
"""

import argparse
import importlib
import random
import statistics
from pathlib import Path
from types import SimpleNamespace

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from ray.tune.schedulers import TrialScheduler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def curves(sweep_dir: Path, metric: str) -> list[list[float]]:
    """The metric per epoch of each job of a basic multirun, in job order."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    found = []
    for job in jobs:
        events = EventAccumulator(str(job / "tensorboard")).Reload()
        found.append([event.value for event in events.Scalars(metric)])
    return found


def asha_config(project: Path) -> DictConfig:
    """The project's `search=asha` settings."""
    return OmegaConf.load(project / "configs" / "search" / "asha.yaml").search


def replay(search: DictConfig, history: list[list[float]], order: list[int], slots: int = 2) -> int:
    """Trial-epochs run when the trials start in `order`, `slots` at a time, under a new
    scheduler built from `search` (the asha config)."""
    epochs, metric = len(history[0]), search.metric
    scheduler = instantiate(
        search.scheduler, max_t=epochs, metric=metric, mode=search.mode, _convert_="all"
    )
    waiting, running, total = list(order), [], 0
    while waiting or running:
        while waiting and len(running) < slots:
            trial = SimpleNamespace(trial_id=str(waiting.pop(0)))
            scheduler.on_trial_add(None, trial)
            running.append([trial, 0])
        for entry in list(running):
            trial, done = entry
            entry[1] = done = done + 1
            total += 1
            result = {"training_iteration": done, metric: history[int(trial.trial_id)][done - 1]}
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                running.remove(entry)
            elif done == epochs:
                scheduler.on_trial_complete(None, trial, result)
                running.remove(entry)
    return total


def seeded_order(project: Path, count: int, seed: int) -> list[int]:
    """The order `search.shuffle_grid` runs `count` values in, from the project's own code."""
    package = next(p.name for p in (project / "src").iterdir() if (p / "tuning").is_dir())
    space = importlib.import_module(f"{package}.tuning.space")
    built = space.build([f"key={','.join(map(str, range(count)))}"], shuffle_grid=True, seed=seed)
    return list(built.domains["key"]["grid_search"])


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("sweeps", nargs="+", type=Path, help="basic multirun folders")
    arguments.add_argument("--project", type=Path, required=True, help="the generated project")
    arguments.add_argument("--metric", default="val_loss")
    arguments.add_argument("--orders", type=int, default=2000, help="random orders to replay")
    arguments.add_argument("--seed", type=int, default=42, help="the project's `seed`")
    args = arguments.parse_args()
    search = asha_config(args.project)
    for sweep in args.sweeps:
        history = curves(sweep, args.metric)
        count, epochs = len(history), len(history[0])
        rng = random.Random(0)
        totals = sorted(
            replay(search, history, rng.sample(range(count), count)) for _ in range(args.orders)
        )
        decile = len(totals) // 10
        print(
            f"{sweep}: {count} trials x {epochs} epochs = {count * epochs} without early stopping\n"
            f"  order given: {replay(search, history, list(range(count)))}; "
            f"seeded shuffle (seed {args.seed}): "
            f"{replay(search, history, seeded_order(args.project, count, args.seed))}\n"
            f"  {args.orders} random orders: mean {statistics.mean(totals):.1f}, median "
            f"{statistics.median(totals):.0f}, 10-90% {totals[decile]}-{totals[-decile - 1]}"
        )


if __name__ == "__main__":
    main()
