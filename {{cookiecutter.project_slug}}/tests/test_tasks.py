"""Every shipped task end to end, and models and data of your own, on the shared CPU cluster.

- regression on a table (data=diabetes): an ASHA sweep ranked by a regression metric, then its
  best trial served and batch-predicted;
- image classification from files (data=digit_images model=cnn): a sweep, then its best trial
  serving image uploads and arrays and batch-predicting a folder;
- a LightningModule of your own (model=lit_mlp): a PBT sweep handing its checkpoints over, batch
  prediction of a trial (the ASHA sweeps above run the same trials, whatever the model), and with
  a LightningDataModule (data=digits_datamodule) on 2 workers, resumed.
Classification of feature rows (the default) is what the other test files run.
"""

import csv
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from ray import serve

from {{ cookiecutter.package_name }}.checkpoints import load

from .conftest import failure, run_train
from .test_api_contract import Served
from .test_serving import ServeCommand

pytestmark = pytest.mark.slow


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def batch_predict(ray_address: str, run_dir: Path, output: Path, *data: str) -> pd.DataFrame:
    proc = run_train(
        "predict=batch",
        f"predict.checkpoint={run_dir}",
        f"predict.output={output}",
        f"hydra.run.dir={output.parent / 'predict_run'}",
        *data,
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    return pd.read_parquet(output)


def sweep_best(ray_address: str, sweep_dir: Path, *overrides: str) -> Path:
    """Run `python train.py -m search=asha <overrides>` over a good and a hopeless learning
    rate, check that the good one wins, and return its folder."""
    proc = run_train(
        "-m", "search=asha", *overrides, f"hydra.sweep.dir={sweep_dir}", ray_address=ray_address
    )
    assert proc.returncode == 0, failure(proc)
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert len(trials(sweep_dir)) == 2
    assert best["best_params"]["optimizer.lr"] == 0.003, best
    # The command it prints to serve the best trial is the one serve_run runs.
    serving = f"python train.py serve=local serve.only=true ckpt_path={best['best_output_dir']}"
    assert serving in proc.stdout + proc.stderr
    return Path(best["best_output_dir"])


def serve_run(ray_address: str, run_dir: Path, serve_dir: Path) -> ServeCommand:
    """`python train.py serve=local serve.only=true ckpt_path=<run_dir>`, once it answers."""
    command = ServeCommand(
        "serve=local",
        "serve.only=true",
        f"ckpt_path={run_dir}",
        run_dir=serve_dir,
        ray_address=ray_address,
    )
    command.wait_until_healthy()
    return command


@pytest.fixture
def stop_serve():
    """Leave the shared cluster without Serve replicas holding CPUs, whatever happens."""
    yield
    serve.shutdown()


def test_regression_sweeps_then_its_best_trial_serves_and_predicts_values(
    ray_address: str, tmp_path: Path, stop_serve: None
) -> None:
    # Trials ranked by a metric only regression reports, in the target's units.
    run_dir = sweep_best(
        ray_address,
        tmp_path / "sweep",
        "data=diabetes",
        "trainer.max_epochs=15",
        "search.metric=val_mae",
        "optimizer.lr=0.003,1e-6",
    )
    ranked_by = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert ranked_by["metric"] == "val_mae" and 25 < ranked_by["best_value"] < 60
    command = serve_run(ray_address, run_dir, tmp_path / "serve")
    try:
        metrics = result(run_dir)["metrics"]
        # Metrics in the target's units (25-346): a model that learned something.
        assert {"val_mae", "val_rmse", "val_r2", "train_r2"} <= set(metrics)
        assert "val_acc" not in metrics
        assert metrics["val_r2"] > 0.3 and metrics["val_mae"] < 60, metrics

        metadata = httpx.get(f"{command.url}/metadata", timeout=10).json()
        assert metadata["task"] == {"task": "regression", "target": "target"}
        assert metadata["inputs"]["kind"] == "table" and metadata["inputs"]["shape"] == [10]
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(as_frame=True).frame
        rows = frame.drop(columns="target").to_numpy()[:8]
        body = httpx.post(f"{command.url}/predict", json={"inputs": rows.tolist()}, timeout=30)
        assert body.status_code == 200, body.text
        predicted = body.json()
        assert "probabilities" not in predicted
        model = load(run_dir)
        inputs = torch.from_numpy(model.transform(rows))
        expected = model.predict(inputs)["prediction"].numpy()
        assert np.allclose(predicted["predictions"], expected, rtol=1e-5)
        assert 25 < np.mean(predicted["predictions"]) < 346  # values, not standardised scores
    finally:
        assert command.stop() == 0, command.log[-3000:]

    scored = batch_predict(ray_address, run_dir, tmp_path / "scores", "data=diabetes")
    assert len(scored) == 442 and sorted(scored.columns) == ["prediction", "target"]
    assert scored["prediction"].dtype == np.float32
    residual = scored["prediction"] - scored["target"]
    r2 = 1 - (residual**2).sum() / ((scored["target"] - scored["target"].mean()) ** 2).sum()
    assert r2 > 0.3


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_from_folders_sweep_serve_uploads_and_predict_a_folder(
    ray_address: str, tmp_path: Path, stop_serve: None
) -> None:
    images = tmp_path / "digit_images"  # written on first use, one subfolder per class
    run_dir = sweep_best(
        ray_address,
        tmp_path / "sweep",
        "data=digit_images",
        f"data.source.path={images}",
        "model=cnn",
        "trainer.max_epochs=3",
        "optimizer.lr=0.003,1e-6",
    )
    command = serve_run(ray_address, run_dir, tmp_path / "serve")
    try:
        assert sorted(path.name for path in images.iterdir()) == [str(d) for d in range(10)]
        assert result(run_dir)["metrics"]["val_acc"] > 0.8
        metadata = httpx.get(f"{command.url}/metadata", timeout=10).json()
        assert metadata["inputs"]["kind"] == "image"
        assert metadata["inputs"]["shape"] == [8, 8, 1] and metadata["input_shape"] == [1, 8, 8]

        # The same image as an upload (any size: resized) and as an array of its pixels.
        file = sorted((images / "3").iterdir())[0]
        pixels = np.asarray(Image.open(file))
        upload = httpx.post(
            f"{command.url}/predict/image",
            content=file.read_bytes(),
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert upload.status_code == 200, upload.text
        as_array = httpx.post(
            f"{command.url}/predict", json={"inputs": [pixels.tolist()]}, timeout=30
        ).json()
        assert as_array["predictions"] == upload.json()["predictions"]
        assert np.allclose(as_array["probabilities"], upload.json()["probabilities"], atol=1e-6)
        large = np.kron(pixels, np.ones((4, 4), dtype=np.uint8))  # 32x32, resized to 8x8
        resized = httpx.post(
            f"{command.url}/predict/image", content=png_bytes(large), timeout=30
        ).json()
        assert len(resized["probabilities"][0]) == 10

        # Wrong kinds of input get a 4xx with a message, and the server keeps serving.
        bad = {
            "corrupt": (file.read_bytes()[:40], 422),
            "not an image": (b"label,pixel\n1,2\n", 422),
        }
        for name, (content, status) in bad.items():
            answer = httpx.post(f"{command.url}/predict/image", content=content, timeout=30)
            assert answer.status_code == status, (name, answer.text)
            assert answer.json()["detail"], name
        row = httpx.post(f"{command.url}/predict", json={"inputs": [[0.5] * 10]}, timeout=30)
        assert row.status_code == 422 and "64" in row.json()["detail"]
        assert httpx.get(f"{command.url}/health", timeout=10).status_code == 200
    finally:
        assert command.stop() == 0, command.log[-3000:]

    # Any folder of images, with or without class subfolders.
    loose = tmp_path / "to_score"
    loose.mkdir()
    for digit in (1, 7):
        source = sorted((images / str(digit)).iterdir())[0]
        (loose / f"digit_{digit}.png").write_bytes(source.read_bytes())
    scored = batch_predict(
        ray_address, run_dir, tmp_path / "scores", "data=images", f"data.source.path={loose}"
    )
    assert sorted(scored.columns) == ["path", "prediction", "probabilities"]
    assert sorted(Path(path).name for path in scored["path"]) == ["digit_1.png", "digit_7.png"]


def trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv") as table:
        return list(csv.DictReader(table))


def test_own_lightning_module_hands_its_checkpoint_over_in_pbt_and_is_batch_predicted(
    ray_address: str, tmp_path: Path
) -> None:
    # As test_sweep's PBT test, with a module of your own: after 2 epochs the hopeless trial
    # takes the good trial's checkpoint and learning rate (model.lr), and learns with it.
    proc = run_train(
        "-m",
        "search=pbt",
        "search.num_samples=1",
        "search.scheduler.synch=true",
        "trainer.max_epochs=4",
        "data=synthetic",
        "data.source.num_samples=2048",
        "model=lit_mlp",
        "model.lr=1e-7,0.03",
        "model.dropout=interval(0.0,0.2)",  # PBT mutates the sampled keys
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    # The project's optimizer settings do not apply to it: the default search space's
    # optimizer.lr is left out, and says so.
    assert "search.params' optimizer.lr left out" in proc.stdout  # Hydra's log
    first = json.loads((tmp_path / "tune" / "pbt_global.txt").read_text().splitlines()[0])
    assert first[4]["model.lr"] == 0.03 and first[5]["model.lr"] == 0.03
    target = int(first[0].split("_")[0])
    summary = result(tmp_path / str(target))
    assert summary["metrics"]["epoch"] == 4 and summary["metrics"]["val_acc"] > 0.8

    # Batch-predicted from its trial folder, on the data it was swept on.
    run_dir = tmp_path / str(target)
    assert load(run_dir).model_name == "LitMLP"
    scored = batch_predict(
        ray_address, run_dir, tmp_path / "scores", "data=synthetic", "data.source.num_samples=2048"
    )
    assert len(scored) == 2048 and (scored["prediction"] == scored["label"]).mean() > 0.8

    # Served by the app Ray Serve deploys (in-process here; test_api_contract runs it on Serve),
    # rebuilt from the checkpoint's plain values: no code unpickled.
    served = Served(run_dir)
    answer = served.predict(served.example)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    assert served.send("GET", "/metadata").json()["task"]["classes"] == list(range(10))


def test_own_module_with_a_datamodule_shards_over_two_workers_and_resumes(
    ray_address: str, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    common = ["model=lit_mlp", "data=digits_datamodule", "scaling.num_workers=2"]
    first = run_train(
        *common, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", ray_address=ray_address
    )
    assert first.returncode == 0, failure(first)
    metrics = result(run_dir)["metrics"]
    # 1,438 training rows in batches of 64: 23 steps an epoch on one worker; Lightning's
    # distributed sampler gives each of the two 719 rows, 12 steps.
    assert metrics["step"] == 2 * 12, metrics
    assert metrics["val_acc"] > 0.5

    again = run_train(
        *common, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}", ray_address=ray_address
    )
    assert again.returncode == 0, failure(again)
    metrics = result(run_dir)["metrics"]
    assert metrics["epoch"] == 3 and metrics["step"] == 3 * 12  # one more epoch, not three

    # Served from its checkpoint: the input shape came from the DataModule's first batch.
    model = load(run_dir)
    assert model.model_name == "LitMLP" and model.input_shape == (1, 8, 8)
    assert model.predict(torch.zeros(3, 1, 8, 8))["probabilities"].shape == (3, 10)
