"""Baseline: the least a run under Ray Train costs, with none of the project's work in it.

A TorchTrainer with one worker whose function reports once and returns: no data, no model, no
checkpoint. The cluster is started (or joined) by the project's own `cluster.connect`, so Ray's
settings are the project's. `--import-lightning` makes the worker import Lightning first, as the
project's worker must. Benchmark 2 runs it beside `train.py`: the project's wall time minus this
is what the project itself adds to a run; this against plain Lightning is Ray Train's own share.
"""

from .common import mark

mark("start")

import importlib  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from .common import parser  # noqa: E402


def report_once(config: dict) -> None:
    import ray.train

    if config["import_lightning"]:
        import lightning  # noqa: F401

    ray.train.report({"epoch": 1})


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--logdir", required=True)
    arguments.add_argument("--import-lightning", action="store_true")
    args = arguments.parse_args()
    cluster = importlib.import_module(f"{args.package}.training.cluster")
    mark("imports_done")
    cluster.connect(OmegaConf.create({}))
    mark("ray_started")
    TorchTrainer(
        report_once,
        train_loop_config={"import_lightning": args.import_lightning},
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="floor", storage_path=args.logdir),
    ).fit()
    mark("fit_done")  # fit() raises if the worker failed


if __name__ == "__main__":
    main()
