"""Checkpoints of a run in one process (`scaling=local`), kept the way Ray Train keeps them.

Ray Train's local mode runs the training loop in the calling process and persists nothing: the
project keeps the checkpoints itself, in the run folder Ray Train would use
(`<paths.storage_path>/<run_name>`), by the `checkpoint` policy: the best `num_to_keep` by
`metric`, and always the latest, from which a run started again in the same folder resumes.

Each checkpoint is a folder `checkpoint_epoch_<N>` (N: the epochs trained) holding the Lightning
checkpoint and the metrics of its epoch. It is written under a temporary name and renamed when
complete: a run interrupted while writing one leaves no half checkpoint to resume from.
"""

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..checkpoints import CHECKPOINT_FILE, is_placeholder

METRICS_FILE = "metrics.json"
PREFIX = "checkpoint_epoch_"
PARTIAL = ".partial-"


class CheckpointFolder:
    """The checkpoints of one run folder, and the policy that keeps them."""

    def __init__(
        self, run_dir: str | Path, num_to_keep: int | None, metric: str, mode: str
    ) -> None:
        self.run_dir = Path(run_dir)
        self.num_to_keep = num_to_keep
        self.metric = metric
        self.mode = mode

    @classmethod
    def with_policy(cls, run_dir: str | Path, checkpoint: Mapping[str, Any]) -> "CheckpointFolder":
        """The folder `run_dir` kept by the run's `checkpoint` config."""
        return cls(run_dir, checkpoint["num_to_keep"], checkpoint["metric"], checkpoint["mode"])

    def save(self, metrics: dict[str, Any], write: Callable[[str], None]) -> str:
        """Write a checkpoint of the epoch `metrics` describe with `write(file path)`, keep it
        and prune by the policy; returns its folder."""
        epochs = int(metrics["epoch"])
        final = self.run_dir / f"{PREFIX}{epochs:04d}"
        partial = self.run_dir / f"{PARTIAL}{final.name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write(str(partial / CHECKPOINT_FILE))
        (partial / METRICS_FILE).write_text(json.dumps(_finite(metrics), sort_keys=True))
        shutil.rmtree(final, ignore_errors=True)  # an older run's, if this one went back
        os.replace(partial, final)
        self._prune()
        return str(final)

    def checkpoints(self) -> list[tuple[str, dict[str, Any]]]:
        """The complete checkpoints as (folder, metrics), oldest first; leftovers of an
        interrupted write are removed."""
        if not self.run_dir.is_dir():
            return []
        for leftover in self.run_dir.glob(f"{PARTIAL}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        found = []
        for folder in sorted(self.run_dir.glob(f"{PREFIX}*")):
            try:
                metrics = json.loads((folder / METRICS_FILE).read_text())
            except (OSError, ValueError):
                continue  # not one of ours, or damaged: never resumed from
            if (folder / CHECKPOINT_FILE).is_file():
                found.append((str(folder), metrics))
        return found

    def latest(self) -> str | None:
        """The Lightning checkpoint file to resume from, if the run has one."""
        kept = self.checkpoints()
        return os.path.join(kept[-1][0], CHECKPOINT_FILE) if kept else None

    def best(
        self, kept: list[tuple[str, dict[str, Any]]] | None = None
    ) -> tuple[str, dict[str, Any]] | None:
        """The best of `kept` (default: this folder's checkpoints) by the policy's metric; the
        latest if the model does not log it."""
        kept = self.checkpoints() if kept is None else kept
        ranked = [entry for entry in kept if _value(entry[1], self.metric) is not None]
        if not ranked:
            return kept[-1] if kept else None
        pick = min if self.mode == "min" else max
        return pick(reversed(ranked), key=lambda entry: _value(entry[1], self.metric))

    def _prune(self) -> None:
        kept = self.checkpoints()
        if self.num_to_keep is None or len(kept) <= self.num_to_keep:
            return
        latest = kept[-1]
        sign = 1 if self.mode == "min" else -1

        def rank(entry: tuple[str, dict[str, Any]]) -> float:
            value = _value(entry[1], self.metric)
            return math.inf if value is None else sign * value

        # Ties (a metric the model does not log) keep the newer checkpoints.
        ordered = sorted(reversed(kept), key=rank)
        keep = {folder for folder, _ in ordered[: self.num_to_keep]} | {latest[0]}
        for folder, _ in kept:
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)


def _value(metrics: dict[str, Any], metric: str) -> float | None:
    value = metrics.get(metric)
    if not isinstance(value, int | float) or is_placeholder(value) or math.isnan(value):
        return None
    return float(value)


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: a placeholder for a metric the model does not log is left out."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isinf(v))}
