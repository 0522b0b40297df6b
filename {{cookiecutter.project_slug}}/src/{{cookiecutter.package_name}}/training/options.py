"""The Lightning Trainer's options that the project sets from its own settings.

`trainer` (configs/trainer/) holds the Trainer's keyword arguments a run may choose; those the
project owns (devices, strategy, logger, ...) are refused there by config/validation.py, which
names the setting that owns each (TRAINER_OWNERS). This module builds what the Trainer gets:
- `trainer_options`: `trainer` as keyword arguments, a profiler named by a word (`simple`,
  `advanced`, `pytorch`) built to write its report into the run's folder;
- `distribution`: devices, strategy and plugins for the worker group (`scaling.strategy`).
"""

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

PROFILERS = {
    "simple": "lightning.pytorch.profilers.SimpleProfiler",
    "advanced": "lightning.pytorch.profilers.AdvancedProfiler",
    "pytorch": "lightning.pytorch.profilers.PyTorchProfiler",
}
PROFILE_FILE = "profile"  # the report: <run dir>/fit-profile.txt (pytorch: its traces beside it)

# scaling.strategy: Ray's Lightning strategies, for a worker group.
STRATEGIES = {
    "ddp": "ray.train.lightning.RayDDPStrategy",
    "fsdp": "ray.train.lightning.RayFSDPStrategy",
    "deepspeed": "ray.train.lightning.RayDeepSpeedStrategy",
}
GPU_STRATEGIES = ("fsdp", "deepspeed")


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """`cfg.trainer` as the Trainer's keyword arguments."""
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    profiler = options.get("profiler")
    if isinstance(profiler, str) and profiler in PROFILERS:
        options["profiler"] = {
            "_target_": PROFILERS[profiler],
            "dirpath": cfg.paths.output_dir,
            "filename": PROFILE_FILE,
        }
    return instantiate(options, _convert_="all")  # a `_target_` (profiler) becomes its object


def distribution(scaling: DictConfig, world_size: int) -> dict[str, Any]:
    """Lightning's devices, strategy and plugins for a worker group of `world_size`.

    Several workers train with `scaling.strategy` (DDP by default) in Ray's process group. A
    single worker with DDP trains as a plain one-device run: DDP around one process only adds
    work to every step (about a tenth of the digits' epoch time on 2 cores). FSDP and DeepSpeed
    keep their strategy even for one worker (DeepSpeed's offloading works on one GPU).
    """
    from ray.train.lightning import RayLightningEnvironment  # noqa: PLC0415

    strategy = scaling.get("strategy") or "ddp"
    if world_size == 1 and strategy == "ddp":
        return {"devices": 1}
    given = scaling.get("strategy_options")
    options = OmegaConf.to_container(given, resolve=True) if given else {}
    return {
        "devices": "auto",
        "strategy": instantiate({"_target_": STRATEGIES[strategy], **options}),
        "plugins": [RayLightningEnvironment()],
    }
