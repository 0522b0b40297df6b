"""1. Steady-state training throughput: the project's `python train.py` against plain Lightning
and a raw PyTorch loop, same model, data, batching, checkpoint cadence and torch threads.

The project runs twice: with its default on CPU, `scaling=local` (Ray Train's local mode, the
loop in train.py's own process), and with `scaling=cpu` (one Ray Train worker, the default
before; and once more with Ray Train's 2 s report polling, as before that default). The plain
Lightning script batches like the project's worker (whole batches sliced from tensors in memory)
and checkpoints at the project's cadence (every 5th epoch and the last; baselines/common.py,
baselines/callbacks.py). Every run prints its torch thread count, and each project arm is
compared with plain Lightning at the same count (torch's default in one process; one thread
in a worker that Ray gives one CPU): plain Lightning runs once per count the project arms used.

Throughput is samples per second between the end of the warm-up epochs and the end of the last
epoch, each epoch including its validation pass, metric report and any checkpoint. For Lightning
runs (the project's and the plain script's) the epoch ends are the wall times of the per-epoch
`train_loss` events in TensorBoard; the raw loop prints its own.
"""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .baselines.common import load_config
from .harness import Context, median, ratio, run_timed, torch_threads

# Ray Train's own default: its controller collects worker reports every 2 s.
RAY_DEFAULT_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"}

# The project's arms: name -> (overrides, extra environment). `project` is the CPU default.
PROJECT_ARMS = {
    "project": (["scaling=local"], {}),
    "project_workers": (["scaling=cpu"], {}),
    "project_ray_default_poll": (["scaling=cpu"], RAY_DEFAULT_POLL),
}


def epoch_ends_from_tensorboard(logdir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return sorted((event.step, event.wall_time) for event in events.Scalars("train_loss"))


def throughput(ends: list[tuple[int, float]], warmup: int, batch_size: int) -> float:
    (first_step, first_time), (last_step, last_time) = ends[warmup - 1], ends[-1]
    return (last_step - first_step) * batch_size / (last_time - first_time)


def plain_name(threads: int) -> str:
    """The plain Lightning arm at `threads` torch threads."""
    return f"plain_lightning_{threads}_threads"


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
    arms = dict(PROJECT_ARMS)
    if not all_variants:
        del arms["project_ray_default_poll"]
    tag = "long_" if not all_variants else ""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    threads: dict[str, list[int]] = {name: [] for name in arms}
    base = ctx.work / "training"

    def check(name: str, ends: list[tuple[int, float]], counts: list[int]) -> None:
        if len(ends) != epochs:
            raise RuntimeError(f"{name}: {len(ends)} epoch ends for {epochs} epochs")
        if len(counts) != 1:
            raise RuntimeError(f"{name}: {len(counts)} torch thread counts printed, not 1")

    for repeat in range(ctx.repeats):
        for name, (extra, extra_env) in arms.items():
            folder = base / f"{tag}{name}_{repeat}"
            timed = run_timed(
                ctx.train_py(*extra, *overrides, f"hydra.run.dir={folder}"),
                ctx,
                env=ctx.env(**extra_env),
            )
            ends = epoch_ends_from_tensorboard(folder / "tensorboard")
            check(name, ends, torch_threads(timed))
            samples[name].append(throughput(ends, warmup, batch_size))
            threads[name].append(torch_threads(timed)[0])
            if name == "project" and all_variants:
                ctx.shared["run_dir"] = str(folder)
        # Plain Lightning at each thread count the project's arms trained with in this repeat.
        for count in sorted({threads[name][-1] for name in arms}):
            name = plain_name(count)
            folder = base / f"{tag}{name}_{repeat}"
            timed = run_timed(
                ctx.baseline("plain_lightning", "--logdir", str(folder), "--threads", str(count))
                + overrides,
                ctx,
            )
            ends = epoch_ends_from_tensorboard(folder)
            check(name, ends, torch_threads(timed))
            samples.setdefault(name, []).append(throughput(ends, warmup, batch_size))
            threads.setdefault(name, []).append(torch_threads(timed)[0])
        if all_variants:  # at the default project's thread count
            count = threads["project"][-1]
            timed = run_timed(ctx.baseline("raw_torch", "--threads", str(count)) + overrides, ctx)
            ends = [(int(v[1]), t) for event, t, v in timed.bench if event == "epoch_end"]
            check("raw_torch", ends, torch_threads(timed))
            samples.setdefault("raw_torch", []).append(throughput(ends, warmup, batch_size))
            threads.setdefault("raw_torch", []).append(torch_threads(timed)[0])
    medians = {name: median(values) for name, values in samples.items()}
    # Each project arm against plain Lightning at the thread count it trained with (the
    # median's, should the count differ between repeats); the raw loop against the default's.
    baseline_for = {name: plain_name(round(median(threads[name]))) for name in arms}
    if "raw_torch" in samples:
        baseline_for["raw_torch"] = baseline_for["project"]
    vs_plain = {
        name: ratio(medians[name], medians.get(plain)) for name, plain in baseline_for.items()
    }
    project_ratio = vs_plain["project"]
    return {
        "epochs": epochs,
        "warmup_epochs": warmup,
        "batch_size": batch_size,
        "samples_per_s": samples,
        "median_samples_per_s": medians,
        "torch_threads": threads,
        "baseline_for": baseline_for,
        "ratio_vs_plain_lightning": vs_plain,
        "goal": "project (scaling=local) >= 0.9x plain Lightning at the same torch threads",
        "goal_met": (project_ratio or 0) >= 0.9,
    }
