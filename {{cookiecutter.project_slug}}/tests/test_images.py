"""Images: class folders read with Ray Data, the fitted image transform, uploads, augmentation."""

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.data.images import (
    DigitImagesSource,
    ImageError,
    ImageFolderSource,
    ImageTooLargeError,
    ImageTransform,
    augment,
    decode_image,
    write_digit_images,
)
from {{ cookiecutter.package_name }}.data.sources import DataError, MissingDataError

# Each class's images are one solid grey level, so a row's label can be read off its pixels.
LEVELS = {"ant": 20, "bee": 120, "cat": 220}
SIZES = [(5, 7), (16, 16), (9, 30), (40, 12)]  # (height, width): every file a different size


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def solid(level: int, height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), level, dtype=np.uint8)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_folder(root: Path) -> Path:
    """3 classes x 4 images of different sizes (the last of `cat` a JPEG in a subfolder), and
    files the reader must skip: not an image, hidden, outside any class folder."""
    for name, level in LEVELS.items():
        (root / name).mkdir(parents=True)
        for index, (height, width) in enumerate(SIZES):
            (root / name / f"{index}.png").write_bytes(encoded(solid(level, height, width)))
    (root / "cat" / "3.png").unlink()
    (root / "cat" / "deeper").mkdir()
    (root / "cat" / "deeper" / "3.JPG").write_bytes(encoded(solid(220, 20, 10), "JPEG"))
    (root / "bee" / "notes.txt").write_text("not an image")
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "x.png").write_bytes(encoded(solid(0, 4, 4)))
    (root / "stray.png").write_bytes(encoded(solid(0, 4, 4)))
    (root / "noise").mkdir()
    (root / "noise" / "noise.png").write_bytes(encoded(noise(21, 13)))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("pictures"))


def transform_for(height: int, width: int, channels: int) -> ImageTransform:
    return ImageTransform(height, width, channels, (0.0,) * channels, (1.0,) * channels)


# Without Ray.


def test_classes_are_the_sorted_subfolders(folder: Path) -> None:
    source = ImageFolderSource(str(folder))
    assert source.classes() == ["ant", "bee", "cat", "noise"]  # not .thumbnails
    assert source.num_classes == 4
    assert source.kind == "image" and source.split_columns == ["path"]
    assert source.input_shape == (3, 32, 32)
    source.check()


def test_relative_paths_are_made_absolute_and_uris_kept() -> None:
    assert ImageFolderSource("some/where").path == str(Path("some/where").resolve())
    assert ImageFolderSource("s3://bucket/pets/").path == "s3://bucket/pets/"
    ImageFolderSource("s3://bucket/pets/").check()  # URIs are checked when read


def test_check_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"data.source.path: .*/nowhere does not exist"):
        ImageFolderSource(str(tmp_path / "nowhere")).check()
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(encoded(solid(0, 4, 4)))
    with pytest.raises(DataError, match=r"has no class subfolders; put each class's images"):
        ImageFolderSource(str(tmp_path / "flat")).check()
    with pytest.raises(DataError, match=r"a.png is not a folder"):
        ImageFolderSource(str(tmp_path / "flat" / "a.png")).check()
    for name in ("one", "two"):
        (tmp_path / "classes" / name).mkdir(parents=True)
    (tmp_path / "classes" / "one" / "a.png").write_bytes(encoded(solid(0, 4, 4)))
    (tmp_path / "classes" / "two" / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"class folder\(s\) two in .* hold no png/jpg/jpeg image"):
        ImageFolderSource(str(tmp_path / "classes")).check()
    (tmp_path / "classes" / "two" / "a.gif").unlink()
    (tmp_path / "classes" / "two").rmdir()
    with pytest.raises(DataError, match=r"one class folder \(one\); a classifier needs"):
        ImageFolderSource(str(tmp_path / "classes")).check()


def test_source_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="data.source.mode must be one of RGB, L; got 'CMYK'"):
        ImageFolderSource("x", mode="CMYK")
    with pytest.raises(ValueError, match=r"data.source.size must be \[height, width\]"):
        ImageFolderSource("x", size=[32])
    with pytest.raises(ValueError, match="data.preprocess must be one of standard, none"):
        ImageFolderSource("x").fit_transform(None, "minmax")


def test_transform_scales_standardises_and_puts_channels_first() -> None:
    transform = ImageTransform(2, 3, 3, mean=(0.5, 0.0, 0.0), std=(0.5, 1.0, 2.0))
    images = np.zeros((4, 2, 3, 3), dtype=np.uint8)
    images[..., 0], images[..., 1], images[..., 2] = 255, 51, 255
    inputs = transform(images)
    assert inputs.shape == (4, 3, 2, 3) == (4, *transform.input_shape)
    assert inputs.dtype == np.float32 and inputs.flags.c_contiguous
    assert np.allclose(inputs[:, 0], 1.0) and np.allclose(inputs[:, 1], 0.2)
    assert np.allclose(inputs[:, 2], 0.5)
    assert np.allclose(transform(images.astype(np.float64)), inputs)  # any numeric type
    column = np.empty(len(images), dtype=object)  # how Ray hands over per-row arrays
    column[:] = list(images)
    assert np.allclose(transform.from_batch({"image": column}), inputs)


def test_grey_images_get_a_channel_axis() -> None:
    transform = transform_for(8, 8, 1)
    assert transform(np.zeros((5, 8, 8))).shape == (5, 1, 8, 8)
    assert transform(np.zeros((5, 8, 8, 1))).shape == (5, 1, 8, 8)
    assert transform.mode == "L" and transform.raw_shapes == ((8, 8, 1), (8, 8))
    assert transform_for(8, 8, 3).raw_shapes == ((8, 8, 3),)
    assert transform.input_columns == ("image",)


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 8, 8, 1), (5, 3, 8, 8), (8, 8, 3)])
def test_transform_refuses_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected images shaped \(N, 8, 8, 3\) with pixel"):
        transform_for(8, 8, 3)(np.zeros(shape))
    with pytest.raises(ValueError, match="expected numeric pixel values"):
        transform_for(8, 8, 3)(np.full((1, 8, 8, 3), "a"))


@pytest.mark.parametrize("value", [-1.0, 255.5, np.nan, np.inf])
def test_transform_refuses_pixel_values_out_of_range(value: float) -> None:
    pixels = np.zeros((2, 4, 4, 3))
    pixels[1, 2, 3, 0] = value
    with pytest.raises(ValueError, match="expected pixel values 0..255, got values from"):
        transform_for(4, 4, 3)(pixels)


def test_transform_state_survives_a_safe_torch_load(tmp_path: Path) -> None:
    transform = ImageTransform(32, 24, 3, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    state = transform.state()
    assert state["kind"] == "image"
    torch.save({"data": state}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["data"]
    assert ImageTransform.from_state(loaded) == transform
    with pytest.raises(ValueError, match="not an image transform's state"):
        ImageTransform.from_state({"feature_columns": ["x"]})
    described = transform.describe()
    assert described["shape"] == [32, 24, 3] and described["dtype"] == "uint8"
    assert described["range"] == [0, 255] and "resized to 32x24" in described["uploads"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_image_resizes_and_converts(fmt: str) -> None:
    data = encoded(solid(200, 50, 70), fmt)
    rgb = decode_image(data, transform_for(8, 6, 3))
    assert rgb.shape == (8, 6, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - 200).max() <= 2  # JPEG is lossy
    grey = decode_image(data, transform_for(4, 4, 1))
    assert grey.shape == (4, 4, 1)


def test_decode_image_refuses_what_is_not_a_usable_image() -> None:
    transform = transform_for(8, 8, 3)
    png = encoded(noise(64, 64))
    cases = [
        (b"definitely not an image", "not a PNG or JPEG image"),
        (encoded(noise(8, 8), "GIF"), "not a PNG or JPEG image"),
        (png[: len(png) // 2], "corrupt or truncated: OSError: image file is truncated"),
        (encoded(noise(64, 64), "JPEG")[:300], "corrupt or truncated"),
    ]
    for data, message in cases:
        with pytest.raises(ImageError, match=message):
            decode_image(data, transform)
    with pytest.raises(ImageTooLargeError, match="64x64 = 4096 pixels, more than the 4095"):
        decode_image(png, transform, max_pixels=4095)
    assert decode_image(png, transform, max_pixels=4096).shape == (8, 8, 3)


def test_augment_is_seeded_and_keeps_the_shape() -> None:
    features = torch.randn(16, 3, 6, 5)

    def run(seed: int) -> torch.Tensor:
        return augment(features, torch.Generator().manual_seed(seed), True, 2)

    assert run(0).shape == features.shape
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert torch.equal(augment(features, torch.Generator(), False, 0), features)


def test_augment_flips_about_half_the_images() -> None:
    features = torch.randn(64, 1, 4, 4)
    flipped = augment(features, torch.Generator().manual_seed(0), hflip=True, crop_padding=0)
    same = (flipped == features).flatten(1).all(1)
    mirrored = (flipped == features.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 16 < int(mirrored.sum()) < 48


def test_augment_shifts_each_image_by_at_most_the_padding() -> None:
    features = torch.arange(1, 8 * 2 * 5 * 6 + 1, dtype=torch.float32).view(8, 2, 5, 6)
    shifted = augment(features, torch.Generator().manual_seed(3), hflip=False, crop_padding=1)
    offsets = set()
    for image, original in zip(shifted, features, strict=True):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(image, shift(original, dy, dx))
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # each image draws its own


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved down by dy and right by dx, zeros coming in."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digit images, written by two runs starting together."""
    target = tmp_path_factory.mktemp("made") / "digits"
    threads = [threading.Thread(target=write_digit_images, args=(target,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return target


def test_write_digit_images_once_even_when_called_together(
    digit_folder: Path, tmp_path: Path
) -> None:
    target = digit_folder
    assert sorted(os.listdir(target)) == [str(digit) for digit in range(10)]
    files = sorted(target.glob("*/*.png"))
    assert len(files) == 1797
    assert os.listdir(target.parent) == ["digits"]  # no staging folder left behind
    with Image.open(target / "0" / "0000.png") as first:
        assert first.size == (8, 8) and first.mode == "L"
    written = files[0].stat().st_mtime_ns
    assert write_digit_images(str(target)) == target
    assert files[0].stat().st_mtime_ns == written  # the second call writes nothing
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("not digits")
    with pytest.raises(DataError, match="exists but does not hold the digit folders 0-9"):
        write_digit_images(tmp_path / "other")


# With Ray Data on the shared cluster.


@pytest.mark.slow
def test_read_labels_resizes_and_skips_other_files(ray_address: str, folder: Path) -> None:
    source = ImageFolderSource(str(folder), size=(6, 4))
    rows = source.read().take_all()
    paths = sorted(row["path"] for row in rows)
    assert paths == sorted(
        [f"{name}/{index}.png" for name in LEVELS for index in range(4)][:-1]
        + ["cat/deeper/3.JPG", "noise/noise.png"]
    )
    for row in rows:
        assert row["image"].shape == (6, 4, 3) and row["image"].dtype == np.uint8
        assert isinstance(row["label"], int | np.integer)
        name = row["path"].split("/")[0]
        assert row["label"] == source.classes().index(name)
        if name in LEVELS:
            assert np.abs(row["image"].astype(int) - LEVELS[name]).max() <= 2
    # An upload is decoded as the reader decoded the file: the model sees what it trained on.
    (noisy,) = [row for row in rows if row["path"] == "noise/noise.png"]
    uploaded = decode_image((folder / "noise" / "noise.png").read_bytes(), transform_for(6, 4, 3))
    assert np.array_equal(uploaded, noisy["image"])


@pytest.mark.slow
def test_fitted_transform_standardises_each_channel(ray_address: str, folder: Path) -> None:
    source = ImageFolderSource(str(folder), size=(5, 5), mode="L")
    table = source.read().materialize()
    images = np.stack(table.take_batch(100, batch_format="numpy")["image"])
    assert images.shape == (len(images), 5, 5, 1)  # grey keeps a channel axis
    standard = source.fit_transform(table, "standard")
    assert standard.input_shape == (1, 5, 5)
    pixels = images / 255.0
    assert np.allclose(standard.mean, [pixels.mean()]) and np.allclose(standard.std, [pixels.std()])
    inputs = standard(images)
    assert abs(inputs.mean()) < 1e-5 and abs(inputs.std() - 1) < 1e-4
    plain = source.fit_transform(table, "none")
    assert plain.mean == (0.0,) and plain.std == (1.0,)
    assert np.allclose(plain(images), pixels.transpose(0, 3, 1, 2))

    rgb = ImageFolderSource(str(folder), size=(5, 5))
    table = rgb.read().materialize()
    colour = rgb.fit_transform(table, "standard").from_batch(table.take_batch(100))
    assert np.allclose(colour.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(colour.std(axis=(0, 2, 3)), 1, atol=1e-4)


@pytest.mark.slow
def test_read_unlabelled_reads_any_folder(ray_address: str, folder: Path) -> None:
    source = ImageFolderSource(str(folder), size=(3, 3))
    rows = source.read_unlabelled(str(folder / "cat")).take_all()
    assert sorted(row["path"] for row in rows) == sorted(
        str(folder / "cat" / name) for name in ("0.png", "1.png", "2.png", "deeper/3.JPG")
    )
    assert all(set(row) == {"image", "path"} and row["image"].shape == (3, 3, 3) for row in rows)
    with pytest.raises(MissingDataError, match="does not exist"):
        source.read_unlabelled(str(folder / "nowhere"))
    # Without a path: the source's own folder, class folders and all. As batch prediction
    # reads it, in pandas batches, the transform stacks the column itself.
    everything = source.read_unlabelled()
    assert everything.count() == 14  # 13 in class folders, stray.png; not .thumbnails/
    batch = everything.take_batch(5, batch_format="pandas")
    assert transform_for(3, 3, 3).from_batch(batch).shape == (5, 3, 3, 3)


@pytest.mark.slow
def test_digit_images_are_written_and_read(ray_address: str, tmp_path: Path) -> None:
    source = DigitImagesSource(str(tmp_path / "digits"))
    assert source.classes() == [str(digit) for digit in range(10)]  # written on first use
    assert source.input_shape == (1, 8, 8) and source.num_classes == 10
    batch = source.read().take_batch(2000, batch_format="numpy")
    assert len(batch["label"]) == 1797 and batch["image"].shape == (1797, 8, 8, 1)
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.array([int(Path(path).stem) for path in batch["path"]])
    assert np.array_equal(batch["label"], digits.target[index])
    assert np.array_equal(batch["image"][..., 0], np.rint(digits.images[index] * 255 / 16))
