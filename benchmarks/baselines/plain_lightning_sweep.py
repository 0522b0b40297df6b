"""Baseline: Hydra's basic multirun over the plain Lightning script, what a researcher runs
without this template: `python my_script.py -m optimizer.lr=...`, one job after another in one
process, no Ray.

A Hydra entry point around `plain_lightning.fit`, composing the generated project's own configs
(so every override means what it means to train.py; `search=none` keeps Hydra's basic sweeper):

    BENCH_PACKAGE=research_project python -m benchmarks.baselines.plain_lightning_sweep \\
        --config-dir build/bench/research-project/configs --config-name train \\
        -m optimizer.lr=0.001,0.01 trainer.max_epochs=8 hydra.sweep.dir=/tmp/sweep

Each job trains with torch's default threads (all cores: the jobs run one at a time; the
environment's BENCH_THREADS, if set, says how many) and leaves
its TensorBoard events in `<job dir>/tensorboard` and its checkpoints in `<job dir>/checkpoints`,
as a project run does, plus the last epoch's metrics in `<job dir>/result.json`.
"""

import json
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .common import set_threads
from .plain_lightning import fit


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    set_threads(int(os.environ.get("BENCH_THREADS") or 0))
    folder = HydraConfig.get().runtime.output_dir
    metrics = fit(
        cfg,
        os.environ["BENCH_PACKAGE"],
        os.path.join(folder, "tensorboard"),
        os.path.join(folder, "checkpoints"),
    )
    with open(os.path.join(folder, "result.json"), "w") as file:
        json.dump({"metrics": metrics}, file, indent=2)


if __name__ == "__main__":
    main()
