"""5. Template: how long generating a project takes, and the generated project's quick tests
(`pytest -m "not slow"`, no Ray start) and, with --full-tests, its whole suite."""

import sys

from .harness import TEMPLATE, Context, median, run_timed


def run(ctx: Context, full_tests: bool = False) -> dict:
    generation = []
    for repeat in range(ctx.repeats):
        folder = ctx.work / "template" / f"bake_{repeat}"
        timed = run_timed(
            [
                sys.executable,
                "-m",
                "cookiecutter",
                "--no-input",
                "--output-dir",
                str(folder),
                str(TEMPLATE),
            ],
            ctx,
            cwd=TEMPLATE,
        )
        generation.append(timed.wall_s)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    quick = run_timed([*pytest, "-m", "not slow"], ctx, timeout=1800)
    result = {
        "generation_s": generation,
        "median_generation_s": median(generation),
        "project_quick_tests_s": quick.wall_s,
    }
    if full_tests:
        result["project_all_tests_s"] = run_timed(pytest, ctx, timeout=3600).wall_s
    return result
