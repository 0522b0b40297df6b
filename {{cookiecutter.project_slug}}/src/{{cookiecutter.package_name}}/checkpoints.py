"""Trained checkpoints: where they are, and rebuilding their network without unpickling code.

Training writes them (training/callbacks.py, training/run.py); batch prediction
(data/prediction.py) and serving (serving/) read them through `resolve` and `load`.
"""

import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from hydra.errors import CompactHydraException
from pyarrow.fs import FileSystem, FileType
from torch import nn

from . import models
from .data.preprocessing import Transform, load_transform
from .data.sources import is_uri, resolve_path

# The Lightning checkpoint in every Ray checkpoint folder, and the run summary in a run folder.
CHECKPOINT_FILE = "checkpoint.ckpt"
RESULT_FILE = "result.json"


class CheckpointError(CompactHydraException, RuntimeError):
    """The checkpoint is missing, unreadable or lacks what prediction and serving need.

    Compact: `train.py` prints the message alone, without a traceback.
    """


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, the preprocessing it was trained with, and what the API
    tells clients about it."""

    net: nn.Module
    transform: Transform
    path: str
    model_name: str
    model_config: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    device: str = "cpu"

    @torch.inference_mode()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities, on the CPU, for a batch of model inputs."""
        return torch.softmax(self.net(inputs.to(self.device)), dim=1).cpu()


def resolve(path: str | Path) -> str:
    """The checkpoint file meant by `path`: the file itself, a Ray checkpoint folder, or a run
    folder (whose result.json names its best checkpoint, or its latest if none was ranked).
    Files and checkpoint folders may be
    URIs (s3://, gs://): a cluster's replicas cannot see the disk of the machine that trained."""
    if is_uri(str(path)):
        return _resolve_uri(str(path))
    given = Path(resolve_path(str(path)))
    if given.is_file():
        return str(given.resolve())
    if not given.is_dir():
        raise CheckpointError(f"Checkpoint not found: {given} does not exist.")
    if (given / CHECKPOINT_FILE).is_file():
        return str((given / CHECKPOINT_FILE).resolve())
    result_file = given / RESULT_FILE
    if result_file.is_file():
        summary = json.loads(result_file.read_text())
        chosen = summary.get("best_checkpoint") or summary.get("latest_checkpoint")
        if not chosen:
            raise CheckpointError(f"{result_file} names no checkpoint: the run saved none.")
        try:
            return resolve(chosen)
        except CheckpointError as error:
            raise CheckpointError(
                f"{result_file} names the checkpoint {chosen}, but: {error} (was the run "
                f"moved? pass the checkpoint folder instead)"
            ) from error
    raise CheckpointError(
        f"{given} is a folder with neither {CHECKPOINT_FILE} nor {RESULT_FILE}: pass a checkpoint "
        f"file, a Ray checkpoint folder (ray_train/checkpoint_*) or a run folder."
    )


def load(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild the trained network from a checkpoint, in eval mode on `device`.

    `weights_only=True` lets torch.load read tensors and plain containers only, so a tampered
    checkpoint cannot run code on the server.
    """
    file = resolve(path)
    try:
        with _open(file) as stream:
            checkpoint = torch.load(stream, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"Cannot read checkpoint {file}: {error}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{file} is not a Lightning checkpoint (no state_dict).")
    architecture = checkpoint.get("hyper_parameters", {}).get("architecture")
    if not architecture:
        raise CheckpointError(
            f"{file} does not say how to rebuild its network (no hyper_parameters.architecture):"
            f" it was written by an older version of this project. Train again to serve it."
        )
    try:
        transform = load_transform(checkpoint)
    except KeyError as error:
        raise CheckpointError(f"{file}: {error.args[0]}") from error
    input_shape = tuple(int(size) for size in architecture["input_shape"])
    num_classes = int(architecture["num_classes"])
    model_config = dict(architecture["model"])
    net = build_network(model_config, input_shape, num_classes, source=file)
    # The LightningModule keeps the network under `net.`; serving needs the network alone.
    weights = {
        key.removeprefix("net."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("net.")
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{file} does not fit the network it describes: {error}") from error
    return LoadedModel(
        net=net.to(device).eval(),
        transform=transform,
        path=file,
        model_name=type(net).__name__,
        model_config=model_config,
        input_shape=input_shape,
        num_classes=num_classes,
        device=device,
    )


def build_network(
    model_config: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, source: str
) -> nn.Module:
    """The network class named by `_target_`, built with the saved sizes.

    Not Hydra's `instantiate`: `_target_` comes from the checkpoint, and instantiate would call
    any function it names. Only `nn.Module` classes from this project's models package qualify.
    """
    target = str(model_config.get("_target_", ""))
    module_name, _, class_name = target.rpartition(".")
    package = models.__name__
    if not (module_name == package or module_name.startswith(package + ".")):
        raise CheckpointError(
            f"{source} names the network {target!r}; serving only builds networks from {package}."
        )
    try:
        network_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise CheckpointError(f"{source} names the network {target!r}: {error}") from error
    if not (isinstance(network_class, type) and issubclass(network_class, nn.Module)):
        raise CheckpointError(f"{source} names {target!r}, which is not an nn.Module class.")
    sizes = {key: value for key, value in model_config.items() if not key.startswith("_")}
    try:
        return network_class(input_shape=input_shape, num_classes=num_classes, **sizes)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot build {target} from {sizes}: {error}") from error


def _resolve_uri(uri: str) -> str:
    try:
        filesystem, path = FileSystem.from_uri(uri)
        kind = filesystem.get_file_info(path).type
        if kind == FileType.Directory:
            path = f"{path.rstrip('/')}/{CHECKPOINT_FILE}"
            uri = f"{uri.rstrip('/')}/{CHECKPOINT_FILE}"
            kind = filesystem.get_file_info(path).type
    except OSError as error:  # no credentials, unknown bucket, no network
        raise CheckpointError(f"Cannot reach checkpoint {uri}: {error}") from error
    if kind != FileType.File:
        raise CheckpointError(
            f"Checkpoint not found: {uri} is neither a checkpoint file nor a folder holding one."
        )
    return uri


def _open(file: str) -> BinaryIO:
    if not is_uri(file):
        return open(file, "rb")  # closed by the caller's `with`
    filesystem, path = FileSystem.from_uri(file)
    with filesystem.open_input_file(path) as stream:
        return io.BytesIO(stream.read())
