"""results.json as a markdown table (results.md, and the README's Benchmarks section)."""

from typing import Any


def _n(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _met(flag: Any) -> str:
    return "yes" if flag else "**no**"


def _row(*cells: str) -> str:
    """A table row; an empty cell as `| |`."""
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def _spread(summary: dict, digits: int = 1, scale: float = 1.0) -> str:
    """`median (min-max)`, or the median alone when the runs agree or there is one."""
    low, mid, high = (summary.get(k) for k in ("min", "median", "max"))
    if mid is None:
        return "n/a"
    shown = _n(mid * scale, digits)
    if low is not None and high is not None and low != high:
        shown += f" ({_n(low * scale, digits)}-{_n(high * scale, digits)})"
    return shown


def _threads(runs: list[dict]) -> str:
    counts = sorted({count for run in runs for count in run.get("torch_threads", [])})
    if not counts:
        return ""
    return f" ({'/'.join(map(str, counts))} thread{'s' if counts != [1] else ''})"


def _sweep_rows(sweeps: dict, label: str) -> list[str]:
    s, speed, goals = sweeps["summaries"], sweeps["speedups"], sweeps["goals"]
    count = len(sweeps["configurations"])
    runs = sweeps["runs"]
    repeats = len(runs["asha"])
    plain_goal = next(key for key in goals if "than plain" in key)
    project_goal = next(key for key in goals if "sequential" in key)

    def wall(arm: str) -> str:
        return _spread(s[arm]["wall_s"])

    def faster(key: str) -> str:
        value = speed[key]["ratio"]
        if value is not None and value < 1:
            return _n(1 / value, 2, "x slower")
        return _n(value, 2, "x faster")

    lines = [
        f"| {label} sweep of {count} lrs x {sweeps['epochs']} epochs, wall s, median "
        f"(min-max) of {repeats} | ASHA{_threads(runs['asha'])} {wall('asha')} | Hydra's basic "
        f"multirun over plain Lightning{_threads(runs['plain_basic'])} {wall('plain_basic')} | "
        f"{faster('asha_vs_plain_basic')} | {plain_goal.removesuffix(' than plain')} | "
        f"{_met(goals[plain_goal])} |",
        f"| | | the project's sequential multirun, `search=none`"
        f"{_threads(runs['basic'])} {wall('basic')} | {faster('asha_vs_basic')} | >= 2.5x faster | "
        f"{_met(goals[project_goal])} |",
    ]
    if "asha_workers" in s:
        lines.append(
            f"| | ASHA, a worker group per trial, `scaling=cpu`{_threads(runs['asha_workers'])} "
            f"{wall('asha_workers')} | "
            f"plain multirun | {faster('asha_workers_vs_plain_basic')} | | |"
        )
    asha_acc, plain_acc = s["asha"]["best_val_acc"], s["plain_basic"]["best_val_acc"]
    lines += [
        f"| trial-epochs | {_spread(s['asha']['trial_epochs'], 0)} | "
        f"{sweeps['trial_epochs_all']} | {_n(sweeps['trial_epochs_ratio'], 2, 'x')} | <= 0.5x | "
        f"{_met(goals['trial-epochs <= 0.5x'])} |",
        f"| best val_acc, % | {_spread(asha_acc, 1, 100)} | plain multirun "
        f"{_spread(plain_acc, 1, 100)} | {_n(sweeps['best_val_acc_gap_points'], 1)} points lower "
        f"| within 1 point | {_met(goals['best val_acc within 1 point'])} |",
        f"| ASHA trials' span vs ideal {sweeps['parallel_slots']}-slot schedule | "
        f"{_spread(s['asha']['schedule_ratio'], 2)}x | | | <= 1.2x | "
        f"{_met(goals['schedule <= 1.2x ideal'])} |",
    ]
    return lines


def _training_rows(training: dict, label: str, goal: str) -> list[str]:
    m, r = training["median_samples_per_s"], training["ratio_vs_plain_lightning"]
    threads, against = training["torch_threads"], training["baseline_for"]

    def count(name: str) -> str:
        counts = sorted(set(threads.get(name, [])))
        shown = "/".join(map(str, counts)) or "?"
        return f"{shown} thread{'s' if counts != [1] else ''}"

    def plain(name: str) -> str:
        return f"plain Lightning ({count(against[name])}) {_n(m.get(against[name]), 0)}"

    labels = {
        "project": "one process, `scaling=local`",
        "project_workers": "a worker group, `scaling=cpu`",
        "project_ray_default_poll": "before: a worker group with Ray's 2 s report polling",
    }
    lines = []
    for name, text in labels.items():
        if name not in m:
            continue
        first = name == "project"
        lines.append(
            _row(
                label if first else "",
                f"{text} ({count(name)}) {_n(m[name], 0)}",
                plain(name),
                _n(r[name], 2, "x"),
                goal if first else "",
                _met(training["goal_met"]) if first else "",
            )
        )
        if first and "raw_torch" in m:
            lines.append(
                f"| | | raw PyTorch loop ({count('raw_torch')}) {_n(m['raw_torch'], 0)} | "
                f"{_n(ratio(m['project'], m['raw_torch']), 2, 'x')} | | |"
            )
    return lines


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['gpus']} GPUs, "
        f"{info['memory_gb']} GiB; Python {info['python']}, torch {info['torch']}, "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + f". {results['date']}, median of {results['settings']['repeats']} repeats"
        + f" (sweeps: {results['settings']['sweep_repeats']}).",
        "",
        "| benchmark | generated project | alternative | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    bench = results["benchmarks"]
    errors = []
    for name, result in bench.items():
        if "error" in result:
            errors.append(f"- {name}: failed: `{result['error'].splitlines()[0]}`")
    training = bench.get("training", {})
    if "median_samples_per_s" in training:
        lines += _training_rows(
            training,
            f"1. training throughput, samples/s after {training['warmup_epochs']} warm-up epochs",
            ">= 0.9x",
        )
        long = training.get("long_epochs")
        if long and "median_samples_per_s" in long:
            lines += _training_rows(
                long, f"1b. the same with long epochs (`{long['data']}`)", ">= 0.9x"
            )
    overhead = bench.get("overhead", {})
    if "median_wall_s" in overhead:
        m, r = overhead["median_wall_s"], overhead["ratio_vs_plain_lightning"]
        lines.append(
            f"| 2. 1-epoch run, wall s | one process, `scaling=local` {_n(m['project'])} | "
            f"plain Lightning {_n(m['plain_lightning'])} | {_n(r['project'], 2, 'x')} | <= 2x | "
            f"{_met(overhead['goal_met'])} |"
        )
        others = {
            "project_running_cluster": "one process, joining a running cluster (`ray start "
            "--head`)",
            "project_workers": "a worker group, `scaling=cpu`",
            "project_workers_running_cluster": "a worker group, joining a running cluster",
            "project_ray_default_poll": "before: a worker group with Ray's 2 s report polling",
            "ray_train_floor": "Ray Train's floor: a worker group that only reports",
            "ray_train_floor_lightning": "the floor, its worker importing Lightning",
            "ray_train_floor_lightning_running_cluster": "the same, joining a running cluster",
        }
        for key, label in others.items():
            if key in m:
                lines.append(
                    f"| | {label} {_n(m[key])} | plain Lightning | {_n(r[key], 2, 'x')} | | |"
                )
    sweeps = bench.get("sweeps", {})
    if "runs" in sweeps:
        lines += _sweep_rows(sweeps, "3.")
        labels = {"long_epochs": "3b. with long", "longer_epochs": "3c. with longer"}
        extra = {key: v["rows"] for key, v in sweeps.items() if isinstance(v, dict) and "rows" in v}
        for (key, rows), letter in zip(extra.items(), "defghijk", strict=False):  # --sweep-rows
            labels[key] = f"3{letter}. with {rows:,}-row"
        for key, label in labels.items():
            if "runs" in sweeps.get(key, {}):
                lines += _sweep_rows(sweeps[key], f"{label} epochs (`{sweeps[key]['data']}`):")
    serving = bench.get("serving", {})
    if "by_concurrency" in serving:
        names = {
            "fastapi_batched": "FastAPI, async, batched as Serve is",
            "fastapi_async": "FastAPI, async handler",
            "fastapi": "FastAPI, sync handler (the baseline before)",
        }

        def answered(row: dict) -> str:
            return f"{_n(row['requests_per_s'], 0)} ({_n(row['p50_ms'])} / {_n(row['p99_ms'])})"

        for concurrency, row in serving["by_concurrency"].items():
            goal = ">= 0.5x" if concurrency == "1" else ">= 1x"
            met = serving["goals"][f"concurrency {concurrency}: {goal}"]
            for index, (name, text) in enumerate(names.items()):
                fastest = " (fastest)" if name == row["fastest_fastapi"] else ""
                first = (
                    f"4. serving, concurrency {concurrency}: req/s (p50 / p99 ms)",
                    f"Ray Serve {answered(row['ray_serve'])}",
                )
                head, project = first if index == 0 else ("", "")
                lines.append(
                    _row(
                        head,
                        project,
                        f"{text}{fastest} {answered(row[name])}",
                        _n(row["throughput_ratio"][name], 2, "x"),
                        f"{goal} vs the fastest" if index == 0 else "",
                        _met(met) if index == 0 else "",
                    )
                )
    tmpl = bench.get("template", {})
    if "median_generation_s" in tmpl:
        lines.append(
            f"| 5. template: generate a project, s | {_n(tmpl['median_generation_s'], 2)} | | | | |"
        )
        lines.append(
            f'| project tests (`-m "not slow"`), s | {_n(tmpl["project_quick_tests_s"])} | | | | |'
        )
        if "project_all_tests_s" in tmpl:
            lines.append(f"| project tests (all), s | {_n(tmpl['project_all_tests_s'])} | | | | |")
    if "median_phases_s" in overhead:
        lines += ["", "1-epoch run, where the time goes (median s):", ""]
        for name, phases in overhead["median_phases_s"].items():
            parts = ", ".join(f"{key} {_n(value)}" for key, value in phases.items())
            lines.append(f"- {name}: {parts}")
    if errors:
        lines += ["", *errors]
    return "\n".join(lines) + "\n"
