"""Offline batch prediction: score a dataset with a trained checkpoint, write parquet.

`python train.py predict=batch predict.checkpoint=<run folder> [data=... data.source.path=...]`
reads the rows from the `data` group's source (any file option works, labels are optional; for
images any folder of them, with or without class subfolders), applies the checkpoint's own
preprocessing, and scores them with a pool of Ray actors that each load the model once. The
output keeps every column that is not an input (ids, labels, image paths) and adds what the
task predicts: `prediction` (a class index or a value) and, for classification,
`probabilities` (one value per class).
"""

import logging
import os
from typing import Any

import pandas as pd
import ray.data
import torch
from omegaconf import DictConfig

from ..checkpoints import load, resolve
from ..config import ConfigError, validate
from ..training import cluster
from .pipeline import build_source, uses_ray_data
from .sources import DataError, columns, is_uri, resolve_path

log = logging.getLogger(__name__)


class FinishedJobCpuWarning(logging.Filter):
    """Drops Ray Data's "no available CPUs ... The Dataset job will hang" warning.

    Writing checks the cluster's free CPUs once more after the rows are scored, while the
    scoring actors still hold theirs, and prints the warning for a job that has finished.
    `predict` checks for free CPUs itself before scoring starts, when the warning means it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()


logging.getLogger("ray.data.dataset").addFilter(FinishedJobCpuWarning())


class Scorer:
    """Ray Data actor: loads the checkpoint once, then scores batches of rows."""

    def __init__(self, checkpoint_file: str, use_gpu: bool) -> None:
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load(checkpoint_file, device=device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        transform = self.model.transform
        inputs = torch.from_numpy(transform.from_batch(batch))
        scored = batch.drop(columns=list(transform.input_columns))
        for name, values in self.model.predict(inputs).items():
            values = values.numpy()
            # Python lists make a plain list<float> parquet column that any reader understands.
            scored[name] = values.tolist() if values.ndim > 1 else values
        return scored


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Score `cfg.data.source` with `cfg.predict.checkpoint`; write parquet to predict.output."""
    validate(cfg)
    settings = cfg.predict
    checkpoint_file = resolve(settings.checkpoint)
    transform = load(checkpoint_file).transform  # fails here, not in every actor, if unusable
    output = resolve_path(settings.output)
    if not is_uri(output) and os.path.isdir(output) and os.listdir(output):
        raise ConfigError(
            f"predict.output: {output} already holds files; choose another folder or remove it"
        )
    if not uses_ray_data(cfg.data):
        raise ConfigError(
            "predict=batch reads the rows to score with the `data` group's source: choose a "
            "data option with one (e.g. data=parquet data.source.path=...)"
        )
    source = build_source(cfg.data)
    if transform.kind != "image":
        source.check()  # before Ray starts

    cluster.connect(cfg.ray)
    if not ray.available_resources().get("CPU"):
        log.warning(
            "No CPU of the Ray cluster is free now (Serve replicas, another job?): the scoring "
            "waits until one is. Free one, or score on a larger cluster (ray.address=...)."
        )
    if transform.kind == "image":
        # Read at the size and colour mode the model was trained on, whatever the data option
        # says: the checkpoint's transform decides what an input is.
        source.size, source.mode = (transform.height, transform.width), transform.mode
        table = source.read_unlabelled()
    else:
        table = source.read()
    missing = [c for c in transform.input_columns if c not in table.schema().names]
    if missing:
        raise DataError(
            f"the checkpoint's model needs the input column(s) {columns(missing)}, which the "
            f"data to score does not have; it has: {columns(table.schema().names)}"
        )
    scored = table.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "checkpoint_file": checkpoint_file,
            "use_gpu": settings.gpus_per_actor > 0,
        },
        # Starting with one actor and growing leaves CPUs for the read tasks that feed the pool:
        # a fixed pool as large as the cluster would take them all and wait forever.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=settings.num_actors),
        batch_size=settings.batch_size,
        batch_format="pandas",
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor,
        max_restarts=settings.max_restarts,  # configs/predict/batch.yaml says why 0
    )
    scored.write_parquet(output)
    summary = {"checkpoint": checkpoint_file, "output": output}
    log.info("Predictions written to %s", output)
    return summary
