"""Images for classification: a folder with one subfolder of PNG/JPEG files per class.

    pets/cat/001.jpg, pets/cat/002.png, ..., pets/dog/001.jpg, ...   ->  cat = 0, dog = 1

The source reads the folder (local, s3://, gs://, ...) with Ray Data's image reader, which
resizes every image to one size, so every row's `image` is a uint8 array (H, W, C) next to its
`path` and integer `label`. `ImageTransform` turns such arrays into the float model inputs
(N, C, H, W). Training, batch prediction and serving all use it, rebuilt from the plain values
saved in the checkpoint. `decode_image` turns an uploaded file into the same uint8 array,
resized and converted exactly as the reader does, so a served model sees what it trained on.
"""

import io
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import ray.data
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .sources import DataError, MissingDataError, columns, is_uri, resolve_path

MODES = {"RGB": 3, "L": 1}
METHODS = ("standard", "none")
# Like preprocessing.py: a channel of one constant value is left unscaled.
_MIN_STD = 1e-8
# Ray Data skips files and folders whose names start with these; class folders too, then.
_HIDDEN_PREFIXES = (".", "_")
# What decode_image accepts: the formats of the uploads the API documents.
UPLOAD_FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """An upload that is not a usable image: not PNG/JPEG, corrupt, truncated or too large."""


class ImageTooLargeError(ImageError):
    """An upload with more pixels than the server decodes (an API answers 413, not 422)."""


@dataclass(frozen=True)
class ImageTransform:
    """uint8 pixels (N, H, W, C) in, float32 model inputs (N, C, H, W) out.

    Pixels are scaled to [0, 1], then standardised per channel with `mean` and `std` (fitted on
    the train split, or 0 and 1 for `data.preprocess=none`).
    """

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    kind: ClassVar[str] = "image"
    # The dataset column it reads (Ray Data's image reader names it so).
    input_columns: ClassVar[tuple[str, ...]] = ("image",)

    @property
    def raw_shapes(self) -> tuple[tuple[int, ...], ...]:
        """How a client may send one image as numbers: (H, W, C), or (H, W) if grey."""
        full = (self.height, self.width, self.channels)
        return (full, full[:2]) if self.channels == 1 else (full,)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape the model sees per image: channels first, as torch's conv layers want."""
        return (self.channels, self.height, self.width)

    @property
    def mode(self) -> str:
        """Pillow's mode for images of this many channels: RGB or L (grey)."""
        return next(mode for mode, channels in MODES.items() if channels == self.channels)

    def __call__(self, images: Any) -> np.ndarray:
        """float32 (N, C, H, W) from pixel values 0..255 shaped (N, H, W, C), or (N, H, W) when
        there is one channel."""
        pixels = np.asarray(images)
        if pixels.ndim == 3 and self.channels == 1:
            pixels = pixels[..., None]
        expected = (self.height, self.width, self.channels)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            grey = f" or (N, {self.height}, {self.width})" if self.channels == 1 else ""
            raise ValueError(
                f"expected images shaped (N, {', '.join(map(str, expected))}){grey} with pixel "
                f"values 0..255, got an array shaped {list(pixels.shape)}"
            )
        _check_pixel_values(pixels)
        inputs = pixels.astype(np.float32) / np.float32(255)
        inputs = (inputs - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))

    def from_batch(self, batch: Mapping[str, Any]) -> np.ndarray:
        """The model inputs for a Ray Data batch (numpy or pandas format) with an `image` column."""
        return self(stack_images(batch["image"]))

    def state(self) -> dict[str, Any]:
        """Plain numbers and lists: what torch.load(weights_only=True) can read back."""
        return {
            "kind": self.kind,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ImageTransform":
        if state.get("kind") != cls.kind:
            raise ValueError(f"not an image transform's state: kind is {state.get('kind')!r}")
        return cls(
            height=int(state["height"]),
            width=int(state["width"]),
            channels=int(state["channels"]),
            mean=tuple(float(value) for value in state["mean"]),
            std=tuple(float(value) for value in state["std"]),
        )

    def describe(self) -> dict[str, Any]:
        """What a client must send (for an API's GET /metadata)."""
        return {
            "kind": self.kind,
            "shape": [self.height, self.width, self.channels],
            "dtype": "uint8",
            "range": [0, 255],
            "mode": self.mode,
            "uploads": (
                f"{' or '.join(UPLOAD_FORMATS)} files, resized to {self.height}x{self.width} "
                f"(height x width) and converted to {self.mode}"
            ),
        }


def _check_pixel_values(pixels: np.ndarray) -> None:
    """Numbers from 0 to 255 (always so for uint8, the reader's and decode_image's type)."""
    if pixels.dtype == np.uint8:
        return
    if not np.issubdtype(pixels.dtype, np.number):
        raise ValueError(f"expected numeric pixel values 0..255, got dtype {pixels.dtype}")
    if pixels.size and not (
        np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255
    ):
        raise ValueError(
            f"expected pixel values 0..255, got values from {pixels.min()} to {pixels.max()}"
        )


class ImageFolderSource:
    """Images in class folders: `path/<class name>/<any name>.<extension>`, local or a URI.

    Classes are the subfolders' names, sorted; a label is its folder's position among them.
    Images in deeper folders belong to their top folder's class. As for Ray Data's readers,
    names starting with "." or "_" are skipped. Local paths are made absolute here, in the
    driver: Ray tasks do not run in this folder. Like local parquet files, a local folder must
    be on every node that reads it (one machine, or a shared file system); use s3:// or gs://
    on a cluster.
    """

    kind = "image"

    def __init__(
        self,
        path: str,
        size: Sequence[int] = (32, 32),
        mode: str = "RGB",
        extensions: Sequence[str] = ("png", "jpg", "jpeg"),
        label_column: str = "label",
    ) -> None:
        if not path:
            raise ValueError("data.source.path is empty: give a folder of class folders or a URI")
        if mode not in MODES:
            raise ValueError(f"data.source.mode must be one of {', '.join(MODES)}; got {mode!r}")
        if len(size) != 2 or not all(int(side) >= 1 for side in size):
            raise ValueError(f"data.source.size must be [height, width] > 0; got {list(size)}")
        self.extensions = [ext.lower().lstrip(".") for ext in extensions]
        if not self.extensions:
            raise ValueError("data.source.extensions is empty: give e.g. [png, jpg, jpeg]")
        self.path = resolve_path(str(path))
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode
        self.label_column = label_column
        # The train/val split hashes these: a row's side depends on its file alone.
        self.split_columns = ["path"]
        self._classes: list[str] | None = None

    @property
    def channels(self) -> int:
        return MODES[self.mode]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    @property
    def num_classes(self) -> int:
        return len(self.classes())

    def check(self) -> None:
        """Fail now, before Ray starts, if a local folder cannot work (URIs: when read)."""
        if is_uri(self.path):
            return
        if not os.path.exists(self.path):
            raise MissingDataError(
                f"data.source.path: {self.path} does not exist (relative paths are relative to "
                f"the folder train.py runs in: {os.getcwd()})"
            )
        if not os.path.isdir(self.path):
            raise DataError(
                f"data.source.path: {self.path} is not a folder; it must hold one subfolder "
                f"of images per class"
            )
        self._check_classes(self.classes())
        empty = [name for name in self.classes() if not self._holds_image(name)]
        if empty:
            raise DataError(
                f"data.source.path: class folder(s) {columns(empty)} in {self.path} hold no "
                f"{'/'.join(self.extensions)} image (see data.source.extensions)"
            )

    def classes(self) -> list[str]:
        """The class names: the folder's subfolders, sorted. Once found, they are remembered:
        the labels of a run must not change while it runs."""
        if self._classes:
            return list(self._classes)
        names = _uri_folders(self.path) if is_uri(self.path) else _local_folders(self.path)
        self._classes = sorted(name for name in names if not name.startswith(_HIDDEN_PREFIXES))
        return list(self._classes)

    def read(self) -> ray.data.Dataset:
        """Columns `image` (uint8 H x W x C), `path` (relative to data.source.path, e.g.
        cat/001.png, so the split does not change when the folder moves) and the label."""
        self.check()
        names = self.classes()
        self._check_classes(names)
        images = self._read_images([_join(self.path, name) for name in names])
        to_rows = partial(
            _label_rows,
            root=_listed_path(self.path),
            label_of={name: index for index, name in enumerate(names)},
            label_column=self.label_column,
        )
        return images.map_batches(to_rows, batch_format="numpy")

    def read_unlabelled(self, path: str | None = None) -> ray.data.Dataset:
        """Columns `image` and `path` for every image under `path` (default: data.source.path;
        a folder, with or without class folders, or one file): what batch prediction reads."""
        root = self.path if path is None else resolve_path(str(path))
        if not is_uri(root) and not os.path.exists(root):
            raise MissingDataError(
                f"{root} does not exist (relative paths are relative to the folder you run in: "
                f"{os.getcwd()})"
            )
        to_rows = partial(_unlabelled_rows, scheme=_dropped_scheme(root))
        return self._read_images(root).map_batches(to_rows, batch_format="numpy")

    def fit_transform(self, train: ray.data.Dataset, preprocess: str) -> ImageTransform:
        """The ImageTransform for `preprocess`, with its statistics computed on `train` only."""
        if preprocess not in METHODS:
            raise ValueError(
                f"data.preprocess must be one of {', '.join(METHODS)}; got {preprocess!r}"
            )
        if preprocess == "none":
            mean, std = np.zeros(self.channels), np.ones(self.channels)
        else:
            mean, std = channel_moments(train, self.channels)
            std = np.where(std >= _MIN_STD, std, 1.0)
        return ImageTransform(
            height=self.size[0],
            width=self.size[1],
            channels=self.channels,
            mean=tuple(float(value) for value in mean),
            std=tuple(float(value) for value in std),
        )

    def _read_images(self, paths: str | list[str]) -> ray.data.Dataset:
        return ray.data.read_images(
            paths,
            size=self.size,
            mode=self.mode,
            include_paths=True,
            file_extensions=list(self.extensions),
        )

    def _check_classes(self, names: list[str]) -> None:
        if not names:
            raise DataError(
                f"data.source.path: {self.path} has no class subfolders; put each class's "
                f"images in a subfolder named after it, e.g. {_join(self.path, 'cat')}/001.png"
            )
        if len(names) < 2:
            raise DataError(
                f"data.source.path: {self.path} has one class folder ({names[0]}); a "
                f"classifier needs at least two"
            )

    def _holds_image(self, name: str) -> bool:
        """True as soon as one file under the class folder has one of the extensions."""
        suffixes = tuple(f".{ext}" for ext in self.extensions)
        for _, subfolders, files in os.walk(os.path.join(self.path, name)):
            subfolders[:] = [sub for sub in subfolders if not sub.startswith(_HIDDEN_PREFIXES)]
            if any(file.lower().endswith(suffixes) for file in files):
                return True
        return False


def stack_images(images: Any) -> np.ndarray:
    """A batch's `image` column as one array. Ray hands over one array, or an object array of
    per-row arrays when the shapes differ, or a pandas column (batch_format="pandas")."""
    if hasattr(images, "to_numpy"):
        images = images.to_numpy()
    if isinstance(images, np.ndarray) and images.dtype != object:
        return images
    return np.stack(list(images))


def with_channel_axis(images: np.ndarray) -> np.ndarray:
    """Grey images (N, H, W) as (N, H, W, 1): every image array then has its channel axis."""
    return images[..., None] if images.ndim == 3 else images


def channel_moments(table: ray.data.Dataset, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of the pixels scaled to [0, 1], in one pass.

    Each batch counts how often each of the 256 values occurs per channel. Counts add up
    exactly, in any order, so the result does not depend on how the rows are split into
    blocks, and the mean and std come from 256 numbers without any cancellation.
    """
    parts = table.map_batches(
        partial(_channel_histograms, channels=channels), batch_format="numpy"
    ).take_all()
    counts = sum((part["histogram"] for part in parts), np.zeros((channels, 256), np.int64))
    total = counts.sum(axis=1)
    if not total.all():
        raise ValueError("the train split is empty; there is nothing to fit the preprocessing on")
    values = np.arange(256) / 255.0
    mean = counts @ values / total
    variance = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean, np.sqrt(variance)


def _channel_histograms(batch: dict[str, np.ndarray], channels: int) -> dict[str, np.ndarray]:
    counts = np.zeros((channels, 256), dtype=np.int64)
    if len(batch["image"]):
        images = with_channel_axis(stack_images(batch["image"]))
        if images.dtype != np.uint8:
            raise DataError(f"expected uint8 images to fit on, got dtype {images.dtype}")
        for channel in range(channels):
            counts[channel] = np.bincount(images[..., channel].ravel(), minlength=256)
    return {"histogram": counts[None]}


def _label_rows(
    batch: dict[str, np.ndarray], root: str, label_of: dict[str, int], label_column: str
) -> dict[str, np.ndarray]:
    """Add the label of each image: the class folder right under `root` in its path."""
    relative = [_relative(str(path), root) for path in batch["path"]]
    return {
        "image": with_channel_axis(stack_images(batch["image"])),
        "path": np.array(relative, dtype=object),
        label_column: np.array([label_of[rel.split("/", 1)[0]] for rel in relative], np.int64),
    }


def _relative(path: str, root: str) -> str:
    path = path.replace("\\", "/")
    if not path.startswith(root + "/"):
        raise DataError(f"image {path} is not under data.source.path ({root})")
    return path[len(root) + 1 :]


def _unlabelled_rows(batch: dict[str, np.ndarray], scheme: str) -> dict[str, np.ndarray]:
    return {
        "image": with_channel_axis(stack_images(batch["image"])),
        "path": np.array([f"{scheme}{path}" for path in batch["path"]], dtype=object),
    }


def _dropped_scheme(root: str) -> str:
    """The scheme ("s3://") to put back in front of the paths Ray Data lists under the URI
    `root` (s3://bucket/x as bucket/x), so that the `path` column holds URIs; "" if none."""
    if not is_uri(root):
        return ""
    scheme, _, rest = root.partition("://")
    return f"{scheme}://" if _listed_path(root) == rest.rstrip("/") else ""


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_uri(root) else os.path.join(root, name)


def _local_folders(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    with os.scandir(path) as entries:
        return [entry.name for entry in entries if entry.is_dir()]


def _uri_folders(uri: str) -> list[str]:
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(uri)
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=False, allow_not_found=True))
    return [info.base_name for info in infos if info.type == fs.FileType.Directory]


def _listed_path(root: str) -> str:
    """`root` as Ray Data writes it in the `path` column (for a URI: the filesystem's own path,
    e.g. bucket/prefix for s3://bucket/prefix)."""
    if is_uri(root):
        from pyarrow import fs

        root = fs.FileSystem.from_uri(root)[1]
    return root.replace("\\", "/").rstrip("/")


def decode_image(
    data: bytes,
    transform: ImageTransform,
    max_pixels: int = 4096 * 4096,
    formats: Sequence[str] = UPLOAD_FORMATS,
) -> np.ndarray:
    """An uploaded PNG/JPEG file as a uint8 array (H, W, C) of the transform's size and mode.

    Resized then converted, with the same filter, as Ray Data's reader does for training. The
    size in the file's header is checked before the pixels are decoded: a small file can hold
    a huge image (ImageTooLargeError). Any other decoding error is an ImageError: the bytes
    come from outside.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        raise ImageError(f"the upload is not a {' or '.join(formats)} image") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"the image is too large: {error}") from None
    except Exception as error:  # Pillow raises many kinds of errors on broken headers
        raise ImageError(f"the image is corrupt or truncated: {_first_line(error)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels, more than the "
            f"{max_pixels} this server decodes"
        )
    try:
        image.load()  # decodes all the pixels: a truncated or corrupt file fails here
        return _as_array(image, transform)
    except Exception as error:
        raise ImageError(f"the image is corrupt or truncated: {_first_line(error)}") from None


def _as_array(image: Image.Image, transform: ImageTransform) -> np.ndarray:
    size = (transform.width, transform.height)
    if image.size != size:
        image = image.resize(size, resample=Image.BILINEAR)
    if image.mode != transform.mode:
        image = image.convert(transform.mode)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _first_line(error: Exception) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def augment(
    features: torch.Tensor, generator: torch.Generator, hflip: bool, crop_padding: int
) -> torch.Tensor:
    """Random training variations of a batch (N, C, H, W), drawn per image from `generator`.

    `hflip`: mirror each image left-right with probability 1/2. `crop_padding`: shift each
    image by up to that many pixels in each direction, filling the uncovered border with 0 (the
    mean pixel after standardisation). The same generator state gives the same batch.
    """
    if features.ndim != 4:
        raise ValueError(f"augment expects a batch shaped (N, C, H, W), got {list(features.shape)}")
    if crop_padding < 0:
        raise ValueError(f"data.augment.crop_padding must be >= 0, got {crop_padding}")
    if hflip:
        features = _random_hflip(features, generator)
    if crop_padding:
        features = _random_shift(features, generator, crop_padding)
    return features


def _random_hflip(features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(features), generator=generator, device=generator.device) < 0.5
    flip = flip.to(features.device).view(-1, 1, 1, 1)
    return torch.where(flip, features.flip(-1), features)


def _random_shift(features: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Pad by `padding` zeros on every side, then crop back to H x W at a random corner."""
    n, c, h, w = features.shape
    padded = F.pad(features, (padding, padding, padding, padding))
    corners = torch.randint(
        0, 2 * padding + 1, (2, n), generator=generator, device=generator.device
    ).to(features.device)
    rows = corners[0].view(n, 1) + torch.arange(h, device=features.device)  # (N, H)
    cols = corners[1].view(n, 1) + torch.arange(w, device=features.device)  # (N, W)
    batch = torch.arange(n, device=features.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=features.device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def write_digit_images(folder: str | Path) -> Path:
    """scikit-learn's bundled digits as 8x8 grey PNGs, `folder/<digit>/<index>.png`.

    Written once: a folder that already holds the ten digit folders is left as it is. The files
    go to a hidden sibling folder that is renamed into place when complete, so runs that start
    together never read a half-written folder, and the first to finish wins.
    """
    folder = Path(resolve_path(str(folder)))
    if _has_digit_folders(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    try:
        _write_digits(staging)
        os.rename(staging, folder)  # atomic; replaces an empty folder, fails on a full one
    except OSError:
        if not _has_digit_folders(folder):
            raise DataError(
                f"{folder} exists but does not hold the digit folders 0-9; remove it or "
                f"choose another data.source.path"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _has_digit_folders(folder: Path) -> bool:
    return all((folder / str(digit)).is_dir() for digit in range(10))


def _write_digits(staging: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    for digit in range(10):
        (staging / str(digit)).mkdir(parents=True)
    for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        Image.fromarray(image).save(staging / str(label) / f"{index:04d}.png")


class DigitImagesSource(ImageFolderSource):
    """The built-in image data: scikit-learn's 1,797 handwritten digits as 8x8 grey PNGs in
    class folders, written under `path` on first use (nothing is downloaded)."""

    def __init__(
        self,
        path: str,
        size: Sequence[int] = (8, 8),
        mode: str = "L",
        extensions: Sequence[str] = ("png",),
        label_column: str = "label",
    ) -> None:
        super().__init__(path, size, mode, extensions, label_column)

    def check(self) -> None:
        write_digit_images(self.path)
        super().check()

    def classes(self) -> list[str]:
        write_digit_images(self.path)
        return super().classes()

    def read_unlabelled(self, path: str | None = None) -> ray.data.Dataset:
        if path is None:
            write_digit_images(self.path)
        return super().read_unlabelled(path)
