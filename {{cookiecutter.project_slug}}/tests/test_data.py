"""Data: sources, the seeded split, preprocessing fitted on train only, files, clear errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig

from {{ cookiecutter.package_name }}.checkpoints import PROJECT_KEY
from {{ cookiecutter.package_name }}.data import (
    DataError,
    DigitsSource,
    ParquetSource,
    PreparedData,
    SyntheticSource,
    Transform,
    load_transform,
    prepare,
    prepare_reusing,
    reuse_prepared,
)
from {{ cookiecutter.package_name }}.data.preprocessing import feature_moments, inputs_from_state
from {{ cookiecutter.package_name }}.data.split import TEST, VALIDATION, is_validation, sides
from {{ cookiecutter.package_name }}.tasks import Classification

from .conftest import compose_config, run_train


def digits_frame() -> pd.DataFrame:
    return DigitsSource().frame()


def file_config(path: Path, fmt: str, *overrides: str) -> DictConfig:
    return compose_config(f"data={fmt}", f"data.source.path={path}", *overrides)


def prepare_config(cfg: DictConfig) -> PreparedData:
    return prepare(cfg.data, cfg.task)


def collect(dataset) -> tuple[np.ndarray, np.ndarray]:
    batch = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    return batch["features"], batch["label"]


# Fast: no Ray.


def test_digits_columns_shape_and_range() -> None:
    source = DigitsSource()
    table = source.frame()
    assert source.input_shape == (1, 8, 8) and source.num_classes == 10
    assert list(table.columns) == source.feature_columns + ["label"]
    assert len(table) == 1797
    assert table[source.feature_columns].to_numpy().min() == 0.0
    assert table[source.feature_columns].to_numpy().max() == 1.0


def test_synthetic_sizes_from_config() -> None:
    source = SyntheticSource(num_samples=100, input_shape=(1, 4, 4), num_classes=3, seed=0)
    table = source.frame()
    assert source.input_shape == (1, 4, 4) and len(source.feature_columns) == 16
    assert len(table) == 100 and set(table["label"]) == {0, 1, 2}
    assert table.equals(SyntheticSource(100, (1, 4, 4), 3, seed=0).frame())


def test_split_is_seeded_and_independent_of_how_rows_are_cut() -> None:
    features = digits_frame().drop(columns="label")
    val = is_validation(features, 0.25, seed=0)
    assert np.array_equal(val, is_validation(features, 0.25, seed=0))
    assert not np.array_equal(val, is_validation(features, 0.25, seed=1))
    # Blocks, files and workers cut the rows differently; a row's side must not change.
    pieces = [is_validation(features.iloc[i : i + 100], 0.25, 0) for i in range(0, 1797, 100)]
    assert np.array_equal(val, np.concatenate(pieces))
    assert np.array_equal(val[::-1], is_validation(features.iloc[::-1], 0.25, seed=0))
    assert abs(val.mean() - 0.25) < 0.03


def test_a_test_split_comes_out_of_the_training_rows_only() -> None:
    features = digits_frame().drop(columns="label")
    side = sides(features, 0.2, 0.15, seed=0)
    # The validation rows stay those of a run without a test split: results stay comparable.
    assert np.array_equal(side == VALIDATION, is_validation(features, 0.2, seed=0))
    assert abs((side == TEST).mean() - 0.15) < 0.03
    assert np.array_equal(side, sides(features.iloc[::-1], 0.2, 0.15, seed=0)[::-1])
    assert not (sides(features, 0.2, 0.0, seed=0) == TEST).any()


def test_transform_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    transform = Transform(("a", "b"), (2,), mean=(1.0, -2.0), std=(2.0, 0.5))
    torch.save({PROJECT_KEY: {"inputs": transform.state()}}, tmp_path / "checkpoint.ckpt")
    saved = torch.load(tmp_path / "checkpoint.ckpt", weights_only=True)
    assert saved[PROJECT_KEY]["inputs"]["kind"] == "table"
    loaded = inputs_from_state(saved[PROJECT_KEY]["inputs"])
    rows = np.array([[3, -2], [1, -1.5]])
    assert loaded == transform
    assert np.array_equal(loaded(rows), np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert loaded(rows).dtype == np.float32
    with pytest.raises(ValueError, match="expected rows of 2 features"):
        loaded(np.zeros((2, 3)))
    # Checkpoints written before tasks existed keep it under `data`, without a kind.
    old = {key: value for key, value in transform.state().items() if key != "kind"}
    assert load_transform({"data": old}) == transform
    with pytest.raises(KeyError, match="no 'data' entry"):
        load_transform({"state_dict": {}})


def test_text_labels_are_counted_as_bad_whatever_their_pandas_type() -> None:
    import pyarrow as pa

    from {{ cookiecutter.package_name }}.tasks.labels import label_summary

    for dtype in (object, "string", pd.ArrowDtype(pa.string())):
        labels = pd.DataFrame({"label": pd.Series(["a", "b", "1", None], dtype=dtype)})
        summary = label_summary(labels, "label").iloc[0]
        assert (summary["bad"], summary["max"]) == (3, 1)


def test_missing_file_says_which() -> None:
    source = ParquetSource(path="no/such/file.parquet")
    with pytest.raises(FileNotFoundError, match=r"no/such/file.parquet does not exist"):
        source.read()


def test_cloud_uris_go_to_the_reader_unchanged() -> None:
    # Nothing is read here: reading s3:// needs the network and credentials (see README).
    source = ParquetSource(path=["s3://bucket/train/", "gs://bucket/more.parquet", "rel.parquet"])
    assert source.paths[:2] == ["s3://bucket/train/", "gs://bucket/more.parquet"]
    assert source.paths[2] == str(Path("rel.parquet").resolve())


# With Ray Data on the shared cluster.


@pytest.mark.slow
def test_prepare_digits(ray_address: str) -> None:
    data = prepare_config(compose_config("data=digits"))
    features, labels = collect(data.train)
    assert data.input_shape == (1, 8, 8) and data.num_outputs == 10
    assert isinstance(data.task, Classification) and data.task.num_classes == 10
    assert features.shape == (data.train_rows, 1, 8, 8) and features.dtype == np.float32
    assert labels.dtype == np.int64
    assert data.train_rows + data.val_rows == 1797
    assert abs(data.val_rows / 1797 - 0.2) < 0.03


@pytest.mark.slow
def test_runs_in_one_process_share_the_preparation_of_the_same_data(ray_address: str) -> None:
    def reusing(cfg: DictConfig) -> PreparedData:
        return prepare_reusing(cfg.data, cfg.task)

    digits = compose_config("data=digits")
    first = reusing(digits)
    assert reusing(compose_config("data=digits", "optimizer.lr=0.5")) is first
    other = reusing(compose_config("data=digits", "data.val_fraction=0.5"))
    assert other is not first and other.val_rows > first.val_rows
    again = reusing(digits)  # only the latest preparation is kept
    assert again is not first and again.val_rows == first.val_rows
    reuse_prepared(digits.data, digits.task, first)  # as a sweep's trial is handed its driver's
    assert reusing(digits) is first


@pytest.mark.slow
def test_parquet_and_csv_round_trip(ray_address: str, tmp_path: Path) -> None:
    table = digits_frame()
    table.to_parquet(tmp_path / "digits.parquet")
    table.to_csv(tmp_path / "digits.csv", index=False)
    expected = table.drop(columns="label").to_numpy(np.float32)
    seen = {}
    for fmt in ("parquet", "csv"):
        cfg = file_config(tmp_path / f"digits.{fmt}", fmt, "data.preprocess=none")
        data = prepare_config(cfg)
        train, train_labels = collect(data.train)
        val, _ = collect(data.val)
        assert data.num_outputs == 10 and data.input_shape == (64,)
        rows = np.concatenate([train, val])
        # Every row once, in train or in val, with its own label.
        assert sorted(map(tuple, rows)) == sorted(map(tuple, expected))
        lookup = {tuple(row): label for row, label in zip(expected, table["label"], strict=True)}
        assert all(lookup[tuple(row)] == y for row, y in zip(train, train_labels, strict=True))
        seen[fmt] = sorted(map(tuple, val))
    assert seen["parquet"] == seen["csv"]  # the same rows give the same split, whatever the format


@pytest.mark.slow
def test_scaler_statistics_come_from_the_train_split_only(ray_address: str, tmp_path: Path) -> None:
    table = digits_frame()
    table.to_parquet(tmp_path / "digits.parquet")
    data = prepare_config(file_config(tmp_path / "digits.parquet", "parquet"))
    features = table.drop(columns="label")
    train_rows = features[~is_validation(features, 0.2, seed=0)].to_numpy()
    all_rows = features.to_numpy()
    assert np.abs(train_rows.mean(axis=0) - all_rows.mean(axis=0)).max() > 1e-3
    assert np.allclose(data.transform.mean, train_rows.mean(axis=0))
    assert not np.allclose(data.transform.mean, all_rows.mean(axis=0))
    stds = train_rows.std(axis=0)
    assert np.allclose(data.transform.std, np.where(stds > 1e-8, stds, 1.0))
    train, _ = collect(data.train)
    assert np.allclose(train.reshape(len(train), -1).mean(axis=0), 0.0, atol=1e-5)


@pytest.mark.slow
def test_moments_match_rays_standard_scaler(ray_address: str) -> None:
    import ray.data
    from ray.data.preprocessors import StandardScaler

    frame = SyntheticSource(num_samples=500, input_shape=(3,), seed=1).frame()
    table = ray.data.from_pandas([frame.iloc[:200], frame.iloc[200:]])
    columns = ["x_0", "x_1", "x_2"]
    mean, std = feature_moments(table, columns)
    stats = StandardScaler(columns=columns).fit(table).stats_
    assert np.allclose(mean, [stats[f"mean({c})"] for c in columns])
    assert np.allclose(std, [stats[f"std({c})"] for c in columns])


@pytest.mark.slow
@pytest.mark.parametrize(
    "labels,overrides,message",
    [
        (["a", "b", "c", "a"], [], r"must hold integer class indices .* e\.g\. 'a'"),
        ([0, 1, -1, 1], [], r"1 row\(s\) do not, e\.g\. -1"),
        ([0.0, 1.5, 1.0, 0.0], [], r"e\.g\. 1\.5"),
        ([0, 1, 2, 5], ["data.source.num_classes=3"], r"label 5, but the number of classes is 3"),
        ([0, 1, 2, 5], ["task.num_classes=3"], r"label 5, but the number of classes is 3"),
    ],
)
def test_unexpected_labels_are_refused(
    ray_address: str, tmp_path: Path, labels: list, overrides: list, message: str
) -> None:
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "label": labels}).to_parquet(path)
    with pytest.raises(ValueError, match=message):
        prepare_config(file_config(path, "parquet", *overrides))


@pytest.mark.slow
def test_train_py_names_bad_labels_in_one_message(ray_address: str, tmp_path: Path) -> None:
    path = tmp_path / "pets.parquet"
    pd.DataFrame({"x": [0.0, 1.0, 2.0], "label": ["cat", "dog", "cat"]}).to_parquet(path)
    run_dir = f"hydra.run.dir={tmp_path}"
    proc = run_train("data=parquet", f"data.source.path={path}", run_dir, ray_address=ray_address)
    assert proc.returncode != 0
    assert "integer class indices 0, 1, 2, ...; 3 row(s) do not, e.g. 'cat'" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_missing_or_text_columns_are_named(ray_address: str, tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    pd.DataFrame({"x": [1.0, 2.0], "word": ["a", "b"], "y": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column\(s\) label not found .* it has: x, word, y"):
        prepare_config(file_config(path, "csv"))
    with pytest.raises(DataError, match=r"column\(s\) z not found"):
        prepare_config(
            file_config(
                path, "csv", "data.source.label_column=y", "data.source.feature_columns=[x,z]"
            )
        )
    with pytest.raises(DataError, match=r"feature column\(s\) word are not numeric"):
        prepare_config(file_config(path, "csv", "data.source.label_column=y"))
    # A wide table's columns are not all listed: the message stays a line.
    wide = tmp_path / "wide.csv"
    pd.DataFrame({f"pixel_{k}": [0.0, 1.0] for k in range(64)}).to_csv(wide, index=False)
    with pytest.raises(DataError, match=r"it has: pixel_0, .*, pixel_7, \.\.\. \(64 in all\)\."):
        prepare_config(file_config(wide, "csv"))
