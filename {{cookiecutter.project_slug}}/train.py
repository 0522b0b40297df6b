"""Train a model: `python train.py [group=option ...] [key=value ...]`.

One entry point for everything: a single run (the default), a Ray Tune sweep (`-m search=asha`)
and serving (`serve=local`). Configs live in configs/; README.md lists the common overrides.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg job` answer without loading torch and Ray.
    from {{ cookiecutter.package_name }}.training import train

    summary = train(cfg)
    return summary["metrics"].get(cfg.checkpoint.metric)


if __name__ == "__main__":
    main()
