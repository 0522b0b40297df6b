"""Baseline: the project's LightningModule trained by a plain Lightning script, no Ray.

What a researcher would write by hand, made like the project's run where it is not machinery:
the same Trainer settings (configs/trainer), a TensorBoard logger, the same in-memory batching
(`common.MemoryBatches`: whole batches sliced from tensors, as the project's worker does) and
checkpoints at the project's cadence and keep policy (configs/checkpoint: every 5th epoch and
the last, the best 2 kept; `callbacks.ProjectCadenceCheckpoint`) instead of Lightning's default
of one every epoch. Torch threads: torch's default unless --threads. Prints `BENCH` timing lines
(and the thread count) and leaves TensorBoard events in --logdir, read the same way as the
project's. `fit` is also the job of the Hydra multirun baseline (plain_lightning_sweep.py).
"""

from .common import mark

mark("start")

import importlib  # noqa: E402
import os  # noqa: E402

import lightning as L  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from .callbacks import EpochMarks, ProjectCadenceCheckpoint, TorchThreads  # noqa: E402
from .common import build_module, load_data, parser, setup  # noqa: E402


def fit(cfg: DictConfig, package: str, logdir: str, checkpoints: str) -> dict[str, float]:
    """Train as the project's run of `cfg` would, without Ray; the last epoch's metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_data(package, cfg)
    train, val = data.batches(cfg.data.batch_size, cfg.seed)
    model = build_module(package, cfg, data)
    policy = cfg.checkpoint
    trainer = L.Trainer(
        **cfg.trainer,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(save_dir=logdir, name="", version="", default_hp_metric=False),
        enable_checkpointing=False,
        callbacks=[
            TorchThreads(),
            EpochMarks(),
            ProjectCadenceCheckpoint(
                checkpoints, policy.every_n_epochs, policy.num_to_keep, policy.metric, policy.mode
            ),
        ],
    )
    mark("data_ready")
    trainer.fit(model, train, val)
    return {name: value.item() for name, value in trainer.callback_metrics.items()}


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--logdir", required=True)
    args = arguments.parse_args()
    cfg = setup(args)
    importlib.import_module(f"{args.package}.tasks.module")  # the project's Lightning imports
    mark("imports_done")
    metrics = fit(cfg, args.package, args.logdir, os.path.join(args.logdir, "checkpoints"))
    mark("fit_done", metrics.get("val_acc"))


if __name__ == "__main__":
    main()
