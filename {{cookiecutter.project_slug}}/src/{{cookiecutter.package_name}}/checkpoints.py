"""Trained checkpoints: where they are, and rebuilding their network without unpickling code.

Training writes them (training/callbacks.py, training/run.py); batch prediction
(data/prediction.py) and serving (serving/) read them through `resolve` and `load`.
"""

import importlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from hydra.errors import CompactHydraException
from pyarrow.fs import FileSystem, FileType
from torch import nn

from . import models
from .config.validation import first_line
from .data.preprocessing import InputTransform, inputs_from_state, load_transform
from .data.sources import is_uri, resolve_path
from .tasks import Classification, Task, load_task

# The Lightning checkpoint in every Ray checkpoint folder, and the run summary in a run folder.
CHECKPOINT_FILE = "checkpoint.ckpt"
RESULT_FILE = "result.json"


class CheckpointError(CompactHydraException, RuntimeError):
    """The checkpoint is missing, unreadable or lacks what prediction and serving need.

    Compact: `train.py` prints the message alone, without a traceback.
    """


# Where every checkpoint keeps what rebuilds its model for inference: the model's config and
# kind, the data's input shape, the task and the input transform, as plain values.
PROJECT_KEY = "project"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, the input transform and task it was trained with, and what
    the API tells clients about it."""

    model: nn.Module
    transform: InputTransform
    task: Task
    path: str
    model_name: str
    model_config: dict[str, Any]
    device: str = "cpu"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.transform.input_shape)

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task's predictions (`prediction`, maybe `probabilities`), on the CPU."""
        outputs = self.model(inputs.to(self.device))
        return {name: value.cpu() for name, value in self.task.predict(outputs).items()}


def is_placeholder(value: Any) -> bool:
    """True for the value reported in place of a metric the model never logs (the worst one:
    training/callbacks.py RayReportCallback); summaries leave it out."""
    return isinstance(value, float) and math.isinf(value)


def project_state(
    model_config: dict[str, Any],
    kind: str,
    input_shape: Sequence[int] | None,
    num_outputs: int | None,
    task: dict[str, Any],
    inputs: dict[str, Any] | None,
) -> dict[str, Any]:
    """What every checkpoint stores under PROJECT_KEY (plain values only)."""
    return {
        "model": model_config,
        "kind": kind,  # "network": a plain nn.Module in TaskModule; "module": a LightningModule
        "input_shape": None if input_shape is None else [int(size) for size in input_shape],
        "num_outputs": num_outputs,
        "task": task,
        "inputs": inputs,
    }


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
        raise CheckpointError(f"Cannot read checkpoint {file}: {first_line(error)}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{file} is not a Lightning checkpoint (no state_dict).")
    state = checkpoint.get(PROJECT_KEY) or _state_before_tasks(checkpoint, file)
    if not state.get("inputs"):
        raise CheckpointError(
            f"{file} does not say what inputs its model takes (it saved no training batch)."
        )
    try:
        transform = inputs_from_state(state["inputs"])
        task = load_task(state["task"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{file}: cannot rebuild its inputs or task: {error}") from error
    model_config = dict(state["model"])
    model = build_network(model_config, state, source=file)
    weights = checkpoint["state_dict"]
    if state["kind"] == "network":
        # TaskModule keeps the network under `net.`; inference needs the network alone.
        weights = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{file} does not fit the model it describes: {error}") from error
    return LoadedModel(
        model=model.to(device).eval(),
        transform=transform,
        task=task,
        path=file,
        model_name=type(model).__name__,
        model_config=model_config,
        device=device,
    )


def _state_before_tasks(checkpoint: dict[str, Any], file: str) -> dict[str, Any]:
    """The project state of a checkpoint written before tasks existed (classification only):
    the network under hyper_parameters.architecture, the inputs under `data`."""
    architecture = checkpoint.get("hyper_parameters", {}).get("architecture")
    if not architecture:
        raise CheckpointError(
            f"{file} does not say how to rebuild its model (no '{PROJECT_KEY}' entry): it was "
            f"not written by this project's training loop. Train again to serve it."
        )
    try:
        inputs = load_transform(checkpoint).state()
    except KeyError as error:
        raise CheckpointError(f"{file}: {error.args[0]}") from error
    num_classes = int(architecture["num_classes"])
    return project_state(
        architecture["model"],
        "network",
        architecture["input_shape"],
        num_classes,
        Classification(num_classes).state(),
        inputs,
    )


def build_network(model_config: dict[str, Any], state: dict[str, Any], source: str) -> nn.Module:
    """The network or LightningModule class named by `_target_`, built with the saved settings.

    Not Hydra's `instantiate`: `_target_` comes from the checkpoint, and instantiate would call
    any function it names. Only classes from this project's models package qualify, and a
    checkpoint of kind "module" must name a LightningModule.
    """
    target = str(model_config.get("_target_", ""))
    module_name, _, class_name = target.rpartition(".")
    package = models.__name__
    if not (module_name == package or module_name.startswith(package + ".")):
        raise CheckpointError(
            f"{source} names the model {target!r}; serving only builds models from {package}."
        )
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise CheckpointError(f"{source} names the model {target!r}: {error}") from error
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise CheckpointError(f"{source} names {target!r}, which is not an nn.Module class.")
    if (state["kind"] == "module") != models.is_lightning_module(model_class):
        raise CheckpointError(f"{source}: {target!r} is not the kind of model it was saved as.")
    settings = {key: value for key, value in model_config.items() if not key.startswith("_")}
    sizes = models.size_arguments(model_class, state.get("input_shape"), state.get("num_outputs"))
    try:
        return model_class(**settings, **sizes)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{source}: cannot build {target} from {settings}: {error}"
        ) from error


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
