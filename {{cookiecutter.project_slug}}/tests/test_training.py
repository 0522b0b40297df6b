"""Real training under Ray Train on the shared CPU cluster: outputs, reproducibility, fail-fast."""

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from {{ cookiecutter.package_name }}.tasks import Classification
from {{ cookiecutter.package_name }}.training import cluster, train

from .conftest import compose_config, failure, run_python, run_train, tensorboard_hparams

pytestmark = pytest.mark.slow

# A few batches of synthetic rows: enough for runs whose point is not the model.
SMALL_DATA = ["data=synthetic", "data.source.num_samples=256"]


def test_train_py_writes_metrics_checkpoint_tensorboard_and_result(
    ray_address: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = run_train(
        "trainer.max_epochs=2",
        "checkpoint.every_n_epochs=1",
        "data.test_fraction=0.2",
        f"hydra.run.dir={run_dir}",
        # Nested runtime_env values must reach ray.init as plain dicts (Ray rejects DictConfigs).
        "+ray.runtime_env.env_vars.RESEARCH_RUN_MARK=e2e",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    # Messages that said nothing about the run (a one-worker run is not distributed; the
    # progress bars are off on purpose; a dataset's id and plan), from the driver and worker.
    console = proc.stdout + proc.stderr
    for notice in ("sync_dist=True", "LeafSpec", "Progress bars disabled", "Execution plan"):
        assert notice not in console, notice
    # What starts, one line per epoch, where the results are; Ray's notices in train.log only.
    assert [line.split(" | ")[0][-10:] for line in console.splitlines() if "epoch " in line] == [
        " epoch 1/2",
        " epoch 2/2",
    ]
    assert re.search(r"epoch 2/2 \| train_acc [\d.]+ train_loss [\d.]+ \| val_acc", console)
    assert f"tensorboard --logdir {run_dir}" in console
    assert not re.search(r"\bINFO \S+\.py:\d+ --", console), console[-3000:]
    assert "execution finished" in (run_dir / "train.log").read_text()

    result = json.loads((run_dir / "result.json").read_text())
    # what the metric settings may name
    assert sorted(result["metrics"]) == sorted(Classification.reported_metrics())
    assert result["metrics"]["epoch"] == 2  # epochs completed, as on the console
    assert 0.0 < result["metrics"]["val_acc"] <= 1.0
    assert result["storage_path"] == str(run_dir / "ray_train")
    best = Path(result["best_checkpoint"])
    assert (best / "checkpoint.ckpt").is_file()
    assert best.parent == run_dir / "ray_train"
    assert result["best_checkpoint_metrics"]["val_loss"] <= result["metrics"]["val_loss"] + 1e-9
    # The held-out rows, once, with the best checkpoint: in result.json and TensorBoard.
    assert sorted(result["test_metrics"]) == ["test_acc", "test_loss"]
    assert 0.0 < result["test_metrics"]["test_acc"] <= 1.0

    assert (run_dir / ".hydra" / "config.yaml").is_file()
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    val_loss = events.Scalars("val_loss")
    assert [event.step for event in val_loss] and len(val_loss) == 2
    # Epochs completed, counted alike on the console (above), in result.json, in the names of
    # the checkpoint folders and in TensorBoard's `epoch`.
    assert best.name == f"checkpoint_epoch_{result['best_checkpoint_metrics']['epoch']:04d}"
    assert sorted({event.value for event in events.Scalars("epoch")}) == [1.0, 2.0]
    # TensorBoard's HParams tab lists the run's settings beside its real metrics, and no
    # "hp_metric" placeholder.
    hyperparameters, metrics = tensorboard_hparams(run_dir / "tensorboard")
    assert hyperparameters["optimizer.lr"] == 1e-3
    assert hyperparameters["model._target_"].endswith("MLP")
    assert hyperparameters["trainer.max_epochs"] == 2
    assert hyperparameters["seed"] == 42
    assert {"val_acc", "val_loss", "epoch"} <= set(metrics)
    assert "hp_metric" not in events.Tags()["scalars"]
    assert "test_acc" in events.Tags()["scalars"]


def test_two_workers_train_on_disjoint_shards_and_keep_equal_weights(
    ray_address: str, tmp_path: Path
) -> None:
    # DDP through train.py on the default Ray Data path: RayDDPStrategy, prepare_trainer, each
    # worker a shard of every split. A test callback records each rank's rows and weights.
    run_dir, ranks = tmp_path / "run", tmp_path / "ranks"
    proc = run_train(
        "scaling.num_workers=2",
        "trainer.max_epochs=2",
        "+callbacks.ranks._target_=tests.rank_recorder.RankRecorder",
        f"+callbacks.ranks.folder={ranks}",
        f"hydra.run.dir={run_dir}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    records = [json.loads((ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["world_size"] for record in records] == [2, 2]
    for epoch in ("0", "1"):
        train = [set(record["train"][epoch]) for record in records]
        val = [set(record["val"][epoch]) for record in records]
        # Each row once per epoch (the digits hold no duplicates): the training split shared
        # out in two equal halves, the validation split too, apart from the training rows.
        # Ray's equal split leaves a split's odd row out: of the 1,797, at most two are unseen.
        assert [len(rows) for rows in train] == [len(r["train"][epoch]) for r in records]
        assert len(train[0]) == len(train[1]) and not train[0] & train[1]
        assert len(val[0]) == len(val[1]) and not val[0] & val[1]
        assert not (train[0] | train[1]) & (val[0] | val[1])
        assert 1797 - 2 <= 2 * (len(train[0]) + len(val[0])) <= 1797
        assert len(val[0]) * 2 >= 0.2 * 1797 - 2  # data.val_fraction=0.2
    assert set(records[0]["train"]["0"]) == set(records[0]["train"]["1"])  # the same shard
    # DDP kept the two copies of the network equal, and the run's checkpoint is that network.
    weights = [torch.load(ranks / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    # The results as a one-worker run has them.
    result = json.loads((run_dir / "result.json").read_text())
    assert result["metrics"]["epoch"] == 2 and 0.5 < result["metrics"]["val_acc"] <= 1.0
    # About 1,430 training rows in batches of 64: 12 steps an epoch on each of two workers.
    assert result["metrics"]["step"] == 2 * 12, result["metrics"]
    assert result["storage_path"] == str(run_dir / "ray_train")
    latest = Path(result["latest_checkpoint"])
    assert latest.parent == run_dir / "ray_train"
    saved = torch.load(latest / "checkpoint.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[name], weights[0][name]) for name in weights[0])
    val_loss = EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("val_loss")
    assert len(val_loss) == 2  # rank 0 logs, once an epoch


def test_relative_paths_mean_the_folder_train_py_runs_from(
    ray_address: str, tmp_path: Path
) -> None:
    # Relative to where train.py runs, not to the folder Ray runs its workers in.
    proc = run_train(
        "trainer.max_epochs=1",
        *SMALL_DATA,
        "paths.storage_path=storage",
        "hydra.run.dir=first",
        ray_address=ray_address,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure(proc)
    best = Path(json.loads((tmp_path / "first" / "result.json").read_text())["best_checkpoint"])
    assert best.parent == tmp_path / "storage" / "ray_train"
    shutil.copy(best / "checkpoint.ckpt", tmp_path / "last.ckpt")
    proc = run_train(
        "trainer.max_epochs=2",
        *SMALL_DATA,
        "resume_from=last.ckpt",
        "logger.tensorboard.save_dir=tensorboard",
        "hydra.run.dir=second",
        ray_address=ray_address,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure(proc)
    assert json.loads((tmp_path / "second" / "result.json").read_text())["metrics"]["epoch"] == 2
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert len(events.Scalars("val_loss")) == 1  # only the epoch left to train


def test_early_stopping_ends_the_run_and_checkpoints_its_last_epoch(
    ray_address: str, tmp_path: Path
) -> None:
    # No epoch improves val_loss by 10: the run stops after its first two (patience 1), long
    # before max_epochs and before checkpoint.every_n_epochs would have saved anything.
    proc = run_train(
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=10",
        "trainer.max_epochs=20",
        "checkpoint.every_n_epochs=5",
        *SMALL_DATA,
        f"hydra.run.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["epoch"] == 2
    assert result["best_checkpoint"] is not None
    # Lightning's own counter in its checkpoint file counts from 0.
    assert torch.load(Path(result["best_checkpoint"]) / "checkpoint.ckpt")["epoch"] == 1


def test_a_print_in_a_worker_shows_once(ray_address: str) -> None:
    # A driver as train.py sets it up (cluster.connect), around a worker that prints.
    script = textwrap.dedent(
        """
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer

        from {{ cookiecutter.package_name }}.training import cluster

        def loop(config):
            print("worker says hello")

        cluster.connect({})
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1)).fit()
        """
    )
    proc = run_python("-c", script, ray_address=ray_address, timeout=300)
    assert proc.returncode == 0, failure(proc)
    assert (proc.stdout + proc.stderr).count("worker says hello") == 1


def test_same_seed_same_metrics(ray_address: str, tmp_path: Path) -> None:
    def metrics(seed: int, name: str) -> dict:
        cfg = compose_config(
            f"seed={seed}",
            "trainer.max_epochs=1",
            "data=synthetic",
            "data.source.num_samples=512",
            output_dir=tmp_path / name,
        )
        return train(cfg)["metrics"]

    first, again, other = metrics(3, "a"), metrics(3, "b"), metrics(4, "c")
    assert first["val_loss"] == again["val_loss"]
    assert first["train_loss"] == again["train_loss"]
    assert first["val_loss"] != other["val_loss"]


def test_gpu_preset_on_cpu_cluster_fails_fast_with_clear_message(ray_address: str) -> None:
    cfg = compose_config("scaling=4gpu")
    with pytest.raises(
        cluster.ResourceError, match=r"scaling=4gpu asks for 4 GPUs .* this cluster has 0 GPUs"
    ):
        cluster.check_fits(cfg.scaling)


def test_train_py_gpu_preset_exits_with_message(ray_address: str, tmp_path: Path) -> None:
    proc = run_train(
        "scaling=4gpu", f"hydra.run.dir={tmp_path}", ray_address=ray_address, timeout=120
    )
    assert proc.returncode != 0
    assert "scaling=4gpu asks for 4 GPUs" in proc.stderr and "Traceback" not in proc.stderr


def test_train_py_refuses_a_model_that_cannot_take_the_data(
    ray_address: str, tmp_path: Path
) -> None:
    # The synthetic data are flat vectors; the CNN needs images. Refused by the driver, once.
    proc = run_train(
        "model=cnn", "data=synthetic", f"hydra.run.dir={tmp_path}", ray_address=ray_address
    )
    assert proc.returncode != 0
    assert "model=cnn needs image inputs shaped (channels, height, width)" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr  # no worker's either: none started
    assert "RayTrainWorker" not in proc.stdout + proc.stderr


def test_too_many_cpu_workers_fail_fast(ray_address: str) -> None:
    cfg = compose_config("scaling.num_workers=3")
    with pytest.raises(cluster.ResourceError, match=r"asks for 3 CPUs .* this cluster has 2 CPUs"):
        cluster.check_fits(cfg.scaling)
    cluster.check_fits(cfg.scaling, autoscaling=True)  # an autoscaling cluster may grow: no error


def test_strict_spread_needs_a_node_per_worker() -> None:
    cfg = compose_config(
        "scaling=cpu", "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD"
    )
    # One machine is one node: refused before Ray starts (check_fits_here), not left waiting.
    with pytest.raises(cluster.ResourceError, match=r"STRICT_SPREAD .* 1 node\(s\) of this"):
        cluster.check_fits(cfg.scaling, resources={"CPU": 4.0}, where="this machine")
    cfg.scaling.placement_strategy = "SPREAD"
    cluster.check_fits(cfg.scaling, resources={"CPU": 4.0}, where="this machine")
