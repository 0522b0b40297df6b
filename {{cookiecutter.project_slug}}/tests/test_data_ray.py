"""Ray Data under Ray Train: worker shards, training on a parquet file, batch prediction."""

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from {{ cookiecutter.package_name }}.checkpoints import PROJECT_KEY
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.data import DigitsSource, prepare
from {{ cookiecutter.package_name }}.data.loader import ShardBatches
from {{ cookiecutter.package_name }}.data.preprocessing import inputs_from_state
from {{ cookiecutter.package_name }}.tasks import Classification
from {{ cookiecutter.package_name }}.training.worker import build_module

from .conftest import compose_config, failure, run_train

pytestmark = pytest.mark.slow


def test_two_workers_see_disjoint_shards_that_cover_the_split(
    ray_address: str, tmp_path: Path
) -> None:
    path = tmp_path / "rows.parquet"
    rows = 301  # odd sizes leave a remainder that the equal split must drop, not duplicate
    ids = np.arange(rows, dtype=np.float64)
    pd.DataFrame({"id": ids, "x": ids % 7, "label": ids.astype(int) % 3}).to_parquet(path)
    cfg = compose_config("data=parquet", f"data.source.path={path}", "data.preprocess=none")
    data = prepare(cfg.data, cfg.task)
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()

    def loop(config: dict) -> None:
        context = ray.train.get_context()
        rank = context.get_world_rank()
        batches = ShardBatches(
            "train",
            16,
            shuffle_buffer=64,
            seed=0,
            num_rows=config["rows"],
            cache=True,
            world_size=context.get_world_size(),
        )
        for epoch in range(2):
            # As Lightning reads: len(batches) batches, leaving the iterator unexhausted.
            expected = len(batches)
            seen = [batch for batch, _ in itertools.islice(batches, expected)]
            record = {
                "ids": torch.cat(seen)[:, 0].tolist(),
                "batches": len(seen),
                "len": expected,
                "cached": batches.cached is not None,
            }
            (Path(config["out"]) / f"{rank}-{epoch}.json").write_text(json.dumps(record))

    TorchTrainer(
        loop,
        train_loop_config={"rows": data.train_rows, "out": str(seen_dir)},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="shards", storage_path=str(tmp_path / "ray")),
        datasets={"train": data.train, "val": data.val},
    ).fit()

    train_ids = set(data.train.take_batch(rows, batch_format="numpy")["features"][:, 0].tolist())
    for epoch in range(2):
        records = [json.loads((seen_dir / f"{r}-{epoch}.json").read_text()) for r in (0, 1)]
        shards = [set(record["ids"]) for record in records]
        assert all(len(s) == len(record["ids"]) for s, record in zip(shards, records, strict=True))
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] <= train_ids
        assert [len(s) for s in shards] == [data.train_rows // 2] * 2
        assert all(record["batches"] == record["len"] for record in records)
        assert all(record["cached"] for record in records)
        if epoch == 1:  # the second epoch comes from memory: the same rows, reshuffled
            first = [json.loads((seen_dir / f"{r}-0.json").read_text())["ids"] for r in (0, 1)]
            assert [set(ids) for ids in first] == shards
            assert [record["ids"] for record in records] != first


@pytest.fixture(scope="module")
def parquet_run(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `python train.py` run on a parquet file of the digits, CNN, one epoch."""
    folder = tmp_path_factory.mktemp("parquet_run")
    DigitsSource().frame().to_parquet(folder / "digits.parquet")
    proc = run_train(
        "data=parquet",
        f"data.source.path={folder / 'digits.parquet'}",
        "data.source.input_shape=[1,8,8]",
        "model=cnn",
        "model.channels=8",
        "trainer.max_epochs=1",
        f"hydra.run.dir={folder / 'run'}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    return folder / "run"


def best_checkpoint(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    path = Path(result["best_checkpoint"]) / "checkpoint.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_on_parquet_stores_its_preprocessing(parquet_run: Path) -> None:
    result = json.loads((parquet_run / "result.json").read_text())
    assert 0.0 < result["metrics"]["val_acc"] <= 1.0
    project = best_checkpoint(parquet_run)[PROJECT_KEY]
    assert project["kind"] == "network" and project["model"]["_target_"].endswith("CNN")
    assert project["input_shape"] == [1, 8, 8] and project["num_outputs"] == 10
    assert project["task"] == Classification(10).state()
    state = project["inputs"]
    assert state["kind"] == "table"
    assert state["feature_columns"] == [f"pixel_{i}" for i in range(64)]
    assert state["input_shape"] == [1, 8, 8]
    assert state["label_column"] == "label"
    assert len(state["mean"]) == len(state["std"]) == 64


def test_batch_prediction_equals_the_model_in_memory(
    parquet_run: Path, ray_address: str, tmp_path: Path
) -> None:
    rows = DigitsSource().frame().iloc[:300]
    to_score = rows.assign(id=[f"row-{i}" for i in range(len(rows))])
    to_score.to_parquet(tmp_path / "to_score.parquet")
    proc = run_train(
        "predict=batch",
        f"predict.checkpoint={parquet_run}",
        "data=parquet",
        f"data.source.path={tmp_path / 'to_score.parquet'}",
        f"hydra.run.dir={tmp_path / 'scoring'}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    console = proc.stdout + proc.stderr
    # Ray Data's check for free CPUs, made again once the job is done, is not printed; nor is
    # an error-level line of Ray's on a run that succeeded (the scoring actors' restarts), nor
    # Ray's notices at INFO.
    assert "will hang" not in console
    assert "constructor arguments in the object store" not in console
    assert not re.search(r"\bINFO \S+\.py:\d+ --", console), console[-3000:]
    assert "Predictions written to" in console
    scored = pd.read_parquet(tmp_path / "scoring" / "predictions").set_index("id").loc[to_score.id]
    assert sorted(scored.columns) == ["label", "prediction", "probabilities"]

    checkpoint = best_checkpoint(parquet_run)
    cfg = compose_config("model=cnn", "model.channels=8")
    model, _ = build_module(cfg, Classification(10), (1, 8, 8))
    model.load_state_dict(checkpoint["state_dict"])
    features = rows.drop(columns="label").to_numpy()
    transform = inputs_from_state(checkpoint[PROJECT_KEY]["inputs"])
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(transform(features)))
    assert np.array_equal(scored["prediction"].to_numpy(), logits.argmax(dim=1).numpy())
    probabilities = np.stack(scored["probabilities"].to_numpy())
    assert np.allclose(probabilities, torch.softmax(logits, dim=1).numpy(), atol=1e-6)
    assert np.array_equal(scored["label"].to_numpy(), rows["label"].to_numpy())


def test_prediction_refuses_a_folder_that_already_holds_predictions(
    parquet_run: Path, tmp_path: Path
) -> None:
    from {{ cookiecutter.package_name }}.data.prediction import predict

    (tmp_path / "old.parquet").write_text("")
    cfg = compose_config(
        "predict=batch", f"predict.checkpoint={parquet_run}", f"predict.output={tmp_path}"
    )
    with pytest.raises(ConfigError, match="already holds files"):
        predict(cfg)
