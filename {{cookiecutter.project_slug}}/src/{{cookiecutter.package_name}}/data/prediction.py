"""Offline batch prediction: score a dataset with a trained checkpoint, write parquet.

`python train.py predict=batch predict.checkpoint=<run folder> [data=... data.source.path=...]`
reads the rows from the `data` group's source (any file option works, labels are optional),
applies the checkpoint's own preprocessing, and scores them with a pool of Ray actors that each
load the model once. The output keeps every column that is not a feature (ids, labels) and adds
`prediction` (the class index) and `probabilities` (one value per class).
"""

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray.data
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..training import cluster
from ..training.callbacks import CHECKPOINT_FILE
from ..training.run import RESULT_FILE
from .pipeline import build_source
from .preprocessing import CHECKPOINT_KEY, load_transform
from .sources import is_uri, resolve_path

log = logging.getLogger(__name__)


def find_checkpoint(path: str) -> Path:
    """The checkpoint file of a run folder, of a checkpoint folder, or the file itself.

    A run folder (one with result.json) stands for its best checkpoint, or its latest if no
    checkpoint was ranked.
    """
    given = Path(resolve_path(path))
    if given.is_file():
        return given
    if (given / RESULT_FILE).is_file():
        summary = json.loads((given / RESULT_FILE).read_text())
        chosen = summary.get("best_checkpoint") or summary.get("latest_checkpoint")
        if chosen is None:
            raise FileNotFoundError(f"the run in {given} has no checkpoint (see its result.json)")
        return Path(chosen) / CHECKPOINT_FILE
    if (given / CHECKPOINT_FILE).is_file():
        return given / CHECKPOINT_FILE
    raise FileNotFoundError(
        f"predict.checkpoint: {given} is neither a run folder (with {RESULT_FILE}), a checkpoint "
        f"folder (with {CHECKPOINT_FILE}) nor a checkpoint file"
    )


def model_config(checkpoint: Mapping[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """The network's config: the one saved in the checkpoint, else the composed `model` group."""
    architecture = checkpoint.get("hyper_parameters", {}).get("architecture")
    if architecture:
        return dict(architecture["model"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def load_network(checkpoint: Mapping[str, Any], network_cfg: Mapping[str, Any]) -> torch.nn.Module:
    """The trained network (without the Lightning wrapper), in eval mode."""
    data = checkpoint[CHECKPOINT_KEY]
    net = instantiate(
        dict(network_cfg), input_shape=tuple(data["input_shape"]), num_classes=data["num_classes"]
    )
    # The LightningModule keeps the network under `net`; its state_dict keys say so.
    weights = {
        key.removeprefix("net."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("net.")
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise RuntimeError(
            f"the checkpoint's weights do not fit model={network_cfg.get('_target_')}; pass the "
            f"model options it was trained with"
        ) from error
    return net.eval()


class Scorer:
    """Ray Data actor: loads the checkpoint once, then scores batches of table rows."""

    def __init__(self, checkpoint_file: str, network_cfg: dict[str, Any], use_gpu: bool) -> None:
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
        self.transform = load_transform(checkpoint)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.net = load_network(checkpoint, network_cfg).to(self.device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        columns = list(self.transform.feature_columns)
        inputs = torch.from_numpy(self.transform(batch[columns].to_numpy()))
        with torch.inference_mode():
            probabilities = torch.softmax(self.net(inputs.to(self.device)), dim=1).cpu().numpy()
        scored = batch.drop(columns=columns)
        scored["prediction"] = probabilities.argmax(axis=1).astype(np.int64)
        # Python lists make a plain list<float> parquet column that any reader understands.
        scored["probabilities"] = probabilities.tolist()
        return scored


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Score `cfg.data.source` with `cfg.predict.checkpoint`; write parquet to predict.output."""
    settings = cfg.predict
    checkpoint_file = find_checkpoint(settings.checkpoint)
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    transform = load_transform(checkpoint)
    network_cfg = model_config(checkpoint, cfg)
    output = resolve_path(settings.output)
    if not is_uri(output) and os.path.isdir(output) and os.listdir(output):
        raise FileExistsError(
            f"predict.output: {output} already holds files; choose another folder or remove it"
        )

    cluster.connect(cfg.ray)
    table = build_source(cfg.data).read()
    missing = [c for c in transform.feature_columns if c not in table.schema().names]
    if missing:
        raise KeyError(
            f"the checkpoint's model needs the feature column(s) {', '.join(missing)}, which the "
            f"data to score does not have; it has: {', '.join(table.schema().names)}"
        )
    scored = table.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "checkpoint_file": str(checkpoint_file),
            "network_cfg": network_cfg,
            "use_gpu": settings.gpus_per_actor > 0,
        },
        # Starting with one actor and growing leaves CPUs for the read tasks that feed the pool:
        # a fixed pool as large as the cluster would take them all and wait forever.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=settings.num_actors),
        batch_size=settings.batch_size,
        batch_format="pandas",
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor,
    )
    scored.write_parquet(output)
    summary = {"checkpoint": str(checkpoint_file), "output": output}
    log.info("Predictions written to %s", output)
    return summary
