"""The options of `configs/scheduler/` build the learning-rate schedules they describe."""

from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from {{ cookiecutter.package_name }}.config import validate
from {{ cookiecutter.package_name }}.training import schedulers

from .conftest import CONFIG_DIR

OPTIONS = sorted(path.stem for path in (CONFIG_DIR / "scheduler").glob("*.yaml"))
LR = 0.1


def factory(option: str, **overrides: Any) -> schedulers.SchedulerFactory:
    """The partial that `instantiate(cfg.scheduler)` gives for configs/scheduler/<option>.yaml."""
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "scheduler" / f"{option}.yaml"), overrides)
    return instantiate(cfg)


def optimizer(**kwargs: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, **kwargs)


def lr_of(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def run_steps(config: dict[str, Any], opt: torch.optim.Optimizer, steps: int) -> list[float]:
    """The lr before the first step and after each of `steps` steps, as Lightning steps it."""
    lrs = [lr_of(opt)]
    for _ in range(steps):
        opt.step()
        config["scheduler"].step()
        lrs.append(lr_of(opt))
    return lrs


def test_options_are_named_after_their_file() -> None:
    assert {"none", "cosine", "step", "plateau", "onecycle"} <= set(OPTIONS)
    for option in OPTIONS:
        cfg = OmegaConf.load(CONFIG_DIR / "scheduler" / f"{option}.yaml")
        assert cfg.name == option
        if option != "none":
            assert cfg._target_.endswith(f".training.schedulers.{option}")
            assert cfg._partial_ is True


def test_none_means_no_scheduler() -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "scheduler" / "none.yaml")
    assert "_target_" not in cfg
    assert schedulers.build(None, optimizer(), 100, 10) is None


@pytest.mark.parametrize("option", [o for o in OPTIONS if o != "none"])
def test_every_option_passes_config_validation(option: str) -> None:
    # The validator checks each key of a `_target_` node against the builder's parameters.
    node = OmegaConf.load(CONFIG_DIR / "scheduler" / f"{option}.yaml")
    validate(OmegaConf.create({"scheduler": node}))


def test_cosine_warms_up_to_the_lr_then_anneals_to_the_floor() -> None:
    opt = optimizer()
    total = 200
    config = schedulers.build(factory("cosine", min_lr_ratio=0.1), opt, total, max_epochs=4)
    assert config["interval"] == "step"
    lrs = run_steps(config, opt, total)
    warmup = int(0.05 * total)
    rising, falling = lrs[: warmup + 1], lrs[warmup:]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert lrs[0] < LR / 2
    assert max(lrs) == pytest.approx(LR) == lrs[warmup]
    assert all(a >= b for a, b in zip(falling, falling[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.1 * LR)


def test_cosine_without_warmup_starts_at_the_lr() -> None:
    opt = optimizer()
    config = schedulers.build(factory("cosine", warmup_fraction=0.0), opt, 50, max_epochs=5)
    lrs = run_steps(config, opt, 50)
    assert lrs[0] == pytest.approx(LR)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_multiplies_by_gamma_every_step_epochs() -> None:
    opt = optimizer()
    config = schedulers.build(factory("step", step_epochs=3, gamma=0.5), opt, 80, max_epochs=8)
    assert config["interval"] == "epoch"
    lrs = run_steps(config, opt, 7)  # one scheduler step per epoch
    expected = [LR] * 3 + [LR / 2] * 3 + [LR / 4] * 2
    assert lrs == pytest.approx(expected)


def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement() -> None:
    opt = optimizer()
    config = schedulers.build(factory("plateau", patience=2, factor=0.5), opt, 100, max_epochs=10)
    assert config["monitor"] == "val_loss"
    assert config["interval"] == "epoch"
    scheduler = config["scheduler"]
    for val_loss in [1.0, 0.9, 0.8]:  # improving: no change
        scheduler.step(val_loss)
    assert lr_of(opt) == pytest.approx(LR)
    for _ in range(2):  # `patience` epochs without improvement are tolerated
        scheduler.step(0.8)
    assert lr_of(opt) == pytest.approx(LR)
    scheduler.step(0.8)
    assert lr_of(opt) == pytest.approx(LR / 2)


def test_onecycle_peaks_at_the_configured_lr() -> None:
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=LR, betas=(0.8, 0.99))
    total = 100
    config = schedulers.build(factory("onecycle"), opt, total, max_epochs=5)
    assert config["interval"] == "step"
    lrs = run_steps(config, opt, total - 1)  # OneCycleLR allows exactly total_steps lrs
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(LR)
    assert peak == pytest.approx(0.3 * total, abs=1)
    assert lrs[0] < LR / 10 and lrs[-1] < lrs[0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)  # cycle_momentum is off


@pytest.mark.parametrize(
    "option,key,value",
    [
        ("cosine", "warmup_fraction", 1.5),
        ("cosine", "warmup_fraction", "lots"),
        ("cosine", "min_lr_ratio", -0.1),
        ("step", "step_epochs", 0),
        ("step", "gamma", 0.0),
        ("plateau", "mode", "lowest"),
        ("plateau", "patience", -1),
        ("plateau", "factor", 1.0),
        ("onecycle", "pct_start", 0.0),
    ],
)
def test_bad_values_name_their_key(option: str, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"scheduler\.{key} must be .*, got {value!r}"):
        schedulers.build(factory(option, **{key: value}), optimizer(), 100, 10)


def test_per_step_schedules_need_a_known_run_length() -> None:
    # Lightning's estimated_stepping_batches is inf for a streamed dataset of unknown length.
    with pytest.raises(ValueError, match="scheduler=cosine needs the run's number of steps"):
        schedulers.build(factory("cosine"), optimizer(), float("inf"), 10)
    assert schedulers.build(factory("step"), optimizer(), float("inf"), 10) is not None


class TinyModule(L.LightningModule):
    """A linear classifier whose optimizer gets the scheduler the way the project's model does."""

    def __init__(self, scheduler: schedulers.SchedulerFactory) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.scheduler = scheduler

    def _loss(self, batch: Any) -> torch.Tensor:
        inputs, labels = batch
        return torch.nn.functional.cross_entropy(self.layer(inputs), labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", 1.0)  # never improves

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=LR)
        config = schedulers.build(
            self.scheduler, opt, self.trainer.estimated_stepping_batches, self.trainer.max_epochs
        )
        return {"optimizer": opt, "lr_scheduler": config}


# Each lowers the lr within 2 epochs of 8 steps.
FIT = {
    "cosine": {},
    "step": {"step_epochs": 1},
    "plateau": {"patience": 0},
    "onecycle": {},
}


@pytest.mark.parametrize("option", sorted(FIT))
def test_lightning_fit_steps_the_schedule(option: str) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        TinyModule(factory(option, **FIT[option])),
        DataLoader(data, batch_size=8),
        DataLoader(data, batch_size=32),
    )
    assert trainer.global_step == 16
    final = trainer.optimizers[0].param_groups[0]["lr"]
    assert final < LR
    if option == "cosine":
        assert final == pytest.approx(0.0, abs=1e-12)  # annealed to min_lr_ratio * lr
