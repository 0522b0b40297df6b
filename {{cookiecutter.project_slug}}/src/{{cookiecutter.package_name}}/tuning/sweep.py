"""The sweep driver: a Hydra multirun becomes one Ray Tune experiment."""

import logging
import os
from pathlib import Path
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.sample import Domain

from .. import logs
from ..config import ConfigError, validate
from ..data import build_source, prepare
from ..data.pipeline import uses_ray_data
from ..models import is_lightning_module, model_class
from ..training import cluster, tracker_env
from ..training.loggers import check_trackers
from ..training.run import check_model
from . import results
from .evaluation import evaluate_best_trial
from .space import SearchSpace, SearchSpaceError, build
from .trial import TrialContext, TrialNumbers, job_number, run_trial

log = logging.getLogger(__name__)

# Trials log to TensorBoard themselves (one folder per Hydra job), so Tune's own TensorBoard
# logger is left out; its JSON and CSV loggers are added back by hand (they hold the history).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# A failed trial's traceback goes to its error.txt, and the console gets one line naming the error
# and that file (SweepMonitor) rather than the whole traceback (TUNE_PRINT_ALL_TRIAL_ERRORS=1
# prints those too, as Tune does by default).
os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
# Tune's console output: SweepMonitor prints a line per trial start, result and end instead.
# Tune's current output engine prints its experiment box and "Trial ... completed" (also for a
# trial a scheduler stopped) at any verbosity; its legacy engine, at verbose=0, prints nothing.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune warns, advising fewer checkpoints, when it saves the experiment's state several times
# within 5 s: it does so whenever a trial checkpoints (`checkpoints_per_trial` is set), and
# short trials do that often. Here those saves are small local files (0.06 s in all over an
# 8-trial digits sweep): the advice does not apply.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

EXPERIMENT_NAME = "tune"


class TuneRestoreHint(logging.Filter):
    """Drops Ray Tune's "Resume experiment with: Tuner.restore(...)" on Ctrl-C: this sweep
    resumes with `search.resume=true`, as its own last message (SweepStopped) says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(TuneRestoreHint())


class SweepFailed(CompactHydraException, RuntimeError):
    """No trial of the sweep succeeded (printed without a traceback, after the summary)."""


class SweepStopped(CompactHydraException, RuntimeError):
    """The sweep ended before all its trials finished (Ctrl-C, too many failures); its message
    says how to resume it."""


class SweepMonitor(tune.Callback, tune.Stopper):
    """Follows trials as they start, report, finish and fail, a console line each (Tune's own
    output is off: multi-line tables, and "completed" for a trial a scheduler stopped); stops
    the sweep after too many failures."""

    def __init__(self, max_failed: int, max_epochs: int) -> None:
        self.max_failed = max_failed
        self.max_epochs = max_epochs
        self.status: dict[int, str] = {}  # job number -> running, finished or error
        self.history: dict[int, list[dict]] = {}  # job number -> every result, as reported
        self.progress = logs.progress_logger()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        row = {key: value for key, value in result.items() if isinstance(value, int | float | str)}
        number = job_number(trial.custom_dirname)
        self.history.setdefault(number, []).append(row)
        self.progress.info(results.result_line(number, trial.config, row, self.max_epochs))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = job_number(trial.custom_dirname)
        self.status[number] = "running"
        self.progress.info("trial %s started: %s", number, results.trial_values(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = job_number(trial.custom_dirname)
        self.status[number] = "finished"
        epochs = int((trial.last_result or {}).get("epoch") or 0)
        if epochs < self.max_epochs:
            self.progress.info(
                "trial %s stopped after %s of %s epochs", number, epochs, self.max_epochs
            )
        else:
            self.progress.info("trial %s finished its %s epochs", number, epochs)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.status[job_number(trial.custom_dirname)] = "error"
        failed = list(self.status.values()).count("error")
        log.error(
            "Trial %s failed (%d so far; the sweep stops after %d): %s",
            job_number(trial.custom_dirname),
            failed,
            self.max_failed + 1,
            _trial_error(trial),
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.warning(
            "Trial %s failed and starts again: %s",
            job_number(trial.custom_dirname),
            _trial_error(trial),
        )

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return list(self.status.values()).count("error") > self.max_failed

    def interrupted(self) -> list[int]:
        """Trials started in this session that neither finished nor failed."""
        return sorted(number for number, status in self.status.items() if status == "running")


def _trial_error(trial: Any) -> str:
    """The telling line of a trial's latest error, and where its traceback is kept. Tune has
    just written it to the trial's error file here, and copies it to the sweep's folder."""
    written = Path(trial.error_file) if trial.error_file else None
    text = written.read_text() if written and written.is_file() else "(no error file)"
    return f"{results.error_line(text)} (traceback: {trial.path}/{results.ERROR_FILE})"


OPTIMIZER_GROUPS = ("optimizer", "scheduler")


def _params_for_model(
    config: DictConfig, arguments: list[str], params: dict[str, Any]
) -> dict[str, Any]:
    """`search.params` without the optimizer settings when the model is a LightningModule of
    yours: its `configure_optimizers` rules, so varying `optimizer.lr` would change nothing.
    Such a key given on the command line stops the sweep instead."""
    if not is_lightning_module(model_class(config.model)):
        return params
    name = config.model._target_.rsplit(".", 1)[-1]
    given = [a.split("=", 1)[0] for a in arguments if a.split(".", 1)[0] in OPTIMIZER_GROUPS]
    if given:
        raise SearchSpaceError(
            f"{name} configures its own optimizer, so sweeping {', '.join(given)} changes "
            "nothing: sweep its own settings instead, e.g. model.lr=tag(log, interval(1e-4, 0.1))"
        )
    kept = {k: v for k, v in params.items() if k.split(".", 1)[0] not in OPTIMIZER_GROUPS}
    if len(kept) < len(params):
        log.info(
            "%s configures its own optimizer: search.params' %s left out of the sweep",
            name,
            ", ".join(k for k in params if k not in kept),
        )
    return kept


def run_sweep(
    *,
    config: DictConfig,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    arguments: list[str],
) -> dict[str, Any]:
    """Run the multirun of `arguments` as a Ray Tune experiment and write its results."""
    validate(config)
    check_trackers(config)  # a tracker's server that does not answer: stop before Ray starts
    search = config.search
    sweep_dir = Path(config.hydra.sweep.dir).resolve()
    with open_dict(config):
        config.hydra.sweep.dir = str(sweep_dir)  # the same folder for every trial, wherever it runs
    check_sweep_folder(sweep_dir, bool(search.resume))

    params = search.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    params = _params_for_model(config, arguments, params)
    space = build(
        arguments, params, shuffle_grid=bool(search.get("shuffle_grid")), seed=int(config.seed)
    )
    search_alg = instantiate(search.search_alg) if search.get("search_alg") else None
    if space.has_grid and not isinstance(search_alg, BasicVariantGenerator | None):
        raise SearchSpaceError(
            f"search={search.name} samples its own points, so it cannot run a comma list "
            "(`key=a,b` means every value). Write `key=choice(a,b)` to let it choose, or use "
            "search=random or search=asha to run every value."
        )
    num_samples = space.repeats(int(search.num_samples))
    scheduler = make_scheduler(search.get("scheduler"), space)
    if uses_ray_data(config.data):
        build_source(config.data).check()

    cluster.check_fits_here(config.scaling, config.ray)
    cluster.connect(config.ray)
    autoscaling = bool(config.ray.autoscaling)
    cluster.check_fits(config.scaling, autoscaling=autoscaling)
    concurrency = search.get("max_concurrent_trials")
    if not autoscaling:
        fits = cluster.max_concurrent_groups(config.scaling)
        concurrency = min(concurrency, fits) if concurrency else fits
    tune_limit = concurrency
    if isinstance(search_alg, BasicVariantGenerator) and concurrency:
        # Tune applies max_concurrent_trials only to a generator it creates itself (and warns
        # that it ignores it for this one): the generator keeps the limit.
        search_alg.max_concurrent = concurrency
        tune_limit = None

    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    # Once here rather than in every trial (most keep the sweep's data config); a bad data
    # config also stops the sweep now, before any trial starts.
    # Trials that are retried, or restart their workers, must find the data after a node is
    # lost: see prepare's `keep_here`.
    keep_here = bool(search.get("trial_retries")) or config.fault_tolerance.max_failures != 0
    data = prepare(config.data, config.task, keep_here) if uses_ray_data(config.data) else None
    if data is not None and not space.varies("model", "data", "task"):
        # Every trial builds this network for these inputs: a mismatch stops the sweep now,
        # in one message, rather than each trial in turn with a traceback.
        check_model(
            config.model, data.input_shape, data.num_outputs, forward=not config.scaling.use_gpu
        )
    context = TrialContext(
        config,
        hydra_context,
        task_function,
        space,
        Singleton.get_state(),
        data,
        tracker_env.ship(),  # a trial on another machine needs the driver's credentials
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), trial_resources(config.scaling)
    )
    monitor = SweepMonitor(int(search.max_failed_trials), int(config.trainer.max_epochs))
    tuner = make_tuner(
        search, trainable, space, num_samples, scheduler, search_alg, tune_limit, monitor, sweep_dir
    )
    if num_samples < search.num_samples:
        log.info(
            "Nothing is sampled, so each configuration runs once, not search.num_samples=%s "
            "times (the same trial with the same seed); to repeat with other seeds, sweep "
            "seed=0,1,2",
            search.num_samples,
        )
    log.info(
        "Ray Tune sweep %s: %s trials, up to %s at once; sweeps %s; fixed %s",
        search.name,
        space.num_trials(num_samples),
        concurrency,
        space.describe(),
        " ".join(space.fixed) or "nothing",
    )
    grid = tuner.fit()
    rows, histories = results.summarize_trials(
        grid,
        search.metric,
        search.mode,
        int(config.trainer.max_epochs),
        sweep_dir,
        interrupted=monitor.interrupted(),
        seen=monitor.history,
        early_stopping=scheduler is not None and not isinstance(scheduler, PopulationBasedTraining),
    )
    # Chosen by the search metric alone; then its best checkpoint meets the test split, once.
    best = results.best_trial(rows, search.mode)
    tested = evaluate_best_trial(config, hydra_context, space, best, data) if best else {}
    # Ray forwards the last trials' log lines for a moment after the sweep ends, as their
    # processes stop: leave Ray now, so that the summary is the sweep's last word.
    ray.shutdown()

    results.write_results(
        sweep_dir,
        config.hydra.job.name,
        rows,
        histories,
        search.metric,
        search.mode,
        fixed=space.run_fixed,
        test_metrics=tested,
    )
    unfinished = [row for row in rows if row.status in ("interrupted", "not run")]
    # Trials Tune never created: the sweep was stopped (Ctrl-C) between two trials.
    not_created = 0
    if not monitor.stop_all():
        not_created = max(0, space.num_trials(num_samples) - len(rows))
    stopped = bool(unfinished or not_created)
    log.info(
        "\n%s", results.format_summary(rows, best, sweep_dir, stopped, space.run_fixed, tested)
    )
    failed = [row for row in rows if row.status == "error"]
    if best is None and failed:
        raise SweepFailed(
            f"Every trial that ran failed (above: each one's log); the first: {failed[0].error}"
        )
    if stopped:  # a non-zero exit: a script or a RayJob must not take it for a finished sweep
        raise SweepStopped(
            f"{len(unfinished) + not_created} trials did not finish. Continue the sweep with the "
            f"same command plus: search.resume=true hydra.sweep.dir={sweep_dir}"
        )
    return {"best": best, "trials": rows}


def trial_resources(scaling: DictConfig) -> tune.PlacementGroupFactory:
    """What each trial's own process reserves.

    With `scaling=local` the trial trains in its own process: it takes one worker's resources.
    Otherwise it only waits on its Train run, whose workers reserve the CPUs and GPUs; Tune
    needs a non-empty request, so the trial takes a token 1 MiB of memory.
    """
    if scaling.num_workers == 0:
        return tune.PlacementGroupFactory([cluster.worker_bundle(scaling)])
    return tune.PlacementGroupFactory([{"memory": 2**20}])


def make_scheduler(scheduler_cfg: DictConfig | None, space: SearchSpace) -> Any:
    """The configured trial scheduler. PBT mutates the sampled keys unless told otherwise."""
    if not scheduler_cfg:
        return None
    extra = {}
    is_pbt = issubclass(get_class(scheduler_cfg._target_), PopulationBasedTraining)
    if is_pbt and not scheduler_cfg.get("hyperparam_mutations"):
        extra["hyperparam_mutations"] = {
            key: domain for key, domain in space.domains.items() if isinstance(domain, Domain)
        }
        if not extra["hyperparam_mutations"]:
            raise SearchSpaceError(
                "search=pbt needs at least one sampled key to mutate, e.g. "
                "optimizer.lr=tag(log,interval(1e-4,1e-1))"
            )
    return instantiate(scheduler_cfg, **extra, _convert_="all")


def check_sweep_folder(sweep_dir: Path, resume: bool) -> None:
    """Refuse, before Ray starts, to resume a sweep that is not there or to overwrite one."""
    experiment = sweep_dir / EXPERIMENT_NAME
    exists = tune.Tuner.can_restore(str(experiment))
    if resume and not exists:
        raise ConfigError(
            f"search.resume=true but there is no Ray Tune sweep to resume in {experiment}. "
            "Pass the interrupted sweep's folder: hydra.sweep.dir=<sweep dir>."
        )
    if exists and not resume:
        raise ConfigError(
            f"{experiment} already holds a sweep. Resume it with search.resume=true, or choose "
            "a new hydra.sweep.dir."
        )


def make_tuner(
    search, trainable, space, num_samples, scheduler, search_alg, concurrency, monitor, sweep_dir
):
    """A new Tuner, or the interrupted one in `sweep_dir` when `search.resume` is set."""
    if search.resume:
        experiment = sweep_dir / EXPERIMENT_NAME
        log.info("Resuming the sweep in %s; finished trials are kept", experiment)
        return tune.Tuner.restore(
            str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        trainable,
        param_space=space.domains,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            num_samples=num_samples,
            scheduler=scheduler,
            search_alg=search_alg,
            max_concurrent_trials=concurrency,
            trial_dirname_creator=TrialNumbers(sweep_dir / EXPERIMENT_NAME),
            reuse_actors=bool(search.get("reuse_actors", False)),
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME,
            storage_path=str(sweep_dir),
            stop=monitor,
            callbacks=[monitor, JsonLoggerCallback(), CSVLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=search.get("checkpoints_per_trial")
            ),
            failure_config=tune.FailureConfig(max_failures=int(search.get("trial_retries", 0))),
            verbose=0,  # with RAY_AIR_NEW_OUTPUT=0: SweepMonitor's lines alone
        ),
    )
