"""Baseline: the project's LightningModule trained by a plain Lightning script, no Ray.

What a researcher would write by hand: a Trainer with Lightning's defaults (a TensorBoard logger,
a ModelCheckpoint of the last epoch) on in-memory DataLoaders. Prints `BENCH` timing lines and
leaves TensorBoard events in --logdir, read the same way as the project's.
"""

from .common import mark

mark("start")

import importlib  # noqa: E402

import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from .common import build_network, load_data, parser, setup  # noqa: E402


class EpochMarks(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mark("epoch_end", trainer.current_epoch, trainer.global_step)


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--logdir", required=True)
    args = arguments.parse_args()
    cfg = setup(args)
    models = importlib.import_module(f"{args.package}.models")
    mark("imports_done")
    L.seed_everything(cfg.seed, verbose=False)
    data = load_data(args.package, cfg)
    batch_size = cfg.data.batch_size
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True)
    val = DataLoader(data.val, batch_size=batch_size)
    model = models.Classifier(net=build_network(cfg, data), optimizer=instantiate(cfg.optimizer))
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(save_dir=args.logdir, name="", version=""),
        callbacks=[EpochMarks()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    mark("data_ready")
    trainer.fit(model, train, val)
    mark("fit_done", trainer.callback_metrics["val_acc"].item())


if __name__ == "__main__":
    main()
