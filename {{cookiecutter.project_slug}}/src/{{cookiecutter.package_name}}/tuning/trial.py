"""One Ray Tune trial = one Hydra job: its own numbered folder, composed config and task function.

The trial composes its config the way Hydra's own launcher does (`load_sweep_config` with the
trial's overrides) and calls the same task function as a single run, so each trial is a Ray
Train run with its own scaling group, `.hydra/` folder, TensorBoard logs and result.json.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from ray import tune

from .. import teardown
from ..checkpoints import CHECKPOINT_FILE
from ..data import PreparedData, reuse_prepared
from ..data.sources import is_uri, resolve_path
from ..training import tracker_env
from ..training.run import trained_epochs
from .reporting import reporting_to_tune
from .space import SearchSpace


@dataclass
class TrialContext:
    """Everything a trial needs from the sweep's driver (shipped to the trial by Ray)."""

    config: DictConfig
    hydra_context: HydraContext
    task_function: TaskFunction
    space: SearchSpace
    # Hydra's process-wide state (job name, config store): a trial runs in another process.
    hydra_state: Any = None
    # The sweep's data, prepared once by the driver; used by the trials that keep its config.
    data: PreparedData | None = None
    # The trackers' credentials set in the driver (training/tracker_env.py), by reference.
    tracker_env: Any = None


TRIAL_DIR_PREFIX = "trial_"


class TrialNumbers:
    """Names Tune's trial folders `trial_0`, `trial_1`, ... in the order trials are created.

    The number is also the trial's Hydra job number (its folder in the sweep dir). Tune's trial
    ids cannot serve: search algorithms such as Optuna make random ones. A resumed sweep goes
    on from the highest number already used.
    """

    def __init__(self, experiment_dir: Path) -> None:
        used = [job_number(path) for path in experiment_dir.glob(f"{TRIAL_DIR_PREFIX}*")]
        self.next = max(used, default=-1) + 1

    def __call__(self, trial: Any) -> str:
        self.next += 1
        return f"{TRIAL_DIR_PREFIX}{self.next - 1}"

    def __deepcopy__(self, memo: dict) -> "TrialNumbers":
        # Tune deep-copies the experiment spec, this counter with it, for every trial it
        # creates: copies would all start from the same number. One counter per sweep.
        return self


def job_number(trial_dir: str | Path) -> int:
    """The job number of a trial, from its folder name (`trial_3` -> 3)."""
    return int(Path(trial_dir).name.removeprefix(TRIAL_DIR_PREFIX))


def trial_storage(storage_path: str, trial_dir: str, subdir: str) -> str:
    """Where a trial's Ray Train run keeps its checkpoints and run state.

    `storage_path` itself when it lies in the trial's own folder (the default,
    `${paths.output_dir}`). Otherwise one storage path (a bucket, a shared folder) was given for
    the whole sweep: each trial then gets its own folder in it, named like its folder in the
    sweep dir (`<storage_path>/<job number>`), so that no trial resumes from or overwrites
    another's run of the same name.
    """
    storage = resolve_path(storage_path)
    trial_dir = resolve_path(trial_dir)
    if not is_uri(storage) and (storage == trial_dir or storage.startswith(trial_dir + os.sep)):
        return storage
    return f"{storage.rstrip('/')}/{subdir}"


def compose_trial(
    sweep_config: DictConfig,
    hydra_context: HydraContext,
    space: SearchSpace,
    params: dict[str, Any],
    number: int,
) -> DictConfig:
    """Trial `number`'s config as its Hydra job sees it: the sweep's config with the trial's
    values (`params`), numbered, in its own folder of the sweep dir. Before the job runs, and
    again for the best trial once the sweep is over (tuning/evaluation.py)."""
    overrides = space.trial_overrides(params)
    config = hydra_context.config_loader.load_sweep_config(sweep_config, overrides)
    with open_dict(config):
        # hydra.utils.get_original_cwd(), on any machine
        config.hydra.runtime.cwd = sweep_config.hydra.runtime.cwd
        config.hydra.sweep.dir = sweep_config.hydra.sweep.dir  # made absolute by run_sweep
        config.hydra.job.id = number
        config.hydra.job.num = number
        output_dir = Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)  # as run_job sets it
    return config


def run_trial(sampled: dict[str, Any], context: TrialContext) -> Any:
    """The Tune function trainable: run the trial's Hydra job, reporting every epoch to Tune."""
    teardown.exit_quietly_on_sigterm()  # a trial process ended as the sweep's driver leaves
    Singleton.set_state(context.hydra_state)
    tracker_env.receive(context.tracker_env)
    setup_globals()
    if context.data is not None:
        reuse_prepared(context.config.data, context.config.task, context.data)
    number = job_number(tune.get_context().get_trial_dir())
    # Tune starts each trial in a working folder of its own. Work where the sweep was started,
    # so that relative paths (the default results folder, a data file, a checkpoint) mean what
    # they mean in the sweep's command, as in Hydra's own launcher.
    launch_dir = context.config.hydra.runtime.cwd
    if os.path.isdir(launch_dir):  # not on another machine of a cluster
        os.chdir(launch_dir)
    config = compose_trial(context.config, context.hydra_context, context.space, sampled, number)
    with open_dict(config):
        restart = tune.get_checkpoint()
        if restart is not None:
            # Resumed after an interruption or a pause, or handed another trial's checkpoint by
            # PBT: start a fresh Train run from that checkpoint.
            config.resume_from = os.path.join(restart.path, CHECKPOINT_FILE)
            config.run_name = f"{config.run_name}-from-{Path(restart.path).name}"
            if trained_epochs(config.resume_from) >= config.trainer.max_epochs:
                # Paused (PBT pauses trials to let others run) or interrupted after its last
                # epoch: nothing is left to train. Tune has its results, its folder its summary.
                return None
    output_dir = str(config.hydra.runtime.output_dir)
    HydraConfig.instance().set_config(config)
    storage = trial_storage(config.paths.storage_path, output_dir, str(config.hydra.sweep.subdir))
    if storage != resolve_path(config.paths.storage_path):
        with open_dict(config):
            config.paths.storage_path = storage
    last_epoch = int(config.trainer.max_epochs)  # reports count epochs from 1
    with reporting_to_tune(last_epoch=last_epoch, output_dir=output_dir) as reporter:
        job = run_job(
            hydra_context=context.hydra_context,
            task_function=context.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    if job.status == JobStatus.FAILED:
        raise job._return_value
    # The job has written its result.json: Tune may now end this process.
    reporter.report_last_epoch()
    return None
