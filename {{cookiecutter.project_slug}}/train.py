"""Train a model: `python train.py [group=option ...] [key=value ...]`.

One entry point for everything: a single run (the default), a Ray Tune sweep (`-m search=asha`),
serving (`serve=local`) and batch prediction (`predict=batch predict.checkpoint=<run folder>`).
Configs live in configs/; README.md lists the common overrides.
"""

import gc
import logging
import sys

import hydra
from omegaconf import DictConfig

# Goes to the run's train.log alone (configs/hydra/default.yaml): Hydra prints errors itself.
failure_log = logging.getLogger("failure")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except Exception:
        failure_log.exception("The run failed")
        raise


def run(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg job` answer without loading torch and Ray.
    if cfg.predict.name != "none":
        from {{ cookiecutter.package_name }}.data.prediction import predict

        predict(cfg)
        return None

    serving = cfg.serve.name != "none"
    if serving and cfg.serve.only:  # serve an existing checkpoint, no training
        return serve(cfg, cfg.ckpt_path)

    from {{ cookiecutter.package_name }}.training import train

    summary = train(cfg)
    if serving:
        serve(cfg, summary["best_checkpoint"])
    return summary["metrics"].get(cfg.checkpoint.metric)


def serve(cfg: DictConfig, checkpoint: str | None) -> None:
    """Serve `checkpoint` over HTTP with Ray Serve until Ctrl-C."""
    from {{ cookiecutter.package_name }}.serving import serve_checkpoint

    serve_checkpoint(cfg, checkpoint)


def finish() -> None:
    """End the process promptly once `main` has returned: its results are written and closed.

    Ray's own exit hook pauses half a second for output still on its way from the cluster's
    processes before it stops them; by now the run has printed and written its summary (Ray
    Train and Tune have waited for their workers), so Ray stops here without the pause. Then
    Python's exit would walk every object that torch, Lightning and Ray created (hundreds of
    thousands) in a last garbage collection, a second or more, only to free memory the system
    frees anyway: frozen objects are left out of it. Other exit hooks (the trackers') still run.
    """
    ray = sys.modules.get("ray")  # not imported by `--help` or `--cfg job`
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    gc.freeze()


if __name__ == "__main__":
    main()
    finish()
