"""1. Steady-state training throughput: the project under Ray Train against plain Lightning and a
raw PyTorch loop, same model, data, batch size and one torch thread each.

Throughput is samples per second between the end of the warm-up epochs and the end of the last
epoch, each epoch including its validation pass, metric report and any checkpoint. For Lightning
runs (the project's and the plain script's) the epoch ends are the wall times of the per-epoch
`train_loss` events in TensorBoard; the raw loop prints its own.
"""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .baselines.common import load_config
from .harness import Context, median, ratio, run_timed

# Ray Train's own default: its controller collects worker reports every 2 s.
RAY_DEFAULT_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"}


def epoch_ends_from_tensorboard(logdir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return sorted((event.step, event.wall_time) for event in events.Scalars("train_loss"))


def throughput(ends: list[tuple[int, float]], warmup: int, batch_size: int) -> float:
    (first_step, first_time), (last_step, last_time) = ends[warmup - 1], ends[-1]
    return (last_step - first_step) * batch_size / (last_time - first_time)


# Long epochs: 32,768 synthetic rows (about 1.4 s an epoch in plain Lightning on 2 cores), where
# per-sample costs decide, against the digits' sub-0.1 s epochs, where per-epoch costs do.
LONG_EPOCHS = ["data=synthetic", "data.source.num_samples=32768"]


def run(ctx: Context) -> dict:
    epochs, warmup = (5, 1) if ctx.quick else (12, 2)
    result = measure(ctx, [f"trainer.max_epochs={epochs}"], epochs, warmup, all_variants=True)
    long_epochs = 3 if ctx.quick else 5
    result["long_epochs"] = measure(
        ctx, [f"trainer.max_epochs={long_epochs}", *LONG_EPOCHS], long_epochs, 1, False
    )
    result["long_epochs"]["data"] = " ".join(LONG_EPOCHS)
    return result


def measure(
    ctx: Context, overrides: list[str], epochs: int, warmup: int, all_variants: bool
) -> dict:
    batch_size = int(load_config(str(ctx.project), overrides).data.batch_size)
    variants = {"project": None, "plain_lightning": None}
    if all_variants:
        variants.update(project_ray_default_poll=RAY_DEFAULT_POLL, raw_torch=None)
    tag = "long_" if not all_variants else ""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    base = ctx.work / "training"
    for repeat in range(ctx.repeats):
        for name, extra_env in variants.items():
            folder = base / f"{tag}{name}_{repeat}"
            if name.startswith("project"):
                run_timed(
                    ctx.train_py(*overrides, f"hydra.run.dir={folder}"),
                    ctx,
                    env=ctx.env(**(extra_env or {})),
                )
                ends = epoch_ends_from_tensorboard(folder / "tensorboard")
                if name == "project" and all_variants:
                    ctx.shared["run_dir"] = str(folder)
            elif name == "plain_lightning":
                run_timed(ctx.baseline(name, "--logdir", str(folder), *overrides), ctx)
                ends = epoch_ends_from_tensorboard(folder)
            else:
                timed = run_timed(ctx.baseline(name, *overrides), ctx)
                ends = [(int(v[1]), t) for event, t, v in timed.bench if event == "epoch_end"]
            if len(ends) != epochs:
                raise RuntimeError(f"{name}: {len(ends)} epoch ends for {epochs} epochs")
            samples[name].append(throughput(ends, warmup, batch_size))
    medians = {name: median(values) for name, values in samples.items()}
    return {
        "epochs": epochs,
        "warmup_epochs": warmup,
        "batch_size": batch_size,
        "samples_per_s": samples,
        "median_samples_per_s": medians,
        "ratio_vs_plain_lightning": {
            name: ratio(medians[name], medians["plain_lightning"]) for name in variants
        },
        "goal": "project >= 0.9x plain Lightning",
        "goal_met": (ratio(medians["project"], medians["plain_lightning"]) or 0) >= 0.9,
    }
