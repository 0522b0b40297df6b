"""Run the benchmarks on a generated project; write results.json and results.md.

    python -m benchmarks.run --project build/bench/research-project --out build/bench

`make bench` bakes the project, installs it and runs this. Each figure compares two things run
side by side in this one invocation; every number is the median of --repeats runs. Not a test:
it needs minutes and a quiet machine (other heavy processes skew it).
"""

import argparse
import json
import shutil
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from . import overhead, serving, sweeps, template, training
from .harness import Context, machine, ray_head_running, versions
from .report import markdown

BENCHMARKS = {
    "training": training.run,
    "overhead": overhead.run,
    "sweeps": sweeps.run,
    "serving": serving.run,
    "template": template.run,
}


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--project", type=Path, required=True, help="a generated project")
    arguments.add_argument("--package", default=None, help="its package (default: from src/)")
    arguments.add_argument("--out", type=Path, default=Path("build/bench"))
    arguments.add_argument("--only", default=",".join(BENCHMARKS), help="comma list of benchmarks")
    arguments.add_argument("--repeats", type=int, default=3)
    arguments.add_argument(
        "--sweep-repeats",
        type=int,
        default=3,
        help="runs of each sweep (ASHA's savings vary with trial order); medians, with the spread",
    )
    arguments.add_argument(
        "--sweep-rows",
        default="",
        help="comma list of row counts: the sweeps again on synthetic epochs of each (e.g. 262144)",
    )
    arguments.add_argument(
        "--sweep-trials", type=int, default=8, help="learning rates per sweep (the issue: 8 to 16)"
    )
    arguments.add_argument(
        "--sweep-threads",
        type=int,
        default=0,
        help="torch threads of the sequential sweeps' jobs (0: torch's default, all cores)",
    )
    arguments.add_argument("--quick", action="store_true", help="fewer epochs, trials, seconds")
    arguments.add_argument("--full-tests", action="store_true", help="also the slow project tests")
    args = arguments.parse_args()

    project = args.project.resolve()
    package = args.package or next(p.parent.name for p in project.glob("src/*/__init__.py"))
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        arguments.error(f"unknown benchmarks {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    try:
        sweep_rows = tuple(int(rows) for rows in args.sweep_rows.split(",") if rows.strip())
    except ValueError:
        arguments.error(f"--sweep-rows takes whole numbers, not {args.sweep_rows!r}")
    if args.sweep_trials < 2:
        arguments.error(f"--sweep-trials needs at least 2 learning rates, not {args.sweep_trials}")
    out = args.out.resolve()
    work = out / "work"  # the previous run's scratch folder goes only once the arguments are good
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ctx = Context(
        project=project,
        package=package,
        work=work,
        repeats=args.repeats,
        sweep_repeats=args.sweep_repeats,
        quick=args.quick,
        log=out / "bench.log",
        sweep_rows=sweep_rows,
        sweep_trials=args.sweep_trials,
        sweep_threads=args.sweep_threads,
    )
    ctx.log.write_text("")
    if head := ray_head_running():
        print(
            f"[bench] warning: a `ray start` head runs on this machine ({head}); the project's "
            "runs join it, so the arms that should start their own Ray do not. Stop it first."
        )
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "repeats": args.repeats,
            "sweep_repeats": args.sweep_repeats,
            "quick": args.quick,
            "sweep_rows": list(sweep_rows),
            "sweep_trials": args.sweep_trials,
            "sweep_threads": args.sweep_threads,
        },
        "benchmarks": {},
    }
    for name in BENCHMARKS:  # in this order: serving reuses the training benchmark's run
        if name not in only:
            continue
        print(f"[bench] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            kwargs = {"full_tests": args.full_tests} if name == "template" else {}
            result = BENCHMARKS[name](ctx, **kwargs)
        except Exception as error:  # one broken benchmark must not lose the others' numbers
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}"[:2000]}
        result["benchmark_s"] = time.perf_counter() - started
        results["benchmarks"][name] = result
        print(f"[bench] {name} done in {result['benchmark_s']:.0f} s", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())
    print(f"[bench] wrote {out / 'results.json'} and {out / 'results.md'}; log in {ctx.log}")


if __name__ == "__main__":
    main()
